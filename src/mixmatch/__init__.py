"""MixMatch (Berthelot et al., 2019) for PyTorch: the algorithm, models, data, a trainer and a CLI."""

from .algorithm import (
    guess_labels,
    interleave,
    l2_consistency,
    linear_rampup,
    mix_batches,
    mixmatch_loss,
    mixup,
    sharpen,
    soft_cross_entropy,
)
from .config import TrainConfig

__version__ = "0.1.0"

__all__ = [
    "TrainConfig",
    "guess_labels",
    "interleave",
    "l2_consistency",
    "linear_rampup",
    "mix_batches",
    "mixmatch_loss",
    "mixup",
    "sharpen",
    "soft_cross_entropy",
]
