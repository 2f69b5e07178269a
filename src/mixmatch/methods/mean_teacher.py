"""Mean Teacher (Tarvainen and Valpola, 2017, arXiv:1703.01780), as google-research/mixmatch mean_teacher.py
computes it.

The teacher is the EMA of the weights (the evaluated model, decay 0.999), run in training mode on one augmented
view of each unlabelled image; its softmax is the target of the model's on a second view, by squared error,
weighted by lambda_u (50 in runs/table5.sh, with weight decay 0.2) and ramped up over the first 40% of the steps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..algorithm import frozen_batchnorm_stats, l2_consistency
from .base import Batch, Context, Losses, WeightedUnlabelledLoss, labelled_loss_and_views


def teacher_probabilities(ctx: Context, images: Tensor) -> Tensor:
    """The EMA teacher's softmax (N, L) of images (N, C, H, W), in training mode (batch statistics) as the official
    files call it, without gradient and without moving its BatchNorm statistics."""
    teacher = ctx.teacher
    if teacher is None:
        raise ValueError("this method's teacher is the EMA of the weights: --ema-decay must be above 0")
    teacher.train()
    with torch.no_grad(), frozen_batchnorm_stats(teacher), ctx.autocast():
        return torch.softmax(teacher(images).float(), -1)


class MeanTeacher(WeightedUnlabelledLoss):
    name = "mean-teacher"
    needs_teacher = True

    def batch_loss(self, ctx: Context, batch: Batch) -> Losses:
        loss_x, views = labelled_loss_and_views(ctx, batch, 2)
        target = teacher_probabilities(ctx, views[0])
        with frozen_batchnorm_stats(ctx.model), ctx.autocast():
            loss_u = l2_consistency(ctx.forward(views[1]), target)
        return Losses(loss_x + self.lambda_u_at(ctx.step) * loss_u, loss_x.detach(), loss_u.detach())
