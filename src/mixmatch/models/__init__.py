"""Model registry: build a model by name for a data set's shape."""

from __future__ import annotations

from torch import nn

from .cnn import SmallCNN
from .wrn import WideResNet, wrn10_1, wrn10_2, wrn28_2

ARCHITECTURES = ("wrn28_2", "wrn10_2", "wrn10_1", "cnn")


def build_model(arch: str, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """A freshly initialised model; raises ValueError for an unknown name."""
    if arch == "wrn28_2":
        return wrn28_2(num_classes, in_channels)
    if arch == "wrn10_1":
        return wrn10_1(num_classes, in_channels)
    if arch == "wrn10_2":
        return wrn10_2(num_classes, in_channels)
    if arch == "cnn":
        return SmallCNN(num_classes, in_channels, image_size)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


__all__ = ["ARCHITECTURES", "SmallCNN", "WideResNet", "build_model", "wrn10_1", "wrn10_2", "wrn28_2"]
