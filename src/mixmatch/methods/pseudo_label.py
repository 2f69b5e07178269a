"""Pseudo-Label (Lee, 2013), as google-research/mixmatch pseudo_label.py computes it.

One augmented view of each unlabelled image; where the model's softmax on it exceeds the threshold (0.95) in some
class, that class is its label, and the cross-entropy of those images is averaged over the whole unlabelled batch
(the confident ones weigh, the rest count as zero), weighted by lambda_u (1 in runs/table5.sh) and ramped up over
the first 40% of the steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..algorithm import frozen_batchnorm_stats
from .base import Batch, Context, Losses, WeightedUnlabelledLoss, labelled_loss_and_views


def confident_cross_entropy(logits: Tensor, guess_logits: Tensor, threshold: float) -> Tensor:
    """Mean over the batch of the cross-entropy of `logits` (N, L) against the argmax class of `guess_logits`
    (N, L), counted only where the guess's top probability reaches `threshold` (the rest count as zero): the
    unlabelled loss of Pseudo-Label and FixMatch."""
    probs = torch.softmax(guess_logits.detach().float(), -1)
    confidence, label = probs.max(-1)
    mask = (confidence >= threshold).float()
    return (F.cross_entropy(logits.float(), label, reduction="none") * mask).mean()


class PseudoLabel(WeightedUnlabelledLoss):
    name = "pseudo-label"
    reads = ("lambda_u", "rampup_steps", "threshold")

    def __init__(self, lambda_u: float, rampup_steps: int, threshold: float):
        super().__init__(lambda_u, rampup_steps)
        self.threshold = threshold

    def batch_loss(self, ctx: Context, batch: Batch) -> Losses:
        loss_x, views = labelled_loss_and_views(ctx, batch, 1)
        with frozen_batchnorm_stats(ctx.model), ctx.autocast():
            logits_u = ctx.forward(views[0])
        loss_u = confident_cross_entropy(logits_u, logits_u, self.threshold)
        return Losses(loss_x + self.lambda_u_at(ctx.step) * loss_u, loss_x.detach(), loss_u.detach())
