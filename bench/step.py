"""Time full MixMatch training steps: a plain reference path against the library's default path.

Both paths run the same WRN-28-2 step (labelled batch B, K x B unlabelled views, augmentation and label
guessing included, data already resident as uint8) through mixmatch.training.trainer.Trainer, in one process,
alternating rounds so that both see the same machine load. The reference path is what the popular ports
do: fp32, contiguous tensors, augmentation image by image, the official three interleaved forward passes,
PyTorch's default Adam (a loop over the parameters on CPU).

    python bench/step.py                       # CPU, 10 timed steps each
    python bench/step.py --device cuda --steps 50
    python bench/step.py --compile off         # skip compiling (a minute or more on a small CPU)

The last line is `speedup: N.NNx` (reference seconds per step / default seconds per step).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import platform
import random
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from mixmatch.augment import Augmenter
from mixmatch.config import TrainConfig
from mixmatch.data.dataset import ImageDataset
from mixmatch.training.trainer import Trainer


class PerImageAugmenter:
    """The reference augmentation: one image at a time, reflect-pad, crop, flip, as a per-image transform does."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, pad: int):
        self.mean, self.std, self.pad, self.flip = mean.view(-1, 1, 1), std.view(-1, 1, 1), pad, True

    def _one(self, image: torch.Tensor) -> torch.Tensor:
        x = image.float().div(255)
        _, h, w = x.shape
        x = F.pad(x[None], [self.pad] * 4, mode="reflect")[0]
        top, left = random.randint(0, 2 * self.pad), random.randint(0, 2 * self.pad)
        x = x[:, top : top + h, left : left + w]
        if random.random() < 0.5:
            x = x.flip(-1)
        return (x - self.mean) / self.std

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._one(image) for image in images])

    def views(self, images: torch.Tensor, k: int) -> torch.Tensor:
        return torch.stack([self(images) for _ in range(k)])

    def batch_and_views(self, x: torch.Tensor, u: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self(x), self.views(u, k)

    def plain(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float().div(255) - self.mean) / self.std


def synthetic_cifar(n: int = 4096, seed: int = 0) -> ImageDataset:
    """CIFAR-10-shaped uint8 data: speed does not depend on the pixel values."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % 10
    return ImageDataset("synthetic-cifar10", images, labels, images[:256], labels[:256], [str(i) for i in range(10)])


def per_image(batched: Augmenter) -> PerImageAugmenter:
    return PerImageAugmenter(batched.mean, batched.std, batched.pad)


def default_adam(parameters: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(parameters, lr=config.lr)  # PyTorch's defaults: a loop over the parameters on CPU


def make_trainer(path: str, args: argparse.Namespace, data: ImageDataset, per_image_augment: bool = True) -> Trainer:
    """reference, default (the Trainer's defaults for the paper's schedule) or default-eager (no compile).

    The reference path replaces the Trainer's augmentation (unless `per_image_augment` is False) and its
    optimiser through the Trainer's `augment` and `optimizer` options.
    """
    common = dict(dataset="cifar10", arch="wrn28_2", num_labels=250, steps=2**20, batch_size=args.batch, k=args.k,
                  device=args.device, progress=False, out="/tmp/mixmatch-bench", seed=0)
    if path == "reference":
        config = TrainConfig(**common, amp="off", channels_last="off", bn_mode="interleave", compile="off")
        return Trainer(config, data, augment=per_image if per_image_augment else None, optimizer=default_adam)
    compile_mode = "off" if path == "default-eager" else args.compile
    return Trainer(TrainConfig(**common, amp=args.amp, channels_last="auto", bn_mode="concat", compile=compile_mode),
                   data)


def loss_on_one_batch(trainer: Trainer, seed: int = 1) -> float:
    """The MixMatch loss (lambda_u at full weight) of one batch that every path draws alike.

    Give it fresh trainers of the same initial weights, the reference one built with the batched
    augmentation (make_trainer(..., per_image_augment=False)): the per-image augmentation draws from another
    generator. The paths then differ only in arithmetic (precision, memory format, compile) and in how
    BatchNorm batches X' and U' (interleave against concat).
    """
    trainer.step = trainer.config.rampup_steps
    trainer.model.train()
    torch.manual_seed(seed)
    return trainer.step_loss().total.item()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(trainer: Trainer, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        trainer.train_step()
        sync(trainer.device)
        times.append(time.perf_counter() - start)
    return times


def peak_memory_mb(path: str, args: argparse.Namespace) -> float:
    """Memory a step of one path needs on top of the model, optimiser state and data, in MiB.

    CUDA: the caching allocator's peak during two steps minus what was allocated before them. CPU: the same
    with the process's resident set, in a fresh process (this one holds both paths): after one warm-up step
    the freed heap is handed back to the OS (malloc_trim), the kernel's peak-RSS mark is reset
    (/proc/self/clear_refs), and the peak of two steps is read against the resident set before them.
    """
    if args.device.startswith("cuda"):
        trainer = make_trainer(path, args, synthetic_cifar())
        timed_steps(trainer, 2)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        timed_steps(trainer, 2)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    cmd = [sys.executable, __file__, "--rss-of", path, "--device", args.device, "--batch", str(args.batch),
           "--k", str(args.k), "--amp", args.amp, "--compile", args.compile]
    return float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def rss_of(path: str, args: argparse.Namespace) -> None:
    """Print the MiB of resident memory that two steps of `path` add at their peak (Linux only)."""
    trainer = make_trainer(path, args, synthetic_cifar())
    timed_steps(trainer, 1)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak resident set, to the current one
    before = _status_kib("VmRSS")
    timed_steps(trainer, 2)
    print((_status_kib("VmHWM") - before) / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each path")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each path first")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the two paths")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"), help="default path's autocast")
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                        help="the default path's --compile (auto compiles: the paper's schedule is long); "
                        "when it compiles, the eager default path is timed too")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak memory measurement")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--rss-of", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_of:
        rss_of(args.rss_of, args)
        return

    data = synthetic_cifar()
    paths = {name: make_trainer(name, args, data) for name in ("reference", "default")}
    if paths["default"].torch_compile:
        paths["default-eager"] = make_trainer("default-eager", args, data)
    compile_seconds = {}
    for name, trainer in paths.items():
        warm = timed_steps(trainer, args.warmup)
        compile_seconds[name] = warm[0]
    # Measured after the warm-up steps (which moved the weights apart): from equal fresh copies instead.
    losses = {name: loss_on_one_batch(make_trainer(name, args, data, per_image_augment=False)) for name in paths}
    per_round = max(1, args.steps // args.rounds)
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, trainer in paths.items():
            times[name] += timed_steps(trainer, per_round)

    images_per_step = args.batch * (1 + args.k)
    default = paths["default"]
    report = dict(
        device=str(default.device), cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
        torch=torch.__version__, batch=args.batch, k=args.k, steps_each=len(times["default"]),
        default_path=dict(bf16=default.bf16, channels_last=default.channels_last, bn_mode="concat",
                          augmentation="batched gather on device", compile=default.torch_compile,
                          optimizer="torch.optim.Adam fused"),
        reference_path=dict(bf16=False, channels_last=False, bn_mode="interleave", augmentation="per image",
                            optimizer="torch.optim.Adam defaults (a loop over parameters on CPU)"),
    )
    print(f"device {report['device']} ({report['cpu']}, {report['threads']} threads), torch {torch.__version__}")
    print(f"batch {args.batch} labelled + {args.k} x {args.batch} unlabelled, WRN-28-2, {report['steps_each']} "
          f"timed steps each after {args.warmup} warm-up, {args.rounds} alternating rounds")
    for name in paths:
        median = statistics.median(times[name])
        entry = dict(seconds_per_step=median, steps_per_second=1 / median, images_per_second=images_per_step / median,
                     first_step_seconds=compile_seconds[name], loss_on_one_batch=losses[name])
        if not args.no_memory:
            entry["peak_memory_mb"] = peak_memory_mb(name, args)
        report[name] = entry
        memory = f", step memory {entry['peak_memory_mb']:.0f} MiB" if "peak_memory_mb" in entry else ""
        print(f"{name:>13}: {entry['steps_per_second']:.3f} steps/s, {entry['images_per_second']:.0f} images/s "
              f"(median {median * 1000:.0f} ms/step; first step {compile_seconds[name]:.2f} s with compiling){memory}")
    print("loss on one batch, from equal initial weights: " + ", ".join(
        f"{name} {loss:.4f} ({100 * (loss / losses['reference'] - 1):+.2f}%)" for name, loss in losses.items()))
    speedup = statistics.median(times["reference"]) / statistics.median(times["default"])
    report["speedup"] = speedup
    if "default-eager" in times:
        report["speedup_without_compile"] = statistics.median(times["reference"]) / statistics.median(
            times["default-eager"]
        )
        print(f"without compile: {report['speedup_without_compile']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(f"speedup: {speedup:.2f}x")


if __name__ == "__main__":
    main()
