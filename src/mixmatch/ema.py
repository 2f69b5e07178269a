"""Exponential moving average of a model's weights: the model the paper evaluates (decay 0.999)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class EMA(nn.Module):
    """A frozen copy of a model that follows it: e <- d * e + (1 - d) * w after every `update`.

    d is `decay` (the paper's plain EMA, `warmup=False`) or, with `warmup`, min(decay, (1 + t) / (10 + t))
    at the t-th update (t = 0, 1, ...), the decay schedule of TensorFlow's
    ExponentialMovingAverage(num_updates=t) and timm's ModelEmaV2 warm-up: early averages forget the
    random initial weights within a few steps (d = 0.1 at t = 0, 0.9 at t = 80) instead of the ~1 / (1 -
    decay) steps a plain EMA needs, so a short run does not evaluate an almost untrained model. From
    t = 8990 on (decay 0.999) d is `decay`.

    Floating-point parameters and buffers (BatchNorm's running statistics) are averaged; integer buffers
    (num_batches_tracked) are copied. The average starts from the model's weights at construction, as the
    official code's tf.train.ExponentialMovingAverage does. Unlike torch.optim.swa_utils.AveragedModel,
    `update` never reads a value back to the host (AveragedModel tests `n_averaged == 0` in Python, a CUDA
    sync every step; the warm-up's d is computed on the device from the counter) and averages every tensor
    in fused foreach operations. `updates` counts updates on the model's device and is part of the
    state_dict, so a resumed run continues the warm-up where it stopped.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        super().__init__()
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.module = copy.deepcopy(model).requires_grad_(False)
        device = next(iter(self._tensors(model)), torch.zeros(())).device
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64, device=device))

    @staticmethod
    def _tensors(model: nn.Module) -> list[Tensor]:
        return [*model.parameters(), *model.buffers()]

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)

    def current_decay(self) -> Tensor:
        """The decay d the next `update` applies, as a 0-dim float32 tensor on the counter's device."""
        if not self.warmup:
            return torch.tensor(self.decay, device=self.updates.device)
        t = self.updates.to(torch.float64)
        return torch.clamp((1 + t) / (10 + t), max=self.decay).float()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s current weights (same architecture as at construction)."""
        averaged, copied = ([], []), ([], [])
        for e, w in zip(self._tensors(self.module), self._tensors(model), strict=True):
            target = averaged if e.is_floating_point() else copied
            target[0].append(e)
            target[1].append(w.detach())
        if averaged[0] and self.updates.device.type == "cpu":
            # On a CPU reading the counter costs nothing: one fused lerp instead of the device-side decay's ten
            # small operations, which weigh on a small model's step.
            t = int(self.updates)
            decay = min(self.decay, (1 + t) / (10 + t)) if self.warmup else self.decay
            torch._foreach_lerp_(averaged[0], averaged[1], 1 - decay)
        elif averaged[0] and self.warmup:
            # e += (1 - d) (w - e) with d a device tensor: foreach_lerp_ takes its weight as a Python
            # number (a tensor would be read back to the host), foreach_mul_ takes a tensor.
            step = torch._foreach_sub(averaged[1], averaged[0])
            torch._foreach_mul_(step, 1 - self.current_decay())
            torch._foreach_add_(averaged[0], step)
        elif averaged[0]:
            torch._foreach_lerp_(averaged[0], averaged[1], 1 - self.decay)
        if copied[0]:
            torch._foreach_copy_(copied[0], copied[1])
        self.updates += 1
