"""The MixMatch algorithm (Berthelot et al., 2019, arXiv:1905.02249) as pure functions on tensors.

Shapes: B labelled examples, K augmented views of each of B unlabelled examples, L classes,
images (C, H, W). Every function here is stateless; the trainer owns the model and optimiser.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sharpen(p: Tensor, T: float) -> Tensor:
    """Sharpen distributions: p**(1/T) renormalised over the last axis (paper eq. 7).

    p: (N, L) probabilities; returns (N, L), rows summing to 1. T=1 returns p itself, T->0 one-hot.
    Computed as a softmax of log(p)/T so that small T does not underflow to 0/0.
    """
    if T <= 0:
        raise ValueError(f"temperature T must be > 0, got {T}")
    if T == 1:
        # The identity exactly: log-then-softmax would move p by rounding, and a target that differs from the
        # prediction by rounding gives the consistency loss a gradient that is noise (the demo's T=1 claim).
        return p
    return torch.softmax(torch.log(p.clamp_min(torch.finfo(p.dtype).tiny)) / T, dim=-1)


def align_distribution(p: Tensor, model_marginal: Tensor, target_marginal: Tensor) -> Tensor:
    """Distribution alignment (ReMixMatch, Berthelot et al. 2020, arXiv:1911.09785, sec. 3.2): not MixMatch.

    p: (N, L) guessed distributions; model_marginal: (L,) running mean of the model's guesses;
    target_marginal: (L,) the class distribution of the labelled data. Returns p * target / model,
    renormalised: (N, L), rows summing to 1. A class the guesses have drifted away from is scaled up,
    which counters the confirmation bias of guessed labels (results/guesses-fashion-mnist).
    """
    aligned = p * (target_marginal / model_marginal.clamp_min(torch.finfo(p.dtype).tiny))
    return aligned / aligned.sum(-1, keepdim=True)


def sample_mix_weights(n: int, alpha: float, like: Tensor) -> Tensor:
    """lambda' = max(lambda, 1 - lambda), lambda ~ Beta(alpha, alpha), one per example: (n,).

    alpha=0 means no mixing (lambda' = 1). So does alpha below 1e-6, the limit as alpha -> 0 where
    Beta(alpha, alpha) puts its mass on {0, 1}; torch's sampler returns 0.5 there instead.
    Draws from the global torch RNG of `like`'s device, so a seeded run is reproducible.
    """
    if alpha < 0:
        raise ValueError(f"mixup alpha must be >= 0, got {alpha}")
    if alpha < 1e-6:
        return torch.ones(n, device=like.device, dtype=like.dtype)
    lam = _beta(float(alpha), like.device).sample((n,)).to(like.dtype)
    return torch.maximum(lam, 1 - lam)


@functools.cache
def _beta(alpha: float, device: torch.device) -> torch.distributions.Beta:
    # Built once: building and validating a Beta took longer than sampling from it, every step.
    concentration = torch.tensor(alpha, device=device)
    return torch.distributions.Beta(concentration, concentration)


def mixup(x1: Tensor, y1: Tensor, x2: Tensor, y2: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """MixUp with lambda' >= 0.5 so that the result stays closer to (x1, y1) (paper eqs. 8-11).

    x1, x2: (N, ...) inputs; y1, y2: (N, L) soft labels. Returns (x, y) of the same shapes.
    """
    lam = sample_mix_weights(x1.shape[0], alpha, x1)
    lam_x = lam.view(-1, *([1] * (x1.dim() - 1)))
    lam_y = lam.view(-1, 1).to(y1.dtype)
    return torch.lerp(x2, x1, lam_x), torch.lerp(y2, y1, lam_y)


@contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """Run BatchNorm in training mode (batch statistics) without touching its running statistics.

    The official code keeps running statistics from one forward pass per step; label guessing must
    not count. With track_running_stats off, a BatchNorm layer in training mode normalises by the
    batch and is handed no running statistics to update, nor counts the batch (torch's _BatchNorm.forward).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


@torch.no_grad()
def guess_labels(
    model: Callable[[Tensor], Tensor], u_views: Tensor, T: float, align: Callable[[Tensor], Tensor] | None = None
) -> Tensor:
    """Guess labels for unlabelled data: average softmax over K views, then sharpen (paper eqs. 6-7).

    u_views: (K, B, C, H, W) augmented views; returns q: (B, L), rows summing to 1, no gradient.
    The model is called as it is (the official code uses training mode, batch statistics).
    `align`, if given, maps the averaged (B, L) distributions before sharpening (distribution alignment).
    """
    K, B = u_views.shape[:2]
    logits = model(u_views.reshape(K * B, *u_views.shape[2:])).float()
    p = torch.softmax(logits, dim=-1).view(K, B, -1).mean(0)
    return sharpen(p if align is None else align(p), T)


def mix_batches(
    x: Tensor, p: Tensor, u_views: Tensor, q: Tensor, alpha: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Batch assembly of the paper's Algorithm 1, lines 10-14.

    x: (B, C, H, W) augmented labelled batch X^, p: (B, L) one-hot labels, u_views: (K, B, C, H, W)
    augmented unlabelled views U^, q: (B, L) guessed labels (shared by the K views).
    W = shuffle(concat(X^, U^)); X' = MixUp(X^, W[:B]); U' = MixUp(U^, W[B:]).
    Returns (x', p', u', q') with shapes (B, C, H, W), (B, L), (K*B, C, H, W), (K*B, L).
    """
    K, B = u_views.shape[:2]
    u = u_views.reshape(K * B, *u_views.shape[2:])
    all_x = torch.cat([x, u])
    all_y = torch.cat([p.to(q.dtype), q.repeat(K, 1)])
    perm = torch.randperm(all_x.shape[0], device=all_x.device)
    mixed_x, mixed_y = mixup(all_x, all_y, all_x[perm], all_y[perm], alpha)
    n_x = x.shape[0]
    return mixed_x[:n_x], mixed_y[:n_x], mixed_x[n_x:], mixed_y[n_x:]


def interleave_offsets(batch: int, nu: int) -> list[int]:
    """Boundaries of nu+1 near-equal groups of a batch, larger groups last (as the official code)."""
    groups = [batch // (nu + 1)] * (nu + 1)
    for i in range(batch - sum(groups)):
        groups[-i - 1] += 1
    offsets = [0]
    for g in groups:
        offsets.append(offsets[-1] + g)
    return offsets


def interleave(batches: list[Tensor], batch: int) -> list[Tensor]:
    """Swap slices between nu+1 batches so each holds a share of every one (the official `interleave`).

    batches: nu+1 tensors with leading size `batch`. The swap is its own inverse, so calling it again on
    the outputs (e.g. logits) restores the original order.
    """
    offsets = interleave_offsets(batch, len(batches) - 1)
    parts = [[v[offsets[i] : offsets[i + 1]] for i in range(len(batches))] for v in batches]
    for i in range(1, len(batches)):
        parts[0][i], parts[i][i] = parts[i][i], parts[0][i]
    return [torch.cat(v) for v in parts]


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over the batch of -sum_l targets * log_softmax(logits): logits, targets (N, L) -> ()."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def l2_consistency(logits: Tensor, targets: Tensor) -> Tensor:
    """Squared error between softmax(logits) and targets, mean over batch and classes (official code).

    logits, targets: (N, L) -> (). This is the paper's ||q - p||^2 / L averaged over examples.
    """
    return (torch.softmax(logits.float(), dim=-1) - targets).square().mean()


def linear_rampup(step: int | Tensor, rampup_steps: int) -> float | Tensor:
    """Weight in [0, 1] that grows linearly from 0 at step 0 to 1 at `rampup_steps` (then stays 1)."""
    if rampup_steps <= 0:
        return 1.0 if not isinstance(step, Tensor) else torch.ones_like(step, dtype=torch.float32)
    if isinstance(step, Tensor):
        return (step.float() / rampup_steps).clamp(0.0, 1.0)
    return min(max(step / rampup_steps, 0.0), 1.0)


def mixmatch_loss(
    logits_x: Tensor, targets_x: Tensor, logits_u: Tensor, targets_u: Tensor, lambda_u: float | Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Total loss L_X + lambda_u * L_U (paper eqs. 2-5).

    logits_x, targets_x: (B, L) for X'; logits_u, targets_u: (K*B, L) for U'; lambda_u already ramped.
    Returns (total, L_X, L_U), each a scalar tensor.
    """
    loss_x = soft_cross_entropy(logits_x, targets_x)
    loss_u = l2_consistency(logits_u, targets_u)
    return loss_x + lambda_u * loss_u, loss_x, loss_u
