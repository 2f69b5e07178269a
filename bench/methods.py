"""One training step of every method on the CPU-scale model, side by side in one process.

The Fashion-MNIST preset's setting (WRN-10-1, 28x28 grey images, 64 labelled images a step, each method's own
unlabelled batch: MixMatch K=2 views of 64, FixMatch mu x 64 weak and strong views), on Fashion-MNIST-shaped images.
Each method's step (augmentation, every forward and backward pass, the optimiser and the EMA) is timed in rounds
that alternate between the methods, so every method sees the same machine load; the table gives the median
milliseconds a step and the ratio to MixMatch's, and what 5000 steps would take. With this machine's default
precision, and with `--amp off --channels-last off` as the stand-in for a CPU without bf16 units.

    python bench/methods.py --json results/perf/perf-methods-epyc.json
    python bench/methods.py --amp off --channels-last off --json results/perf/perf-methods-epyc-fp32.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics

import torch
from cpu import cpu_name, synthetic, threads  # bench/cpu.py
from step import timed_steps  # bench/step.py

from mixmatch.config import METHOD_NAMES, TrainConfig
from mixmatch.training.trainer import Trainer


def make_trainer(method: str, amp: str, channels_last: str, mu: int | None) -> Trainer:
    config = TrainConfig(dataset="fashion-mnist", method=method, arch="wrn10_1", num_labels=100, steps=100_000,
                         amp=amp, channels_last=channels_last, compile="off", progress=False,
                         out="/tmp/mixmatch-bench-methods", mu=mu if method == "fixmatch" else None)
    return Trainer(config, synthetic((1, 28, 28)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=METHOD_NAMES)
    parser.add_argument("--mu", nargs="+", type=int, default=[2, 7], help="FixMatch's mu, each timed as a row")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"))
    parser.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--steps", type=int, default=12, help="timed steps per method, over all rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()

    rows = [(m, None) for m in args.methods if m != "fixmatch"]
    rows += [("fixmatch", mu) for mu in args.mu] if "fixmatch" in args.methods else []
    trainers = {row: make_trainer(row[0], args.amp, args.channels_last, row[1]) for row in rows}
    for trainer in trainers.values():
        trainer.step = 10**6  # every loss at full weight
        timed_steps(trainer, args.warmup)
    times: dict[tuple, list[float]] = {row: [] for row in rows}
    for _ in range(args.rounds):
        for row, trainer in trainers.items():
            times[row] += timed_steps(trainer, max(1, args.steps // args.rounds))
    base = statistics.median(times[("mixmatch", None)]) if ("mixmatch", None) in times else None
    first = next(iter(trainers.values()))
    record = dict(cpu=cpu_name(), machine=platform.machine(), torch=torch.__version__, threads=threads(
        torch.get_num_threads()), bf16=first.bf16, channels_last=first.channels_last, methods={})
    print(f"{record['cpu']}, torch {record['torch']}, {record['threads']}, bf16 {first.bf16}")
    print(f"{'method':>18}  {'ms/step':>8}  {'x mixmatch':>10}  {'5000 steps':>10}")
    for (method, mu), t in times.items():
        median = statistics.median(t)
        name = f"{method} (mu {mu})" if mu else method
        ratio = median / base if base else float("nan")
        print(f"{name:>18}  {1000 * median:8.1f}  {ratio:10.2f}  {5000 * median / 60:8.1f} min")
        record["methods"][name] = dict(ms_per_step=1000 * median, ratio_to_mixmatch=ratio, timed_steps=len(t))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
