"""MixMatch (Berthelot et al., 2019, arXiv:1905.02249; google-research/mixmatch mixmatch.py): one step's
algorithm and its state, shared by every front end (the Trainer's method, the fastai callback).

`MixMatchStep` holds K, T, alpha, lambda_u and its ramp-up, the mix mode (the paper's, or an ablation of
its table 4), the BatchNorm mode of the forward pass and distribution alignment with its running marginal.
It offers the stages of a step: guess labels, mix, forward the mixed batch through a given model, loss;
`batch_loss` runs them on a Trainer's batch. The math is `mixmatch.algorithm`'s; the front ends keep the
data, augmentation, precision and optimiser.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import algorithm
from ..config import PAPER_RAMPUP_STEPS, BnMode, MixMode
from .base import Batch, Context, Losses, Method

if TYPE_CHECKING:
    from ..config import TrainConfig

Forward = Callable[[Tensor], Tensor]

MIX_MODES: tuple[str, ...] = get_args(MixMode)
BN_MODES: tuple[str, ...] = get_args(BnMode)
# ReMixMatch keeps the model's class marginal as a mean over the last 128 batches; an EMA of about the
# same memory (1 / (1 - 0.99) = 100 batches) does it without a buffer of batches.
ALIGNMENT_DECAY = 0.99


def class_marginal(labels: Tensor, num_classes: int) -> Tensor:
    """Class distribution (L,) float32 of class indices `labels` (N,), on their device.

    The target of distribution alignment: the class distribution of the labelled data.
    """
    return torch.bincount(labels, minlength=num_classes).float() / len(labels)


def _same(t: Tensor) -> Tensor:
    return t


class MixMatchStep(Method):
    """The algorithm of one MixMatch step (Berthelot et al., 2019, arXiv:1905.02249, Algorithm 1) and its state.

    K, T, alpha, lambda_u: views per unlabelled image, sharpening temperature, Beta(alpha, alpha) of MixUp
        (0: no mixing) and weight of L_U after the ramp-up.
    rampup_steps: lambda_u grows linearly from 0 over this many steps (paper: 16384).
    mix: what MixUp mixes: "all" (the paper: partners from X and U together), "labeled" (X with X only,
        U unmixed), "unlabeled" (U with U only), "separate" (X with X and U with U); the ablations of the
        paper's table 4.
    bn_mode: "concat", one forward pass over X' and U'; "interleave", the official code's three passes,
        each holding a share of every part, BatchNorm's running statistics updated by the first only.
    labeled_marginal: (L,) class distribution of the labelled data (`class_marginal`): turns on
        distribution alignment (ReMixMatch, arXiv:1911.09785, sec. 3.2; not in MixMatch), whose running
        marginal of the guesses, `guess_marginal` (L,), starts uniform on the same device. `align_to`
        turns it on later.
    average: maps a tensor to its mean over processes (torchrun: `ProcessGroup.average`), so that every
        process keeps the same running marginal; None for one process.
    anchoring: train on K strongly augmented views of each unlabelled image against the guess from its weak
        views (ReMixMatch's augmentation anchoring, arXiv:1911.09785 sec. 3.3; not in MixMatch).
    Raises ValueError for K < 1, T <= 0, alpha < 0, lambda_u < 0 or an unknown mix or bn_mode.
    """

    name = "mixmatch"
    reads = (
        "k", "temperature", "alpha", "lambda_u", "rampup_steps", "mix", "bn_mode", "distribution_alignment",
        "augmentation_anchoring",
    )

    def __init__(
        self,
        K: int = 2,
        T: float = 0.5,
        alpha: float = 0.75,
        lambda_u: float = 75.0,
        rampup_steps: int = PAPER_RAMPUP_STEPS,
        mix: str = "all",
        bn_mode: str = "concat",
        labeled_marginal: Tensor | None = None,
        average: Callable[[Tensor], Tensor] | None = None,
        anchoring: bool = False,
    ):
        if K < 1:
            raise ValueError(f"K must be >= 1, got {K}")
        if T <= 0:
            raise ValueError(f"T must be > 0, got {T}")
        if alpha < 0 or lambda_u < 0:
            raise ValueError(f"alpha and lambda_u must be >= 0, got {alpha} and {lambda_u}")
        if mix not in MIX_MODES:
            raise ValueError(f"mix must be one of {', '.join(MIX_MODES)}, got {mix!r}")
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {', '.join(BN_MODES)}, got {bn_mode!r}")
        self.K, self.T, self.alpha, self.lambda_u, self.rampup_steps = K, T, alpha, lambda_u, rampup_steps
        self.mix_mode, self.bn_mode, self.anchoring = mix, bn_mode, anchoring
        self.average = average if average is not None else _same
        self.labeled_marginal: Tensor | None = None
        self.guess_marginal: Tensor | None = None
        if labeled_marginal is not None:
            self.align_to(labeled_marginal)

    @classmethod
    def from_config(
        cls,
        config: TrainConfig,
        *,
        labeled_y: Tensor | None = None,
        num_classes: int | None = None,
        average: Callable[[Tensor], Tensor] | None = None,
    ) -> MixMatchStep:
        """The step of a resolved TrainConfig (the fields of `reads`); with distribution alignment, aligned to the
        class distribution of `labeled_y` (n,) over `num_classes`."""
        aligned = config.distribution_alignment and labeled_y is not None and num_classes is not None
        labeled_marginal = class_marginal(labeled_y, num_classes) if aligned else None
        return cls(
            K=config.k,
            T=config.temperature,
            alpha=config.alpha,
            lambda_u=config.lambda_u,
            rampup_steps=config.rampup_steps,
            mix=config.mix,
            bn_mode=config.bn_mode,
            labeled_marginal=labeled_marginal,
            average=average,
            anchoring=config.augmentation_anchoring,
        )

    @property
    def distribution_alignment(self) -> bool:
        return self.labeled_marginal is not None

    def align_to(self, labeled_marginal: Tensor) -> None:
        """Align guesses to the class distribution `labeled_marginal` (L,) from now on.

        The running marginal of the guesses starts uniform on `labeled_marginal`'s device, or is kept if
        alignment was already on.
        """
        self.labeled_marginal = labeled_marginal
        if self.guess_marginal is None:
            classes = labeled_marginal.shape[0]
            self.guess_marginal = torch.full((classes,), 1 / classes, device=labeled_marginal.device)

    def lambda_u_at(self, step: int) -> float:
        """Weight of L_U at training step `step` (counted from 0): lambda_u times the linear ramp-up."""
        return self.lambda_u * algorithm.linear_rampup(step, self.rampup_steps)

    def batch_loss(self, ctx: Context, batch: Batch) -> Losses:
        """Algorithm 1 on a drawn batch: augment X once and U K times, guess, mix, one forward pass of the mixed
        batch (or the interleaved ones), L_X + lambda_u L_U in the run's precision. With anchoring, the strong
        views of U are mixed and trained on against the guess from its weak views."""
        x, u_views = ctx.augment.batch_and_views(batch.x, batch.u, self.K)
        strong = ctx.augment.strong_views(batch.u, self.K) if self.anchoring else None
        return self.views_loss(ctx, x, batch.y, u_views, strong)

    def views_loss(
        self, ctx: Context, x: Tensor, y: Tensor, u_views: Tensor, u_strong: Tensor | None = None
    ) -> Losses:
        """Guess, mix, forward and loss of an augmented labelled batch x (B, C, H, W) with classes y (B,) and
        augmented unlabelled views u_views (K, B_u, C, H, W), the views in u_strong (K, B_u, C, H, W) mixed
        instead where given (anchoring): `batch_loss` after its augmentation."""
        p = F.one_hot(y, ctx.num_classes).float()
        with ctx.autocast():
            q = self.guess(ctx.model, u_views, ctx.forward)
        x_mix, p_mix, u_mix, q_mix = self.mix(x, p, u_views if u_strong is None else u_strong, q)
        with ctx.autocast():
            logits_x, logits_u = self.forward_mixed(ctx.model, x_mix, u_mix, ctx.forward)
        return Losses(*self.loss(logits_x, p_mix, logits_u, q_mix, self.lambda_u_at(ctx.step)))

    def state_dict(self) -> dict[str, Tensor | None]:
        """The running marginal of the guesses (distribution alignment; None without it)."""
        return {"guess_marginal": self.guess_marginal}

    def load_state_dict(self, state: dict[str, Tensor | None]) -> None:
        if self.guess_marginal is not None and state.get("guess_marginal") is not None:
            self.guess_marginal.copy_(state["guess_marginal"])

    def guess(
        self, model: nn.Module, u_views: Tensor, forward: Forward | None = None, update_alignment: bool = True
    ) -> Tensor:
        """Guessed labels q (B, L) of views u_views (K, B, C, H, W), no gradient (paper eqs. 6-7).

        The model is run as it is (a step runs it in training mode: batch statistics) with BatchNorm's
        running statistics frozen; `forward` (default: `model` itself) is what is called, e.g. its
        compiled or DistributedDataParallel wrapper. With distribution alignment the averaged guesses are
        aligned before sharpening, and this MOVES the alignment state: the running marginal first takes
        this batch's mean guess (what a training step does). update_alignment=False aligns against the
        marginal as it is and leaves it unchanged (for diagnostics).
        """
        align = partial(self._align, update=update_alignment) if self.distribution_alignment else None
        with algorithm.frozen_batchnorm_stats(model):
            return algorithm.guess_labels(model if forward is None else forward, u_views, self.T, align)

    def _align(self, p: Tensor, update: bool) -> Tensor:
        """Distribution alignment of (B, L) guesses against the running mean of the model's guesses.

        Under torchrun `average` makes it the mean of the global batch, so every process keeps the same
        marginal.
        """
        if update:
            self.guess_marginal.lerp_(self.average(p.mean(0)), 1 - ALIGNMENT_DECAY)
        return algorithm.align_distribution(p, self.guess_marginal, self.labeled_marginal)

    def mix(self, x: Tensor, p: Tensor, u_views: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """X', p', U', q' of the augmented labelled batch x (B, C, H, W) with one-hot labels p (B, L), views
        u_views (K, B_u, C, H, W) and their guesses q (B_u, L): shapes (B, ...), (B, L), (K*B_u, ...),
        (K*B_u, L).

        mix "all" is the paper's `algorithm.mix_batches`; the ablations MixUp only within X, within U, or
        each within itself, leaving the rest as it is. Draws from the global RNG (randperm, then Beta).
        """
        if self.mix_mode == "all":
            return algorithm.mix_batches(x, p, u_views, q, self.alpha)
        u, qk = u_views.flatten(0, 1), q.repeat(u_views.shape[0], 1)
        mix_x, mix_u = self.mix_mode in ("labeled", "separate"), self.mix_mode in ("unlabeled", "separate")
        if mix_x:
            perm = torch.randperm(x.shape[0], device=x.device)
            x, p = algorithm.mixup(x, p, x[perm], p[perm], self.alpha)
        if mix_u:
            perm = torch.randperm(u.shape[0], device=u.device)
            u, qk = algorithm.mixup(u, qk, u[perm], qk[perm], self.alpha)
        return x, p, u, qk

    def forward_mixed(
        self, model: nn.Module, x_mix: Tensor, u_mix: Tensor, forward: Forward | None = None
    ) -> tuple[Tensor, Tensor]:
        """Logits of X' (B, L) and U' (K*B, L), computed by `forward` (default: `model`) in `bn_mode`.

        concat: one pass over all of X' and U'. Every example of X' and U' is mixed with a partner drawn
        from the whole pool, so the batch statistics of the full batch are those of the mixture the
        official code's interleave aims at; the running statistics come from the full batch instead of one
        third of it. One pass is faster (results/ has the accuracy of both modes).
        interleave: the official code's K+1 passes, each a share of every part, with running statistics
        updated by the first pass only (`model`'s BatchNorm layers are frozen for the others). U' must hold
        K batches of X''s size.
        """
        forward = model if forward is None else forward
        n_x = x_mix.shape[0]
        if self.bn_mode == "concat":
            logits = forward(torch.cat([x_mix, u_mix]))
            return logits[:n_x], logits[n_x:]
        batches = algorithm.interleave([x_mix, *u_mix.split(n_x)], n_x)
        logits = [forward(batches[0])]
        with algorithm.frozen_batchnorm_stats(model):
            logits += [forward(b) for b in batches[1:]]
        logits = algorithm.interleave(logits, n_x)
        return logits[0], torch.cat(logits[1:])

    def loss(
        self, logits_x: Tensor, targets_x: Tensor, logits_u: Tensor, targets_u: Tensor, lambda_u: float | Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(total, L_X, L_U) scalars: L_X + lambda_u * L_U (paper eqs. 2-5, `algorithm.mixmatch_loss`).

        logits_x, targets_x: (B, L) for X'; logits_u, targets_u: (K*B, L) for U'; lambda_u: the weight at
        this step, `lambda_u_at(step)` (the front end's to pass, so that it reports the weight it used).
        """
        return algorithm.mixmatch_loss(logits_x, targets_x, logits_u, targets_u, lambda_u)
