"""MixUp (Zhang et al., 2018, arXiv:1710.09412) with unlabelled images, as google-research/mixmatch mixup.py computes
it.

The augmented labelled batch is mixed with itself in reverse order, lambda' = max(lambda, 1 - lambda), lambda ~
Beta(alpha, alpha) (0.75 in runs/table5.sh), one-hot labels alike; one augmented view of each unlabelled image is
mixed the same way, with the model's own softmax on the unmixed view, without gradient, as its label. Both parts are
soft cross-entropies, added with weight lambda_u (1: the file adds them unweighted) and no ramp-up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..algorithm import frozen_batchnorm_stats, mixup, soft_cross_entropy
from .base import Batch, Context, Losses, WeightedUnlabelledLoss


class MixUp(WeightedUnlabelledLoss):
    name = "mixup"
    reads = ("lambda_u", "alpha")

    def __init__(self, lambda_u: float, alpha: float):
        super().__init__(lambda_u, rampup_steps=0)
        self.alpha = alpha

    def batch_loss(self, ctx: Context, batch: Batch) -> Losses:
        x, views = ctx.augment.batch_and_views(batch.x, batch.u, 1)
        u = views[0]
        p = F.one_hot(batch.y, ctx.num_classes).float()
        mixed_x, mixed_p = mixup(x, p, x.flip(0), p.flip(0), self.alpha)
        with ctx.autocast():  # the first pass: BatchNorm's running statistics come from the mixed labelled batch
            loss_x = soft_cross_entropy(ctx.forward(mixed_x), mixed_p)
        with frozen_batchnorm_stats(ctx.model), ctx.autocast():
            with torch.no_grad():
                q = torch.softmax(ctx.forward(u).float(), -1)
            mixed_u, mixed_q = mixup(u, q, u.flip(0), q.flip(0), self.alpha)
            loss_u = soft_cross_entropy(ctx.forward(mixed_u), mixed_q)
        return Losses(loss_x + self.lambda_u_at(ctx.step) * loss_u, loss_x.detach(), loss_u.detach())
