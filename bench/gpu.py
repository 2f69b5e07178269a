"""The GPU check: WRN-28-2 MixMatch step speed against the chip's own matrix rate, and a short real run.

One script, run as it is on a lent GPU machine within a few minutes (`--budget` seconds, 480 by default):

1. the bf16 matrix-multiply rate of this device (n x n x n products, n=8192 on CUDA), the ceiling;
2. the FLOPs of one WRN-28-2 MixMatch step (torch.utils.flop_counter: label guessing, forward and backward);
3. the step timed on each path, alternating rounds: reference (fp32, NCHW, the official three interleaved
   passes, eager), eager (the library's defaults with `--compile off`) and compiled (`--compile on`, which
   on one GPU is torch.compile mode="reduce-overhead": the model's kernels replayed as CUDA graphs); each
   with steps/s, images/s, the fraction of the matrix rate it reaches, and the paper's 1,048,576 steps
   projected in hours; and the losses of 20 steps of eager and compiled from the same weights and draws;
4. torchvision's ResNet-18 step at photo sizes (`--backbone-sizes`, 112 and 224 px), eager;
5. a short MixMatch run of WRN-28-2 on Fashion-MNIST (`--data-dir`, 100 labels, `--run-compile`), its steps
   cut to what the remaining budget allows at the measured speed.

    python bench/gpu.py --data-dir ../shared/data --out results/gpu-h200
    python bench/gpu.py --tiny --dataset digits --out /tmp/gpu-check     # seconds, on a CPU (the test)

Writes OUT/gpu.json (every figure), OUT/gpu.md (the tables) and OUT/run-* (the short run's config, split,
metrics and summary). The last line printed is `gpu check: done in N s`.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from step import sync, synthetic_cifar, timed_steps  # bench/step.py: synthetic data and the timed step
from torch.utils.flop_counter import FlopCounterMode

from mixmatch.config import TrainConfig
from mixmatch.data import ImageDataset, load_dataset
from mixmatch.training.trainer import Trainer, train

PAPER_STEPS = 1 << 20


def matmul_rate(device: torch.device, n: int, dtype: torch.dtype, repeats: int = 10) -> float:
    """FLOP/s of an n x n x n product of random matrices: the mean of `repeats` products after 3 warm-ups."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


PATHS = {
    # name: TrainConfig overrides
    "reference": dict(amp="off", channels_last="off", bn_mode="interleave", compile="off"),
    "eager": dict(compile="off"),
    "compiled": dict(compile="on"),
}


def make_trainer(path: str, args: argparse.Namespace, data: ImageDataset, device: torch.device) -> Trainer:
    config = TrainConfig(
        dataset="cifar10", arch="wrn28_2", num_labels=250, steps=PAPER_STEPS, batch_size=args.batch, k=args.k,
        device=str(device), progress=False, out=str(Path(tempfile.gettempdir()) / "mixmatch-gpu-bench"), seed=0,
        **PATHS[path],
    )
    trainer = Trainer(config, data)
    # Past the ramp-up, so that lambda_u is the same constant on every path.
    trainer.step = trainer.config.rampup_steps
    return trainer


def step_flops(trainer: Trainer) -> int:
    """FLOPs of one train_step (matrix products and convolutions, forward and backward), counted by torch."""
    counter = FlopCounterMode(display=False)
    with counter:
        trainer.train_step()
    return counter.get_total_flops()


def loss_agreement(args: argparse.Namespace, data: ImageDataset, device: torch.device) -> dict[str, Any]:
    """Losses of `args.agree_steps` steps of eager and compiled trainers from the same seed: the same weights,
    batches and draws, so the two differ only in arithmetic (kernels, fusion, bf16 rounding)."""
    losses = {}
    for name in ("eager", "compiled"):
        trainer = make_trainer(name, args, data, device)
        losses[name] = [trainer.train_step()[0].item() for _ in range(args.agree_steps)]
    gaps = [abs(a - b) / abs(a) for a, b in zip(losses["eager"], losses["compiled"], strict=True)]
    return dict(steps=args.agree_steps, max_relative_gap=max(gaps), mean_relative_gap=sum(gaps) / len(gaps),
                **losses)


