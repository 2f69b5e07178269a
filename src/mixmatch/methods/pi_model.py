"""The Pi-Model (Laine and Aila, 2017, arXiv:1610.02242), as google-research/mixmatch pi_model.py computes it.

Two augmented views of each unlabelled image; the model's softmax on the first, without gradient, is the target
of its softmax on the second, by squared error (mean over classes and batch), weighted by lambda_u and ramped up
over the first 40% of the steps. The CIFAR-10 run script (runs/table5.sh) sets the weight to 20.
"""

from __future__ import annotations

import torch

from ..algorithm import frozen_batchnorm_stats, l2_consistency
from .base import Batch, Context, Losses, WeightedUnlabelledLoss, labelled_loss_and_views


class PiModel(WeightedUnlabelledLoss):
    name = "pi-model"

    def batch_loss(self, ctx: Context, batch: Batch) -> Losses:
        loss_x, views = labelled_loss_and_views(ctx, batch, 2)
        with frozen_batchnorm_stats(ctx.model), ctx.autocast():
            with torch.no_grad():
                target = torch.softmax(ctx.forward(views[0]).float(), -1)
            loss_u = l2_consistency(ctx.forward(views[1]), target)
        return Losses(loss_x + self.lambda_u_at(ctx.step) * loss_u, loss_x.detach(), loss_u.detach())
