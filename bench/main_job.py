"""README's main job, timed whole: `mixmatch compare --seeds 0 1 2` (9 digits runs), under several settings.

Each setting runs the command in a fresh process, start-up, data, training, evaluation and the report
included, the wall time measured around it; the settings alternate over `--rounds`, so that each sees the
same minutes of the machine. The settings:

    default      as README gives it (the runs train side by side on a CPU, mixmatch.experiments.grid)
    amp-off      the default of a CPU without bf16 units (fp32, channels_last)
    stand-in     `--amp off --channels-last off`: the speed issue's stand-in for such a CPU
    one-by-one   `--jobs 1`: the runs one after another with all threads, as before side by side
    one-by-one-fp32   `--amp off --jobs 1`: the same in fp32

    python bench/main_job.py --json results/perf-main-job-epyc.json
    python bench/main_job.py --settings default one-by-one --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from cpu import cpu_name, threads  # bench/cpu.py

from mixmatch.training.runtime import cpu_has_bf16

SETTINGS = {
    "default": [],
    "amp-off": ["--amp", "off"],
    "stand-in": ["--amp", "off", "--channels-last", "off"],
    "one-by-one": ["--jobs", "1"],
    "one-by-one-fp32": ["--amp", "off", "--jobs", "1"],
}


def main_job(flags: list[str], out: Path, args: argparse.Namespace) -> tuple[float, str]:
    """Seconds of one whole `mixmatch compare` and the line it printed about running side by side."""
    steps = ["--steps", str(args.steps)] if args.steps else []
    command = [sys.executable, "-m", "mixmatch", "compare", "--seeds", *args.seeds, *steps, "--no-progress", *flags,
               "--out", str(out)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"main_job.py: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    side = next((line for line in done.stderr.splitlines() if "at a time in worker processes" in line), "")
    return seconds, side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seeds", nargs="+", default=["0", "1", "2"])
    parser.add_argument("--steps", type=int, default=None, help="steps of each run (default: the preset's 5000)")
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = parser.parse_args()

    report = dict(
        command="python bench/main_job.py " + " ".join(sys.argv[1:]),
        cpu=cpu_name(), bf16_units=cpu_has_bf16(), threads=torch.get_num_threads(), torch=torch.__version__,
        settings={name: dict(flags=SETTINGS[name], seconds=[]) for name in args.settings},
    )
    print(f"{report['cpu']}, bf16 units: {report['bf16_units']}, torch's {threads(report['threads'])}, torch "
          f"{torch.__version__}; mixmatch compare --seeds {' '.join(args.seeds)}, whole command", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for name in args.settings:
                seconds, side = main_job(SETTINGS[name], Path(scratch) / f"{name}-{round_}", args)
                report["settings"][name]["seconds"].append(seconds)
                report["settings"][name]["side_by_side"] = side.removeprefix("mixmatch: ")
                print(f"  {name:>15} {' '.join(SETTINGS[name]) or '(README)':<36} {seconds // 60:.0f} min "
                      f"{seconds % 60:4.1f} s   {side.removeprefix('mixmatch: ') or 'one after another'}", flush=True)
    for entry in report["settings"].values():
        entry["median_seconds"] = statistics.median(entry["seconds"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
