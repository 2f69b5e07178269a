"""The small CNN of the seed's MNIST demo: two convolution blocks and a linear head."""

from __future__ import annotations

from torch import Tensor, nn


class SmallCNN(nn.Module):
    """conv(32)-BN-leakyReLU-maxpool, conv(64)-BN-leakyReLU-maxpool, flatten, linear.

    BatchNorm is there because MixMatch's label guessing relies on batch statistics in training mode
    (as the official code's models do). Each block pools before its leaky ReLU: a non-decreasing function
    commutes with max, so the output is the same while the activation touches a quarter of the elements.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, width: int = 32):
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out, momentum=0.01),
                nn.MaxPool2d(2),
                nn.LeakyReLU(0.1, inplace=True),
            )

        self.features = nn.Sequential(block(in_channels, width), block(width, 2 * width), nn.Flatten())
        side = image_size // 4
        self.classifier = nn.Linear(2 * width * side * side, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
