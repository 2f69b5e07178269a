"""Wide ResNet-28-2 as in the official MixMatch code (google-research/mixmatch, libml/models.py ResNet).

Pre-activation residual units, leaky ReLU 0.1, BatchNorm with TensorFlow's momentum 0.999 (0.001 in
PyTorch's convention) and epsilon 1e-3, convolutions with bias initialised N(0, 2/(k*k*out)), a
Glorot-normal linear head. At k=2 (filters 32): stem 16, stages 32/64/128, 1.47M parameters.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

BN_MOMENTUM = 0.001
BN_EPS = 1e-3
# The CPU-scale models train for thousands of steps, not a million: at 0.001 the running statistics lag the
# weights by ~1000 steps, and a labelled-only WRN-10-1 evaluated with them fell to 15-30% on Fashion-MNIST
# (69% with 0.01 at step 1000; results/tune-fashion-mnist-models).
SHORT_RUN_BN_MOMENTUM = 0.01


def _bn(channels: int, momentum: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=momentum, eps=BN_EPS)


def _act() -> nn.LeakyReLU:
    return nn.LeakyReLU(0.1, inplace=True)


class ResidualUnit(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, stride: int, activate_before_residual: bool, bn_momentum: float
    ):
        super().__init__()
        self.activate_before_residual = activate_before_residual
        self.bn1, self.act1 = _bn(in_channels, bn_momentum), _act()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1)
        self.bn2, self.act2 = _bn(out_channels, bn_momentum), _act()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride) if in_channels != out_channels else None

    def forward(self, x0: Tensor) -> Tensor:
        x = self.act1(self.bn1(x0))
        if self.activate_before_residual:
            x0 = x
        x = self.conv2(self.act2(self.bn2(self.conv1(x))))
        return x + (self.shortcut(x0) if self.shortcut is not None else x0)


class WideResNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        filters: int = 32,
        scales: int = 3,
        repeat: int = 4,
        bn_momentum: float = BN_MOMENTUM,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, 16, 3, padding=1)]
        channels = 16
        for scale in range(scales):
            width = filters << scale
            layers.append(ResidualUnit(channels, width, 2 if scale else 1, scale == 0, bn_momentum))
            layers += [ResidualUnit(width, width, 1, False, bn_momentum) for _ in range(repeat - 1)]
            channels = width
        layers += [_bn(channels, bn_momentum), _act(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0]
                nn.init.normal_(m.weight, std=math.sqrt(2.0 / (k * k * m.out_channels)))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def wrn28_2(num_classes: int = 10, in_channels: int = 3) -> WideResNet:
    """WRN-28-2 (28 layers: 3 stages x 4 units x 2 convs + stem + head), the paper's model."""
    return WideResNet(num_classes, in_channels, filters=32, scales=3, repeat=4)


def wrn28_large(num_classes: int = 10, in_channels: int = 3) -> WideResNet:
    """WRN-28-2's design at 135 filters (widths 135-270-540, about 26M parameters): the paper's large model, which
    its CIFAR-100 result uses (google-research/mixmatch runs/table1.sh, --filters=135)."""
    return WideResNet(num_classes, in_channels, filters=135, scales=3, repeat=4)


def wrn10_1(num_classes: int = 10, in_channels: int = 3) -> WideResNet:
    """WRN-10-1 (3 stages x 1 unit x 2 convs + stem + head, widths 16-32-64): the same design at a CPU's scale,
    about 1/25 of WRN-28-2's arithmetic per image."""
    return WideResNet(num_classes, in_channels, filters=16, scales=3, repeat=1, bn_momentum=SHORT_RUN_BN_MOMENTUM)


def wrn10_2(num_classes: int = 10, in_channels: int = 3) -> WideResNet:
    """WRN-10-2: WRN-10-1 at WRN-28-2's widths 32-64-128, about four times WRN-10-1's arithmetic per image."""
    return WideResNet(num_classes, in_channels, filters=32, scales=3, repeat=1, bn_momentum=SHORT_RUN_BN_MOMENTUM)


__all__ = ["WideResNet", "wrn10_1", "wrn10_2", "wrn28_2", "wrn28_large"]
