"""The data set type every loader returns (`ImageDataset`: uint8 image tensors, labels, class names) and
`DataError`, the error of data a user can fix."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


class DataError(ValueError):
    """A problem with the data or the split that the user can fix; its message is one line."""


@dataclass
class ImageDataset:
    name: str
    train_images: Tensor  # (N, C, H, W) uint8
    train_labels: Tensor  # (N,) int64
    test_images: Tensor
    test_labels: Tensor
    classes: list[str]
    extra_unlabeled: Tensor | None = None  # (M, C, H, W) uint8 images that have no label at all
    # Image folders only: each training image's path relative to the folder, so that split files can name
    # images rather than indices; their labels need not be balanced over the classes.
    files: list[str] | None = None
    # What the test split holds: "test" (the data's own) or "validation" (training images held out by
    # --val-fraction), so that a tuning run's accuracy is never reported as a test accuracy.
    evaluation: str = "test"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    def channel_stats(self) -> tuple[Tensor, Tensor]:
        """Per-channel mean and std of the training images, in [0, 1] units: (C,), (C,)."""
        n_pixels = self.train_images.shape[0] * self.train_images.shape[2] * self.train_images.shape[3]
        means, stds = [], []
        for c in range(self.train_images.shape[1]):
            channel = self.train_images[:, c]
            total = channel.sum(dtype=torch.float64)
            squares = (channel.to(torch.float64) ** 2).sum()
            mean = total / n_pixels
            means.append(mean / 255)
            stds.append(((squares / n_pixels - mean**2).clamp_min(1e-12)).sqrt() / 255)
        return torch.stack(means).float(), torch.stack(stds).float()
