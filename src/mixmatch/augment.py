"""Batched image augmentation on the data's own device: uint8 (N, C, H, W) in, normalised float out.

The paper's augmentation is a random horizontal flip and a random crop after reflect-padding by 4
pixels. Both are one gather here: each output pixel reads a source pixel whose row and column are
shifted (and mirrored) per example, so there is no per-image Python and no padded copy.

The strong augmentation of augmentation anchoring (ReMixMatch, FixMatch) adds torchvision's RandAugment
and a Cutout of half the image's side on top of the same crop and flip.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.transforms import v2

# Images that share one RandAugment draw (its two operations and their directions): one call per image costs
# several times as much on small images.
RANDAUGMENT_GROUP = 8


def _reflect(index: Tensor, size: int) -> Tensor:
    """Map indices in [-size+1, 2*size-2] into [0, size-1] as numpy's 'reflect' padding does."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def crop_flip_indices(
    n: int, height: int, width: int, pad: int, flip: bool, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Row (n, H) and column (n, W) source indices for a random reflect-padded crop and optional flip."""
    rows = torch.arange(height, device=device).expand(n, height)
    cols = torch.arange(width, device=device).expand(n, width)
    if flip:
        mirrored = torch.rand(n, 1, device=device) < 0.5
        cols = torch.where(mirrored, width - 1 - cols, cols)
    if pad > 0:
        dy = torch.randint(-pad, pad + 1, (n, 1), device=device)
        dx = torch.randint(-pad, pad + 1, (n, 1), device=device)
        rows = _reflect(rows + dy, height)
        cols = _reflect(cols + dx, width)
    return rows, cols


def crop_flip(images: Tensor, pad: int, flip: bool) -> Tensor:
    """Random reflect-pad-`pad` crop and (if `flip`) random horizontal flip of each image.

    images: (N, C, H, W) of any dtype; returns a new tensor of the same shape and dtype.
    """
    n, _, height, width = images.shape
    rows, cols = crop_flip_indices(n, height, width, pad, flip, images.device)
    batch = torch.arange(n, device=images.device).view(n, 1, 1)
    # Advanced indexing on dims 0, 2, 3 with a slice on dim 1 puts the channel axis last: (N, H, W, C).
    out = images[batch, :, rows.unsqueeze(2), cols.unsqueeze(1)]
    return out.permute(0, 3, 1, 2)


def cutout(images: Tensor, size: int, fill: int = 127) -> Tensor:
    """Each image with a `size` x `size` square at a random centre (clipped at the borders) set to `fill`
    (FixMatch's Cutout: gray, half the side). images: (N, C, H, W); returns a new tensor."""
    n, _, height, width = images.shape
    top = torch.randint(height, (n, 1, 1, 1), device=images.device) - size // 2
    left = torch.randint(width, (n, 1, 1, 1), device=images.device) - size // 2
    rows = torch.arange(height, device=images.device).view(1, 1, height, 1)
    cols = torch.arange(width, device=images.device).view(1, 1, 1, width)
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return images.masked_fill(inside, fill)


def normalize(images: Tensor, mean: Tensor, std: Tensor, channels_last: bool = False) -> Tensor:
    """uint8 (N, C, H, W) -> float32 (x/255 - mean)/std; mean, std: (C,)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = images.to(dtype=torch.float32, memory_format=memory_format).div_(255)
    return x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))


class Augmenter:
    """The training-time augmentation of one data set: crop/flip then normalise, on the data's device."""

    def __init__(self, mean: Tensor, std: Tensor, pad: int, flip: bool, channels_last: bool = False):
        self.mean, self.std, self.pad, self.flip, self.channels_last = mean, std, pad, flip, channels_last
        self.randaugment = v2.RandAugment()  # two of 14 operations at magnitude 9 of 31, as torchvision's default

    def __call__(self, images: Tensor) -> Tensor:
        """uint8 (N, C, H, W) -> augmented, normalised float (N, C, H, W)."""
        return normalize(crop_flip(images, self.pad, self.flip), self.mean, self.std, self.channels_last)

    def views(self, images: Tensor, k: int) -> Tensor:
        """K independent augmentations of each image in one call: uint8 (B, C, H, W) -> (K, B, C, H, W)."""
        return self(images.repeat(k, 1, 1, 1)).unflatten(0, (k, images.shape[0]))

    def batch_and_views(self, x: Tensor, u: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """A labelled batch and K views of an unlabelled one in one call, as `self(x)` and `self.views(u, k)`
        give them: uint8 (B, C, H, W) and (B_u, C, H, W) -> (B, C, H, W) and (K, B_u, C, H, W).

        One call instead of two halves the small operations that dominate augmentation on small images.
        """
        out = self(torch.cat([x, u.repeat(k, 1, 1, 1)]))
        return out[: x.shape[0]], out[x.shape[0] :].unflatten(0, (k, u.shape[0]))

    def strong_views(self, images: Tensor, k: int) -> Tensor:
        """K strongly augmented views of each image: crop/flip, RandAugment (one draw per RANDAUGMENT_GROUP
        images), Cutout of half the side, then normalisation. uint8 (B, C, H, W) -> (K, B, C, H, W).
        Draws from the global RNG. Used by --augmentation-anchoring."""
        x = crop_flip(images.repeat(k, 1, 1, 1), self.pad, self.flip)
        x = torch.cat([self.randaugment(group) for group in x.split(RANDAUGMENT_GROUP)])
        x = cutout(x, x.shape[-1] // 2)
        return normalize(x, self.mean, self.std, self.channels_last).unflatten(0, (k, images.shape[0]))

    def plain(self, images: Tensor) -> Tensor:
        """Normalisation only, for evaluation."""
        return normalize(images, self.mean, self.std, self.channels_last)
