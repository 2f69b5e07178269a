"""Batched image augmentation on the data's own device: uint8 (N, C, H, W) in, normalised float out.

The paper's augmentation is a random horizontal flip and a random crop after reflect-padding by 4
pixels. Both are one gather here: each output pixel reads a source pixel whose row and column are
shifted (and mirrored) per example, so there is no per-image Python and no padded copy.

The seed implementation's augmentation (`--augment fastai`) is fastai's `aug_transforms()` with its defaults:
a flip, a rotation of up to 10 degrees, a zoom of up to 1.1 and a perspective warp of 0.2, each affine part with
probability 0.75, through one bilinear resampling with reflection at the borders; then brightness and contrast
changes of up to 0.2 in logit space, each with probability 0.75 (`fastai_augment`, batched as fastai does).

The strong augmentation of augmentation anchoring (ReMixMatch) and FixMatch adds torchvision's RandAugment
and a Cutout of half the image's side on top of the weak augmentation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

FAMILIES = ("crop-flip", "fastai")
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


def _kept(values: Tensor, p: float, neutral: float) -> Tensor:
    """`values` where a draw with probability p keeps them, else `neutral` (fastai's _draw_mask)."""
    return torch.where(torch.rand_like(values) < p, values, torch.full_like(values, neutral))


def _perspective(coords: Tensor, magnitude: float, p: float) -> Tensor:
    """fastai's Warp on a sampling grid (N, H, W, 2): the corners of [-1, 1]^2 move by up to `magnitude` in x and
    y (each with probability p), and the homography between the two squares is applied to every coordinate."""
    n = coords.shape[0]
    x_t = _kept(coords.new_empty(n).uniform_(-magnitude, magnitude), p, 0.0)
    y_t = _kept(coords.new_empty(n).uniform_(-magnitude, magnitude), p, 0.0)
    orig = coords.new_tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]]).expand(n, 4, 2)
    targ = torch.stack(
        [torch.stack([-1 - y_t, -1 - x_t], -1), torch.stack([-1 + y_t, 1 + x_t], -1),
         torch.stack([1 + y_t, -1 + x_t], -1), torch.stack([1 - y_t, 1 - x_t], -1)], 1
    )
    # fastai's find_coeffs: the 8 coefficients mapping targ onto orig, from two equations per corner.
    one, zero = torch.ones_like(x_t), torch.zeros_like(x_t)
    rows = []
    for i in range(4):
        tx, ty, ox, oy = targ[:, i, 0], targ[:, i, 1], orig[:, i, 0], orig[:, i, 1]
        rows.append(torch.stack([tx, ty, one, zero, zero, zero, -ox * tx, -ox * ty], -1))
        rows.append(torch.stack([zero, zero, zero, tx, ty, one, -oy * tx, -oy * ty], -1))
    coeffs = torch.linalg.solve(torch.stack(rows, 1), orig.reshape(n, 8, 1))
    matrix = torch.cat([coeffs, torch.ones_like(coeffs[:, :1])], 1).view(n, 3, 3)
    flat = coords.reshape(n, -1, 2)
    mapped = flat @ matrix[..., :2].transpose(1, 2) + matrix[..., 2].unsqueeze(1)
    return (mapped[..., :2] / mapped[..., 2:]).view_as(coords)


