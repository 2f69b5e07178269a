"""What every method is to the Trainer: a loss on the batches it is handed, and the state it carries between steps.

The Trainer keeps the loop, the data, the optimiser and schedule, the EMA, checkpoints, budgets and grids; it draws
a `Batch` each step and asks the run's `Method` for its `Losses`, lending it a `Context`: the model, its forward
pass, the EMA teacher, the augmentation and the run's precision. As the official code has one file per method over
one trainer (google-research/mixmatch: mixmatch.py, pi_model.py, ...), each method is one module of this package.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..algorithm import linear_rampup

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..augment import Augmenter
    from ..config import TrainConfig


class Losses(NamedTuple):
    """A step's loss for backward, and its two parts detached for the log: L_X on the labelled batch and L_U on
    the unlabelled one (before its weight lambda_u), scalars."""

    total: Tensor
    supervised: Tensor
    unsupervised: Tensor


@dataclass
class Batch:
    """One step's images as drawn, not yet augmented, on the run's device.

    x: (B, C, H, W) uint8 labelled images; y: (B,) int64 class indices; u: (mu*B, C, H, W) uint8 unlabelled images,
    None for a method that uses none.
    """

    x: Tensor
    y: Tensor
    u: Tensor | None = None


class Context(Protocol):
    """What the Trainer lends a method for a step (mixmatch.training.trainer.Trainer is one)."""

    model: nn.Module  # the model being trained, in training mode
    forward: Callable[[Tensor], Tensor]  # its forward pass as the run computes it (DistributedDataParallel, compiled)
    augment: Augmenter  # the run's augmentation: weak views, strong views, normalisation
    step: int  # steps done before this one

    @property
    def teacher(self) -> nn.Module | None:
        """The EMA of the weights (None with --ema-decay 0)."""

    @property
    def num_classes(self) -> int: ...

    def autocast(self) -> contextlib.AbstractContextManager:
        """The run's precision (bf16 autocast or none) for forward passes."""


class Method:
    """A method's settings (from a TrainConfig), its loss on a batch and its state.

    Subclasses set `name` (the --method value), `reads` (the TrainConfig fields it uses beyond the shared
    ones of the trainer, so that a flag no method of a run reads is named), and implement `batch_loss`.
    `uses_unlabeled`: the Trainer draws `unlabeled_ratio` * B unlabelled images a step; `all_labels`: it
    labels every training image, not the labelled subset (fully supervised); `in_paper`: in MixMatch's
    comparison (its table 1 and figure 2); `needs_teacher`: the Context's teacher (the EMA) must exist.
    """

    name: ClassVar[str]
    reads: ClassVar[tuple[str, ...]] = ()
    uses_unlabeled: ClassVar[bool] = True
    all_labels: ClassVar[bool] = False
    in_paper: ClassVar[bool] = True
    needs_teacher: ClassVar[bool] = False
    unlabeled_ratio: int = 1

    @classmethod
    def from_config(
        cls,
        config: TrainConfig,
        *,
        labeled_y: Tensor | None = None,
        num_classes: int | None = None,
        average: Callable[[Tensor], Tensor] | None = None,
    ) -> Method:
        """The method of a resolved TrainConfig. labeled_y (n,): the labelled subset's classes, and num_classes,
        for a method that aligns to their distribution; average: the mean over processes under torchrun."""
        return cls()

    def batch_loss(self, ctx: Context, batch: Batch) -> Losses:
        """The step's losses, with the graph for backward."""
        raise NotImplementedError

    def lambda_u_at(self, step: int) -> float:
        """The weight of the unsupervised loss at step `step`, as the loss uses it (0 for a method without one)."""
        return 0.0

    def state_dict(self) -> dict[str, Any]:
        """What changes during a run beyond the model, the EMA and the optimiser (a checkpoint holds it)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict`."""


def zero_like(loss: Tensor) -> Tensor:
    """A zero scalar on `loss`'s device, for the part of the loss a method does not have."""
    return torch.zeros((), device=loss.device)


def labelled_loss_and_views(ctx: Context, batch: Batch, k: int) -> tuple[Tensor, Tensor]:
    """The labelled batch's cross-entropy from the step's first forward pass (`labelled_loss`), and k augmented
    views (k, B_u, C, H, W) of the unlabelled images, all augmented in one call."""
    x, views = ctx.augment.batch_and_views(batch.x, batch.u, k)
    return labelled_loss(ctx, x, batch.y), views


def labelled_loss(ctx: Context, x: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy of the augmented labelled batch x (B, C, H, W) with classes y (B,), from the step's first
    forward pass: the one pass that moves BatchNorm's running statistics. The official baselines collect their
    BatchNorm updates after this call alone (pi_model.py: "Take only first call to update batch norm"), so a
    method runs its unlabelled passes under `algorithm.frozen_batchnorm_stats` after it."""
    with ctx.autocast():
        logits = ctx.forward(x)
    return F.cross_entropy(logits.float(), y)



class WeightedUnlabelledLoss(Method):
    """A method whose unlabelled loss is weighted by lambda_u, ramped up linearly over `rampup_steps` (the
    baselines' warmup_pos share of the steps, config.METHOD_RAMPUP_SHARE): the shared part of the baselines."""

    reads: ClassVar[tuple[str, ...]] = ("lambda_u", "rampup_steps")

    def __init__(self, lambda_u: float, rampup_steps: int):
        if lambda_u < 0:
            raise ValueError(f"lambda_u must be >= 0, got {lambda_u}")
        self.lambda_u, self.rampup_steps = lambda_u, rampup_steps

    @classmethod
    def from_config(cls, config: TrainConfig, **context: Any) -> Method:
        return cls(**{name: getattr(config, name) for name in cls.reads})

    def lambda_u_at(self, step: int) -> float:
        return self.lambda_u * linear_rampup(step, self.rampup_steps)
