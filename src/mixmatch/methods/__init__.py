"""The methods a run can train with, one module each, by their --method names (`METHODS`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import METHOD_NAMES
from .base import Batch, Context, Losses, Method
from .fixmatch import FixMatch
from .ict import ICT
from .mean_teacher import MeanTeacher
from .mixmatch import MixMatchStep
from .mixup import MixUp
from .pi_model import PiModel
from .pseudo_label import PseudoLabel
from .supervised import FullySupervised, Supervised
from .vat import VAT

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import Tensor

    from ..config import TrainConfig

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (MixMatchStep, Supervised, FullySupervised, PiModel, PseudoLabel, MixUp, VAT, MeanTeacher, ICT, FixMatch)
}
assert tuple(METHODS) == METHOD_NAMES, "config.METHOD_NAMES lists the registry's methods, in its order"


def build_method(
    config: TrainConfig,
    *,
    labeled_y: Tensor | None = None,
    num_classes: int | None = None,
    average: Callable[[Tensor], Tensor] | None = None,
) -> Method:
    """The method of a resolved TrainConfig (`Method.from_config`)."""
    return METHODS[config.method].from_config(config, labeled_y=labeled_y, num_classes=num_classes, average=average)


__all__ = [
    "ICT", "METHODS", "VAT", "Batch", "Context", "FixMatch", "FullySupervised", "Losses", "MeanTeacher", "Method",
    "MixMatchStep", "MixUp", "PiModel", "PseudoLabel", "Supervised", "build_method",
]
