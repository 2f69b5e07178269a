"""CPU step speed of every model we ship, as a fraction of this machine's own matrix-multiply peak.

For each model (the digits CNN on 8x8 images, the same CNN and WRN-10-1 on 28x28 Fashion-MNIST-shaped images,
WRN-28-2 on 32x32, torchvision's ResNet-18 on 64x64 and 112x112 RGB photos), one MixMatch step (64 labelled + 2 x 64
unlabelled images, augmentation and label guessing included) is timed on each path, alternating rounds so that every
path sees the same machine load:

    reference   fp32, NCHW, per-image augmentation, the official three interleaved passes, PyTorch's Adam
    fp32-nchw   the library in fp32 with NCHW tensors: the default of a CPU without bf16 units until now
    fp32        the default of a CPU without bf16 units (`--amp off`, channels_last auto)
    default     the default of this machine (bf16 autocast where the CPU has bf16 units)

Each step's FLOPs are counted by torch.utils.flop_counter; the peak is a 2048^3 fp32 (and bf16) matrix
product measured in the same run, with the same threads, and the fp32 peak again after every round of
the paths, so that a fraction compares a step with the peak of the same minutes. `--busy` also times the
fp32 digits step beside one busy process (a Python loop that spins), with torch's own thread count and
with `--threads auto`. `--jobs N` times the fp32 digits step in N processes of one thread each, side by side
(how `mixmatch compare` and `ablate` train a grid on a CPU, mixmatch.experiments.grid), against one process of torch's
threads, alternating rounds: the machine's steps per second either way, as a fraction of the same rounds' peak.

    python bench/cpu.py --json results/perf-cpu-epyc-bf16.json
    python bench/cpu.py --models digits --busy
    python bench/cpu.py --models digits --jobs 2
    python bench/cpu.py --models wrn10_1 resnet18-64 resnet18-112 --json results/perf/perf-cpu-resnet18-epyc.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from step import default_adam, per_image, timed_steps  # bench/step.py: the reference path's parts, the timing
from torch.utils.flop_counter import FlopCounterMode

from mixmatch.config import TrainConfig
from mixmatch.data.dataset import ImageDataset
from mixmatch.data.loaders import load_dataset
from mixmatch.training.runtime import cpu_has_bf16, pick_threads
from mixmatch.training.trainer import Trainer

MODELS = ["digits", "fashion", "wrn10_1", "wrn28_2", "resnet18-64", "resnet18-112"]
HEAVY = ("wrn28_2", "resnet18-64", "resnet18-112")  # a tenth of the timed steps
PATHS: dict[str, dict[str, Any]] = {
    "reference": dict(amp="off", channels_last="off", bn_mode="interleave"),
    "fp32-nchw": dict(amp="off", channels_last="off"),
    "fp32": dict(amp="off"),
    "default": dict(),
}


def synthetic(shape: tuple[int, int, int], n: int = 2048) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % 10
    return ImageDataset("synthetic", images, labels, images[:256], labels[:256], [str(i) for i in range(10)])


def model_setting(name: str) -> tuple[dict[str, Any], ImageDataset]:
    """TrainConfig fields and data of one benchmarked model."""
    if name == "digits":
        return dict(dataset="digits", arch="cnn"), load_dataset("digits")
    if name == "fashion":
        return dict(dataset="fashion-mnist", arch="cnn", num_labels=100), synthetic((1, 28, 28))
    if name == "wrn10_1":  # the Fashion-MNIST / MNIST preset's model
        return dict(dataset="fashion-mnist", arch="wrn10_1", num_labels=100), synthetic((1, 28, 28))
    if name.startswith("resnet18-"):  # torchvision's ResNet-18 on photos of a folder, at 64 or 112 px
        size = int(name.removeprefix("resnet18-"))
        return dict(dataset="cifar10", arch="resnet18", num_labels=250), synthetic((3, size, size), n=512)
    return dict(dataset="cifar10", arch="wrn28_2", num_labels=250), synthetic((3, 32, 32))


def make_trainer(model: str, path: str, threads: int | None = None) -> Trainer:
    fields, data = model_setting(model)
    config = TrainConfig(**fields, **PATHS[path], steps=100_000, compile="off", progress=False, threads=threads,
                         out="/tmp/mixmatch-bench-cpu")
    if path == "reference":
        return Trainer(config, data, augment=per_image, optimizer=default_adam)
    return Trainer(config, data)


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5, trials: int = 3) -> float:
    """The best of `trials` rates of `repeats` n^3 products: a peak, so a fraction of it is not flattered."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    rates = []
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        rates.append(2 * n**3 * repeats / (time.perf_counter() - start) / 1e9)
    return max(rates)


