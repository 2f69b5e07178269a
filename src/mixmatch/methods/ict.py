"""Interpolation Consistency Training (Verma et al., 2019, arXiv:1903.03825), as google-research/mixmatch ict.py
computes it.

One augmented view of each unlabelled image is mixed with the batch in reverse order, lambda' = max(lambda,
1 - lambda), lambda ~ Beta(alpha, alpha); the EMA teacher's softmax of the two views, mixed alike, is the target of
the model's softmax on the mixed image, by squared error, weighted by lambda_u (1000 and alpha 0.75 in
runs/table5.sh) and ramped up over the first 40% of the steps.
"""

from __future__ import annotations

from ..algorithm import frozen_batchnorm_stats, l2_consistency, mixup
from .base import Batch, Context, Losses, WeightedUnlabelledLoss, labelled_loss_and_views
from .mean_teacher import teacher_probabilities


class ICT(WeightedUnlabelledLoss):
    name = "ict"
    needs_teacher = True
    reads = ("lambda_u", "rampup_steps", "alpha")

    def __init__(self, lambda_u: float, rampup_steps: int, alpha: float):
        super().__init__(lambda_u, rampup_steps)
        self.alpha = alpha

    def batch_loss(self, ctx: Context, batch: Batch) -> Losses:
        loss_x, views = labelled_loss_and_views(ctx, batch, 1)
        u = views[0]
        target = teacher_probabilities(ctx, u)
        mixed_u, mixed_target = mixup(u, target, u.flip(0), target.flip(0), self.alpha)
        with frozen_batchnorm_stats(ctx.model), ctx.autocast():
            loss_u = l2_consistency(ctx.forward(mixed_u), mixed_target)
        return Losses(loss_x + self.lambda_u_at(ctx.step) * loss_u, loss_x.detach(), loss_u.detach())