def time_paths(args: argparse.Namespace, device: torch.device, peak: float, deadline: float) -> dict[str, Any]:
    data = synthetic_cifar(4096 if not args.tiny else 256)
    paths = list(args.paths)
    flops = step_flops(make_trainer("eager", args, data, device))
    trainers, first, failed = {}, {}, {}
    for name in paths:
        if time.perf_counter() > deadline:
            failed[name] = "skipped: the budget was spent"
            continue
        try:
            trainers[name] = make_trainer(name, args, data, device)
            first[name] = timed_steps(trainers[name], args.warmup)[0]
        except Exception as error:  # noqa: BLE001 (a path that fails to compile must not cost the others)
            failed[name] = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
            trainers.pop(name, None)
            continue
        print(f"{name}: first step {first[name]:.2f} s (compiling included)", flush=True)
    times: dict[str, list[float]] = {name: [] for name in trainers}
    per_round = max(1, args.steps // args.rounds)
    for _ in range(args.rounds):
        for name, trainer in trainers.items():
            times[name] += timed_steps(trainer, per_round)
    images = args.batch * (1 + args.k)
    result: dict[str, Any] = dict(flops_per_step=flops, images_per_step=images, paths={}, failed=failed)
    for name, why in failed.items():
        print(f"{name}: {why}", flush=True)
    for name, t in times.items():
        median = statistics.median(t)
        result["paths"][name] = dict(
            ms_per_step=1000 * median,
            steps_per_second=1 / median,
            images_per_second=images / median,
            achieved_tflops=flops / median / 1e12,
            fraction_of_matmul_peak=flops / median / peak,
            paper_schedule_hours=PAPER_STEPS * median / 3600,
            first_step_seconds=first[name],
            timed_steps=len(t),
        )
    if "eager" in trainers and "compiled" in trainers:
        result["losses_eager_vs_compiled"] = loss_agreement(args, data, device)
    if "reference" in times:
        ref = statistics.median(times["reference"])
        for entry in result["paths"].values():
            entry["speedup_over_reference"] = ref / (entry["ms_per_step"] / 1000)
    return result


def time_backbones(args: argparse.Namespace, device: torch.device, peak: float) -> dict[str, Any]:
    """torchvision's ResNet-18 MixMatch step at photo sizes (`--backbone-sizes`), eager, with the library's
    defaults for the device: ms a step and the fraction of the matrix rate, as for WRN-28-2 above."""
    result = {}
    for size in args.backbone_sizes:
        g = torch.Generator().manual_seed(0)
        n = 64 if args.tiny else 512
        images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
        labels = torch.arange(n) % 10
        data = ImageDataset("synthetic-photos", images, labels, images[:32], labels[:32], [str(i) for i in range(10)])
        config = TrainConfig(
            dataset="cifar10", arch="resnet18", num_labels=50, steps=PAPER_STEPS, batch_size=args.batch, k=args.k,
            device=str(device), progress=False, out=str(Path(tempfile.gettempdir()) / "mixmatch-gpu-bench"), seed=0,
            compile="off",
        )
        trainer = Trainer(config, data)
        flops = step_flops(trainer)
        timed_steps(trainer, args.warmup)
        median = statistics.median(timed_steps(trainer, max(1, args.steps // 2)))
        result[f"resnet18-{size}"] = dict(
            image_size=size, ms_per_step=1000 * median, images_per_second=args.batch * (1 + args.k) / median,
            gflop_per_step=flops / 1e9, fraction_of_matmul_peak=flops / median / peak,
        )
        print(f"resnet18 at {size} px: {1000 * median:.1f} ms/step, {100 * flops / median / peak:.2f}% of the matmul "
              "peak", flush=True)
    return result


def short_run(args: argparse.Namespace, device: torch.device, seconds_per_step: float, left: float) -> dict[str, Any]:
    """MixMatch with WRN-28-2 and the paper's settings, steps cut so that the run fits in `left` seconds."""
    # Evaluations and the start cost about a quarter on top of the steps (measured on the first GPU run).
    affordable = int(0.75 * left / seconds_per_step)
    steps = max(args.eval_every, min(args.run_steps, affordable // args.eval_every * args.eval_every))
    out = Path(tempfile.mkdtemp(prefix="mixmatch-gpu-run-"))
    config = TrainConfig(
        # The paper's model and settings, not the CPU-scale preset of MNIST-size data sets.
        dataset=args.dataset, data_dir=args.data_dir, arch="wrn28_2", steps=steps, rampup_steps=min(1000, steps),
        lambda_u=75, schedule="constant", distribution_alignment=False,
        eval_every=args.eval_every, batch_size=args.batch, k=args.k, device=str(device), progress=False,
        out=str(out), seed=0, checkpoint_every=0, tag="gpu-check", compile=args.run_compile,
    )
    data = load_dataset(args.dataset, args.data_dir)
    if args.tiny:
        data = ImageDataset(data.name, data.train_images, data.train_labels, data.test_images[:200],
                            data.test_labels[:200], data.classes)
    summary = train(config, data)
    run = dict(command=f"TrainConfig({', '.join(f'{k}={v!r}' for k, v in config.to_dict().items() if v is not None)})",
               steps_asked=args.run_steps, steps_affordable=affordable, **summary)
    for name in ("config.json", "split.json", "metrics.jsonl", "summary.json"):
        shutil.copy(out / name, Path(args.out) / f"run-{name}")
    shutil.rmtree(out, ignore_errors=True)
    return run


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# GPU check: {report['device_name']}",
        "",
        f"torch {report['torch']}, CUDA {report['cuda']}, {report['host']}; command: `{report['command']}`.",
        f"{report['matmul_dtype'][6:]} matrix multiply ({report['matmul_n']}^3, random data): "
        f"**{report['matmul_tflops']:.0f} TFLOP/s**; "
        f"one WRN-28-2 MixMatch step (batch {report['batch']} + {report['k']} x {report['batch']} unlabelled) "
        f"is {report['step']['flops_per_step'] / 1e9:.1f} GFLOP (torch.utils.flop_counter).",
        "",
        "| path | ms/step | steps/s | images/s | TFLOP/s | of matmul peak | vs reference | paper's 2^20 steps (h) "
        "| first step (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, e in report["step"]["paths"].items():
        lines.append(
            f"| {name} | {e['ms_per_step']:.1f} | {e['steps_per_second']:.1f} | {e['images_per_second']:.0f} | "
            f"{e['achieved_tflops']:.2f} | {100 * e['fraction_of_matmul_peak']:.2f}% | "
            f"{e.get('speedup_over_reference', float('nan')):.2f}x | {e['paper_schedule_hours']:.1f} | "
            f"{e['first_step_seconds']:.1f} |"
        )
    for name, e in report.get("backbones", {}).items():
        lines.append(f"| {name} (eager) | {e['ms_per_step']:.1f} | {1000 / e['ms_per_step']:.1f} | "
                     f"{e['images_per_second']:.0f} | {e['gflop_per_step'] / e['ms_per_step']:.2f} | "
                     f"{100 * e['fraction_of_matmul_peak']:.2f}% | | | |")
    agree = report["step"].get("losses_eager_vs_compiled")
    if agree:
        lines += ["", f"Losses of {agree['steps']} steps from the same weights and draws, compiled against eager: "
                  f"largest relative gap {100 * agree['max_relative_gap']:.2f}%, mean "
                  f"{100 * agree['mean_relative_gap']:.2f}%."]
    run = report.get("run")
    if run:
        lines += [
            "",
            f"Short run: {run['dataset']}, {run['num_labels']} labels, WRN-28-2, {run['steps']} steps "
            f"(of {run['steps_asked']} asked): test accuracy **{100 * run['test_accuracy']:.2f}%** "
            f"(median of the last evaluations: {100 * run.get('median_last20_accuracy', float('nan')):.2f}%), "
            f"{run['wall_seconds']:.0f} s.",
        ]
    return "\n".join(lines) + "\n"


def median_of_last(metrics: Path, n: int = 20) -> float:
    accs = [r["test_accuracy"] for r in map(json.loads, metrics.read_text().splitlines()) if "test_accuracy" in r]
    return statistics.median(accs[-n:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu.json, gpu.md and run-*")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget", type=float, default=480, help="seconds for the whole check")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--batch", type=int, default=64, help="labelled batch B (the paper's 64)")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60, help="timed steps of each path")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps of each path first (compiling)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the paths")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--run-steps", type=int, default=8192, help="steps of the short run, at most")
    parser.add_argument("--eval-every", type=int, default=256)
    parser.add_argument("--run-compile", default="auto", choices=("auto", "on", "off"),
                        help="the short run's --compile (auto: eager below 20,000 steps)")
    parser.add_argument("--agree-steps", type=int, default=20, help="steps of the eager/compiled loss check")
    parser.add_argument("--backbone-sizes", type=int, nargs="*", default=[112, 224],
                        help="image sides at which to time a ResNet-18 step (none: skip)")
    parser.add_argument("--tiny", action="store_true", help="a few small steps, for the test on a CPU")
    args = parser.parse_args()
    if args.tiny:
        args.batch, args.steps, args.warmup, args.rounds = 4, 2, 1, 1
        args.run_steps, args.eval_every = 4, 2
        args.paths = [p for p in args.paths if p != "compiled"]
        args.backbone_sizes = [32] if args.backbone_sizes else []
    start = time.perf_counter()
    deadline = start + args.budget
    device = torch.device(args.device)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    cuda = device.type == "cuda"
    n = 8192 if cuda else (256 if args.tiny else 2048)
    dtype = torch.bfloat16 if cuda else torch.float32
    peak = matmul_rate(device, n, dtype)
    report: dict[str, Any] = dict(
        command="python bench/gpu.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in (
            ("data_dir", args.data_dir), ("out", args.out), ("budget", args.budget)) if v),
        device_name=torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        torch=torch.__version__, cuda=torch.version.cuda, host=f"{platform.machine()}, {torch.get_num_threads()} "
        "CPU threads", matmul_n=n, matmul_dtype=str(dtype), matmul_tflops=peak / 1e12, batch=args.batch, k=args.k,
    )
    print(f"{report['device_name']}: {str(dtype)[6:]} matmul {n}^3 at {peak / 1e12:.1f} TFLOP/s", flush=True)
    # Leave the short run a third of the budget.
    report["step"] = time_paths(args, device, peak, start + args.budget * 2 / 3)
    for name, e in report["step"]["paths"].items():
        print(f"{name:>12}: {e['ms_per_step']:.1f} ms/step, {e['steps_per_second']:.1f} steps/s, "
              f"{e['images_per_second']:.0f} images/s, {100 * e['fraction_of_matmul_peak']:.2f}% of the matmul "
              f"peak, paper schedule {e['paper_schedule_hours']:.1f} h", flush=True)
    report["backbones"] = time_backbones(args, device, peak)
    fastest = min(report["step"]["paths"].values(), key=lambda e: e["ms_per_step"])
    Path(args.out, "gpu.json").write_text(json.dumps(report, indent=2))
    # The short run's speed: compiled if asked for (its compiling is in the quarter short_run keeps spare).
    timed = report["step"]["paths"].get("compiled" if args.run_compile == "on" else "eager", fastest)
    run = short_run(args, device, timed["ms_per_step"] / 1000, deadline - time.perf_counter())
    run["median_last20_accuracy"] = median_of_last(Path(args.out) / "run-metrics.jsonl")
    report["run"] = run
    report["seconds"] = time.perf_counter() - start
    Path(args.out, "gpu.json").write_text(json.dumps(report, indent=2))
    Path(args.out, "gpu.md").write_text(markdown(report))
    print(markdown(report))
    print(f"gpu check: done in {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
