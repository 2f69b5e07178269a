"""Whole-step torch.compile against the library's eager step: the digits MixMatch step in fp32 on a CPU.

The speed issue asked whether compiling the whole step, not the model alone, makes the small CNN's step
faster on CPUs. Here label guessing, MixUp, the forward pass and the loss of one step are one function,
compiled with fullgraph=True (inductor generates the backward as well); the random draws (batches,
augmentation, the permutation, the MixUp weights) are made outside it, as in the library's step, and Adam,
weight decay and the EMA run as the library runs them. Rounds alternate the compiled step and the library's
eager `Trainer.train_step`, each round with its own fp32 matmul peak (bench/cpu.py's).

    python bench/whole_step.py
    python bench/whole_step.py --cpp-wrapper   # inductor's C++ wrapper instead of its Python one

On the 2-core EPYC (results/perf.md) the compiled step was 11-29% slower than the eager one in every round,
with either wrapper, and slower in a process of its own too, so the library compiles nothing below 20,000
steps (`--compile auto`).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from cpu import make_trainer, matmul_gflops, step_gflop  # bench/cpu.py

from mixmatch import algorithm as A
from mixmatch.train import Trainer


def compiled_step(trainer: Trainer) -> Callable[[], None]:
    """One MixMatch step of `trainer` with guess, MixUp, forward and loss compiled as one graph."""
    model, mm = trainer.model, trainer.mixmatch
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    classes = trainer.data.num_classes
    cfg = trainer.config

    def loss_of(x: torch.Tensor, p: torch.Tensor, u_views: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor,
                lambda_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        K, B = u_views.shape[:2]
        u = u_views.reshape(K * B, *u_views.shape[2:])
        with torch.no_grad():
            for m in norms:  # the guess must not move BatchNorm's running statistics
                m.track_running_stats = False
            guess = torch.softmax(model(u).float(), -1).view(K, B, -1).mean(0)
            for m in norms:
                m.track_running_stats = True
            q = A.sharpen(guess, mm.T)
        all_x, all_y = torch.cat([x, u]), torch.cat([p, q.repeat(K, 1)])
        mixed_x = torch.lerp(all_x[perm], all_x, lam.view(-1, 1, 1, 1))
        mixed_y = torch.lerp(all_y[perm], all_y, lam.view(-1, 1))
        logits = model(mixed_x)
        n = x.shape[0]
        return A.mixmatch_loss(logits[:n], mixed_y[:n], logits[n:], mixed_y[n:], lambda_u)

    compiled = torch.compile(loss_of, dynamic=False, fullgraph=True)

    def step() -> None:
        model.train()
        xb, yb = trainer._batch(trainer.labeled_x, trainer.labeled_y)
        ub, _ = trainer._batch(trainer.unlabeled_x)
        x, u_views = trainer.augment.batch_and_views(xb, ub, cfg.k)
        n = x.shape[0] * (1 + cfg.k)
        perm = torch.randperm(n)
        lam = A.sample_mix_weights(n, mm.alpha, x)
        loss, _, _ = compiled(x, F.one_hot(yb, classes).float(), u_views, perm, lam,
                              torch.tensor(trainer.lambda_u()))
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
        with torch.no_grad():
            torch._foreach_mul_(trainer.decayed, 1 - cfg.weight_decay * trainer.optimizer.param_groups[0]["lr"])
        trainer.ema.update(model)
        trainer.step += 1

    return step


def median_seconds(step: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="timed steps of each path in a round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpp-wrapper", action="store_true", help="inductor's cpp_wrapper (less Python per call)")
    args = parser.parse_args()
    torch._inductor.config.cpp_wrapper = args.cpp_wrapper
    torch.manual_seed(0)
    eager = make_trainer("digits", "fp32")
    whole = compiled_step(make_trainer("digits", "fp32"))
    start = time.perf_counter()
    whole()
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; first compiled step {time.perf_counter() - start:.1f} s")
    for _ in range(20):
        whole()
        eager.train_step()
    gflop = step_gflop(eager)
    for _ in range(args.rounds):
        peak = matmul_gflops(torch.float32)
        a, b = median_seconds(whole, args.steps), median_seconds(eager.train_step, args.steps)
        print(f"whole step compiled {a * 1e3:.2f} ms ({gflop / a / peak:.1%} of the peak) | library eager "
              f"{b * 1e3:.2f} ms ({gflop / b / peak:.1%}) | compiled/eager {a / b:.2f} | fp32 peak {peak:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
