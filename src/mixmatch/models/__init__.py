"""Model registry: build a model by name for a data set's shape: ours (WRN-28-2, WRN-10-x, a small CNN), or a
torchvision or timm backbone (`backbones`)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .cnn import SmallCNN
from .wrn import WideResNet, wrn10_1, wrn10_2, wrn28_2, wrn28_large

# Ours that take (num_classes, in_channels); the small CNN also takes the image size.
WIDE_RESNETS = {"wrn28_2": wrn28_2, "wrn28_large": wrn28_large, "wrn10_2": wrn10_2, "wrn10_1": wrn10_1}
ARCHITECTURES = (*WIDE_RESNETS, "cnn")


def known(arch: str) -> bool:
    """Whether `arch` names one of ours, a torchvision classification model or (timm installed) `timm/<name>`."""
    from .backbones import TIMM, is_backbone

    return arch in ARCHITECTURES or arch.startswith(TIMM) or is_backbone(arch)


def build_model(
    arch: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    *,
    pretrained: bool = False,
    weights_file: str | Path | None = None,
) -> nn.Module:
    """A model for images (in_channels, image_size, image_size) of num_classes classes: ours freshly initialised, or a
    backbone (`backbones.build_backbone`) random, pretrained or from `weights_file`. Raises ValueError for an unknown
    name, BackboneError (a ValueError) for weights that cannot be had or do not fit, or pretrained weights asked of
    one of ours."""
    if arch in ARCHITECTURES:
        if pretrained or weights_file is not None:
            from .backbones import BackboneError

            raise BackboneError(f"{arch} has no pretrained weights: --pretrained and --weights are for torchvision "
                                "and timm backbones (--arch resnet18, timm/...)")
        if arch in WIDE_RESNETS:
            return WIDE_RESNETS[arch](num_classes, in_channels)
        return SmallCNN(num_classes, in_channels, image_size)
    from .backbones import build_backbone, is_backbone, timm_missing, unknown_arch

    missing = timm_missing(arch)
    if missing:
        raise ValueError(missing)
    if not is_backbone(arch):
        raise ValueError(unknown_arch(arch, ARCHITECTURES))
    return build_backbone(arch, num_classes, in_channels, pretrained=pretrained, weights_file=weights_file)


__all__ = [
    "ARCHITECTURES", "SmallCNN", "WideResNet", "build_model", "known", "wrn10_1", "wrn10_2", "wrn28_2", "wrn28_large"
]