def step_gflop(trainer: Trainer) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        trainer.train_step()
    return counter.get_total_flops() / 1e9


def bench_model(model: str, args: argparse.Namespace, peaks: dict[str, float]) -> dict[str, Any]:
    """Each path's median step, and its fraction of the fp32 peak measured again in every round.

    This machine's speed drifts by 10-20% within an hour, the peak with it: a peak taken once at the start
    made the same 6.6 ms step 37% of the peak in one run and 44% in the next. Each round's fraction divides
    that round's step rate by the peak of the same round; the figure is the median over rounds.
    """
    trainers = {path: make_trainer(model, path) for path in PATHS}
    gflop = step_gflop(trainers["fp32"])
    for trainer in trainers.values():
        timed_steps(trainer, args.warmup)
    steps = args.steps if model not in HEAVY else max(2, args.steps // 10)
    times: dict[str, list[float]] = {path: [] for path in trainers}
    fractions: dict[str, list[float]] = {path: [] for path in trainers}
    round_peaks = []
    for _ in range(args.rounds):
        round_times = {path: timed_steps(trainer, max(1, steps // args.rounds)) for path, trainer in trainers.items()}
        round_peaks.append(matmul_gflops(torch.float32, trials=1))
        for path, t in round_times.items():
            times[path] += t
            fractions[path].append(gflop / statistics.median(t) / round_peaks[-1])
    result: dict[str, Any] = dict(gflop_per_step=gflop, fp32_peak_per_round=round_peaks, paths={})
    reference = statistics.median(times["reference"])
    for path, t in times.items():
        median = statistics.median(t)
        bf16 = trainers[path].bf16
        result["paths"][path] = dict(
            ms_per_step=1000 * median,
            gflops=gflop / median,
            fraction_of_fp32_peak=statistics.median(fractions[path]),
            fraction_of_fp32_peak_per_round=fractions[path],
            # bf16 paths against the bf16 peak of the start; fp32 ones are the per-round figure above
            fraction_of_own_peak=gflop / median / peaks["bf16"] if bf16 else statistics.median(fractions[path]),
            speedup_over_reference=reference / median,
            bf16=bf16,
            channels_last=trainers[path].channels_last,
            timed_steps=len(t),
        )
    return result


def busy(args: argparse.Namespace) -> dict[str, Any]:
    """The fp32 digits step quiet and beside one spinning process, with torch's threads and with auto."""
    default_threads = torch.get_num_threads()

    def median_ms(threads: int) -> float:
        torch.set_num_threads(threads)
        trainer = make_trainer("digits", "fp32")
        timed_steps(trainer, 10)
        return 1000 * statistics.median(timed_steps(trainer, max(args.steps, 60)))

    quiet = {"torch": median_ms(default_threads), "auto": median_ms(pick_threads(None))}
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        auto_threads = pick_threads(None)
        loaded = {"torch": median_ms(default_threads), "auto": median_ms(auto_threads)}
    finally:
        spinner.kill()
        torch.set_num_threads(default_threads)
    # Both quiet settings are the same threads on a quiet machine; the faster one is the quiet speed.
    quiet_ms = min(quiet.values())
    return dict(
        torch_threads=default_threads,
        auto_threads_when_busy=auto_threads,
        quiet_ms=quiet,
        busy_ms=loaded,
        busy_speed_as_fraction_of_quiet={k: quiet_ms / loaded[k] for k in loaded},
    )


def _side_by_side_worker(connection: Any, steps: int, warmup: int) -> None:
    """One process of one thread: the fp32 digits step, timed `steps` times each time the parent says go."""
    torch.set_num_threads(1)
    trainer = make_trainer("digits", "fp32", threads=1)
    timed_steps(trainer, warmup)
    connection.send("ready")
    while connection.recv() == "go":
        connection.send(timed_steps(trainer, steps))


def side_by_side(args: argparse.Namespace, gflop: float) -> dict[str, Any]:
    """The fp32 digits step in `args.jobs` one-thread processes at once against one process of torch's threads.

    Each round: the single process's steps, then all workers' steps at once, then the fp32 peak (with torch's
    threads). The machine's rate is one step over the median step time for the single process, and the sum
    of that over the workers side by side; each is divided by the round's peak, and medians over rounds are
    reported.
    """
    own = torch.get_num_threads()
    single = make_trainer("digits", "fp32")
    timed_steps(single, args.warmup)
    context = multiprocessing.get_context("spawn")
    pipes, workers = [], []
    for _ in range(args.jobs):
        parent, child = context.Pipe()
        workers.append(context.Process(target=_side_by_side_worker, args=(child, args.steps, args.warmup)))
        workers[-1].start()
        pipes.append(parent)
    try:
        assert all(p.recv() == "ready" for p in pipes)
        rounds: list[dict[str, float]] = []
        for _ in range(args.rounds):
            one = 1 / statistics.median(timed_steps(single, args.steps))
            for p in pipes:
                p.send("go")
            many = sum(1 / statistics.median(p.recv()) for p in pipes)
            peak = matmul_gflops(torch.float32, trials=1)
            rounds.append(dict(peak=peak, one_steps_per_s=one, side_by_side_steps_per_s=many))
    finally:
        for p in pipes:
            p.send("stop")
        for w in workers:
            w.join()
    one = [r["one_steps_per_s"] * gflop / r["peak"] for r in rounds]
    many = [r["side_by_side_steps_per_s"] * gflop / r["peak"] for r in rounds]
    return dict(
        jobs=args.jobs,
        torch_threads=own,
        rounds=rounds,
        one_process_ms_per_step=1000 / statistics.median(r["one_steps_per_s"] for r in rounds),
        side_by_side_ms_per_machine_step=1000 / statistics.median(r["side_by_side_steps_per_s"] for r in rounds),
        one_process_fraction_of_fp32_peak=statistics.median(one),
        side_by_side_fraction_of_fp32_peak=statistics.median(many),
        side_by_side_over_one_process=statistics.median(
            r["side_by_side_steps_per_s"] / r["one_steps_per_s"] for r in rounds
        ),
    )


def threads(n: int) -> str:
    return f"{n} thread{'s' if n > 1 else ''}"


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        return cpuinfo.read_text().split("model name")[1].split("\n")[0].strip(": \t")
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--steps", type=int, default=40,
                        help="timed steps of each path (a tenth for WRN-28-2 and ResNet-18)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4, help="alternations of the paths")
    parser.add_argument("--busy", action="store_true", help="also time the digits step beside a busy process")
    parser.add_argument("--jobs", type=int, default=0,
                        help="also time the fp32 digits step in this many one-thread processes side by side")
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = parser.parse_args()

    peaks = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    report: dict[str, Any] = dict(
        command="python bench/cpu.py " + " ".join(sys.argv[1:]),
        cpu=cpu_name(),
        bf16_units=cpu_has_bf16(), threads=torch.get_num_threads(), torch=torch.__version__,
        matmul_gflops=peaks, models={},
    )
    print(f"{report['cpu']}, bf16 units: {report['bf16_units']}, {threads(report['threads'])}, torch "
          f"{torch.__version__}; 2048^3 matmul: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
    for model in args.models:
        result = report["models"][model] = bench_model(model, args, peaks)
        round_peaks = ", ".join(f"{p:.0f}" for p in result["fp32_peak_per_round"])
        print(f"{model}: {result['gflop_per_step']:.3f} GFLOP per step; fp32 peak in each round: {round_peaks} GFLOP/s "
              "(each round's steps against its own peak; medians over rounds)")
        for path, e in result["paths"].items():
            print(f"  {path:>10}: {e['ms_per_step']:8.1f} ms/step  {e['gflops']:6.1f} GFLOP/s  "
                  f"{100 * e['fraction_of_fp32_peak']:5.1f}% of the fp32 peak  "
                  f"{e['speedup_over_reference']:.2f}x the reference", flush=True)
    if args.busy:
        b = report["busy"] = busy(args)
        print(f"digits fp32 step beside one busy process: torch's {b['torch_threads']} threads "
              f"{min(b['quiet_ms'].values()):.1f} -> {b['busy_ms']['torch']:.1f} ms "
              f"({100 * b['busy_speed_as_fraction_of_quiet']['torch']:.0f}% of quiet speed); "
              f"--threads auto ({threads(b['auto_threads_when_busy'])}) {b['busy_ms']['auto']:.1f} ms "
              f"({100 * b['busy_speed_as_fraction_of_quiet']['auto']:.0f}% of quiet speed)")
    if args.jobs:
        gflop = step_gflop(make_trainer("digits", "fp32"))
        j = report["side_by_side"] = side_by_side(args, gflop)
        one, many = 100 * j["one_process_fraction_of_fp32_peak"], 100 * j["side_by_side_fraction_of_fp32_peak"]
        print(f"digits fp32 step, the machine's rate: one process of {threads(j['torch_threads'])} "
              f"{j['one_process_ms_per_step']:.1f} ms a step ({one:.1f}% of the fp32 peak); {j['jobs']} processes "
              f"of 1 thread side by side {j['side_by_side_ms_per_machine_step']:.1f} ms a step ({many:.1f}%, "
              f"{j['side_by_side_over_one_process']:.2f}x; medians of {len(j['rounds'])} rounds)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
