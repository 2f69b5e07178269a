"""Exponential moving average of a model's weights: the model the paper evaluates (decay 0.999)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class EMA(nn.Module):
    """A frozen copy of a model that follows it: e <- decay * e + (1 - decay) * w after every `update`.

    Floating-point parameters and buffers (BatchNorm's running statistics) are averaged; integer buffers
    (num_batches_tracked) are copied. The average starts from the model's weights at construction, as the
    official code's tf.train.ExponentialMovingAverage does. Unlike torch.optim.swa_utils.AveragedModel,
    `update` never reads a value back to the host (AveragedModel tests `n_averaged == 0` in Python, a CUDA
    sync every step) and averages every tensor in one fused foreach lerp. `updates` counts updates on the
    model's device.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        super().__init__()
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).requires_grad_(False)
        device = next(iter(self._tensors(model)), torch.zeros(())).device
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64, device=device))

    @staticmethod
    def _tensors(model: nn.Module) -> list[Tensor]:
        return [*model.parameters(), *model.buffers()]

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s current weights (same architecture as at construction)."""
        averaged, copied = ([], []), ([], [])
        for e, w in zip(self._tensors(self.module), self._tensors(model), strict=True):
            target = averaged if e.is_floating_point() else copied
            target[0].append(e)
            target[1].append(w.detach())
        if averaged[0]:
            torch._foreach_lerp_(averaged[0], averaged[1], 1 - self.decay)
        if copied[0]:
            torch._foreach_copy_(copied[0], copied[1])
        self.updates += 1