def fastai_augment(images: Tensor, flip: bool = True, p_affine: float = 0.75, p_lighting: float = 0.75) -> Tensor:
    """fastai's aug_transforms() with its defaults on uint8 (N, C, H, W): float (N, C, H, W) in [0, 1].

    Affine: a horizontal flip (p 0.5, where `flip`), a rotation of U(-10, 10) degrees and a zoom of U(1, 1.1) about a
    random centre (each with p_affine), composed into one matrix, and a perspective warp of magnitude 0.2 (p_affine)
    on the sampling grid; one bilinear resampling with reflection padding and align_corners, as fastai's
    AffineCoordTfm. Lighting: sigmoid((logit(x) + logit(b)) * c) with brightness b ~ U(0.4, 0.6) and contrast c =
    exp(U(log 0.8, -log 0.8)), each with p_lighting (fastai's Brightness and Contrast at max_lighting 0.2). Draws
    from the global RNG (fastai/vision/augment.py: flip_mat, rotate_mat, zoom_mat, _WarpCoord, _BrightnessLogit,
    _ContrastLogit).
    """
    x = images.float().div_(255)
    n, device = x.shape[0], x.device
    sign = torch.where(torch.rand(n, device=device) < 0.5, -1.0, 1.0) if flip else torch.ones(n, device=device)
    theta = _kept(torch.empty(n, device=device).uniform_(-10, 10), p_affine, 0.0) * (math.pi / 180)
    scale = 1 / _kept(torch.empty(n, device=device).uniform_(1.0, 1.1), p_affine, 1.0)
    col = (1 - scale) * (2 * torch.rand(n, device=device) - 1)
    row = (1 - scale) * (2 * torch.rand(n, device=device) - 1)
    zero, one = torch.zeros(n, device=device), torch.ones(n, device=device)

    def matrices(*rows: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        return torch.stack([torch.stack(r, -1) for r in (*rows, (zero, zero, one))], 1)

    affine = (
        matrices((sign, zero, zero), (zero, one, zero))
        @ matrices((theta.cos(), theta.sin(), zero), (-theta.sin(), theta.cos(), zero))
        @ matrices((scale, zero, col), (zero, scale, row))
    )
    grid = F.affine_grid(affine[:, :2], list(x.shape), align_corners=True)
    grid = _perspective(grid, magnitude=0.2, p=p_affine)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    brightness = _kept(torch.empty(n, device=device).uniform_(0.4, 0.6), p_lighting, 0.5)
    contrast = _kept(torch.empty(n, device=device).uniform_(math.log(0.8), -math.log(0.8)), p_lighting, 0.0).exp()
    logits = torch.logit(x.clamp(1e-7, 1 - 1e-7)) + torch.logit(brightness).view(-1, 1, 1, 1)
    return torch.sigmoid(logits * contrast.view(-1, 1, 1, 1))


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
    """uint8 (N, C, H, W) -> float32 (x/255 - mean)/std, or float images in [0, 1] -> (x - mean)/std; mean, std:
    (C,)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = images.to(dtype=torch.float32, memory_format=memory_format, copy=True)
    if not images.is_floating_point():
        x.div_(255)
    return x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))


class Augmenter:
    """The training-time augmentation of one data set, on the data's device: the paper's crop/flip (family
    "crop-flip", the reflect padding `pad` and the flip `flip`) or the seed's fastai transforms (family "fastai",
    `fastai_augment`, with the flip where `flip`), then normalisation."""

    def __init__(
        self, mean: Tensor, std: Tensor, pad: int, flip: bool, channels_last: bool = False, family: str = "crop-flip"
    ):
        if family not in FAMILIES:
            raise ValueError(f"unknown augmentation {family!r}; choose one of {', '.join(FAMILIES)}")
        self.mean, self.std, self.pad, self.flip, self.channels_last = mean, std, pad, flip, channels_last
        self.family = family
        self.randaugment = v2.RandAugment()  # two of 14 operations at magnitude 9 of 31, as torchvision's default

    def weak(self, images: Tensor) -> Tensor:
        """The family's augmentation of uint8 (N, C, H, W), not normalised: uint8 for crop-flip, float in [0, 1]
        for fastai."""
        if self.family == "fastai":
            return fastai_augment(images, self.flip)
        return crop_flip(images, self.pad, self.flip)

    def __call__(self, images: Tensor) -> Tensor:
        """uint8 (N, C, H, W) -> augmented, normalised float (N, C, H, W)."""
        return normalize(self.weak(images), self.mean, self.std, self.channels_last)

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
        """K strongly augmented views of each image: the weak augmentation, RandAugment (one draw per
        RANDAUGMENT_GROUP images), Cutout of half the side, then normalisation. uint8 (B, C, H, W) -> (K, B, C, H,
        W). Draws from the global RNG. Used by FixMatch and --augmentation-anchoring."""
        x = self.weak(images.repeat(k, 1, 1, 1))
        if x.is_floating_point():  # RandAugment's posterize and solarize want 8-bit pixels
            x = x.mul(255).round_().to(torch.uint8)
        x = torch.cat([self.randaugment(group) for group in x.split(RANDAUGMENT_GROUP)])
        x = cutout(x, x.shape[-1] // 2)
        return normalize(x, self.mean, self.std, self.channels_last).unflatten(0, (k, images.shape[0]))

    def plain(self, images: Tensor) -> Tensor:
        """Normalisation only, for evaluation."""
        return normalize(images, self.mean, self.std, self.channels_last)
