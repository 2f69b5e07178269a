"""Whole-step torch.compile against the library's eager step: the digits MixMatch step in fp32 on a CPU.

The speed issue asked whether compiling the whole step, not the model alone, makes the small CNN's step
faster on CPUs. Here label guessing, MixUp, the forward pass and the loss of one step are one function,
compiled with fullgraph=True (inductor generates the backward as well); the random draws (batches,
augmentation, the permutation, the MixUp weights) are made outside it, as in the library's step, and the
rest of the step is the library's own `Trainer.train_step`. Rounds alternate the compiled step and the library's
eager `Trainer.train_step`, each round with its own fp32 matmul peak (bench/cpu.py's).

    python bench/whole_step.py
    python bench/whole_step.py --cpp-wrapper   # inductor's C++ wrapper instead of its Python one

On the 2-core EPYC (results/perf.md) the compiled step was 3-29% slower than the eager one in every round,
with either wrapper, and slower in a process of its own too, so the library compiles nothing below 20,000
steps (`--compile auto`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from cpu import cpu_name, make_trainer, matmul_gflops, step_gflop, threads  # bench/cpu.py

from mixmatch import algorithm
from mixmatch.methods import Losses
from mixmatch.training.runtime import cpu_has_bf16
from mixmatch.training.trainer import Trainer


def compile_whole_loss(trainer: Trainer) -> None:
    """Make `trainer.train_step` compute guess, MixUp, forward and loss as one compiled graph.

    The random draws (batches, augmentation, the permutation, the MixUp weights) stay outside the graph, as
    in the library's step; the rest of `train_step` (backward, Adam, weight decay, the EMA) is the library's.
    """
    model, mm, classes = trainer.model, trainer.method, trainer.data.num_classes

    def loss_of(x: torch.Tensor, p: torch.Tensor, u_views: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor,
                lambda_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with algorithm.frozen_batchnorm_stats(model):
            q = algorithm.guess_labels(model, u_views, mm.T)
        all_x = torch.cat([x, u_views.flatten(0, 1)])
        all_y = torch.cat([p, q.repeat(u_views.shape[0], 1)])
        mixed_x = torch.lerp(all_x[perm], all_x, lam.view(-1, 1, 1, 1))
        mixed_y = torch.lerp(all_y[perm], all_y, lam.view(-1, 1))
        logits = model(mixed_x)
        n = x.shape[0]
        return algorithm.mixmatch_loss(logits[:n], mixed_y[:n], logits[n:], mixed_y[n:], lambda_u)

    compiled = torch.compile(loss_of, dynamic=False, fullgraph=True)

    def step_loss() -> Losses:
        batch = trainer.draw_batch()
        x, u_views = trainer.augment.batch_and_views(batch.x, batch.u, trainer.config.k)
        n = x.shape[0] + u_views.shape[0] * u_views.shape[1]
        perm = torch.randperm(n)
        lam = algorithm.sample_mix_weights(n, mm.alpha, x)
        p = F.one_hot(batch.y, classes).float()
        return Losses(*compiled(x, p, u_views, perm, lam, torch.tensor(mm.lambda_u_at(trainer.step))))

    trainer.step_loss = step_loss


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
    whole_trainer = make_trainer("digits", "fp32")
    compile_whole_loss(whole_trainer)
    whole = whole_trainer.train_step
    start = time.perf_counter()
    whole()
    print(f"{cpu_name()}, bf16 units: {cpu_has_bf16()}, {threads(torch.get_num_threads())}, torch "
          f"{torch.__version__}; first compiled step {time.perf_counter() - start:.1f} s")
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
