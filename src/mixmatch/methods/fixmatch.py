"""FixMatch (Sohn et al., 2020, arXiv:2001.07685), as google-research/fixmatch fixmatch.py computes it; not in the
MixMatch paper, the method a user would pick instead today.

Each step draws mu unlabelled images per labelled one. A weak view of each (the run's flip and crop) is pseudo-
labelled by the model's argmax where its softmax reaches the threshold (0.95); the cross-entropy of a strong view of
the same image (the weak augmentation, RandAugment and a Cutout of half the side) against that label is averaged over
all unlabelled images (the unconfident count as zero) and added with weight lambda_u (1), without ramp-up. The
labelled batch and both views go through the model in one pass, as the official file's interleaved batch does, so
BatchNorm sees them all. The official strong augmentation is CTAugment; the paper reports RandAugment beside it, and
RandAugment is what this library has. Its optimiser is SGD with Nesterov momentum at lr 0.03 and a cosine schedule
(config.METHOD_DEFAULTS).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Batch, Context, Losses, WeightedUnlabelledLoss
from .pseudo_label import confident_cross_entropy


class FixMatch(WeightedUnlabelledLoss):
    name = "fixmatch"
    reads = ("lambda_u", "threshold", "mu")
    in_paper = False

    def __init__(self, lambda_u: float, threshold: float, mu: int):
        super().__init__(lambda_u, rampup_steps=0)
        self.threshold, self.unlabeled_ratio = threshold, mu

    def batch_loss(self, ctx: Context, batch: Batch) -> Losses:
        x, weak = ctx.augment.batch_and_views(batch.x, batch.u, 1)
        strong = ctx.augment.strong_views(batch.u, 1)
        n_x, n_u = x.shape[0], batch.u.shape[0]
        with ctx.autocast():
            logits = ctx.forward(torch.cat([x, weak[0], strong[0]]))
        logits_x, logits_weak, logits_strong = logits.split([n_x, n_u, n_u])
        loss_x = F.cross_entropy(logits_x.float(), batch.y)
        loss_u = confident_cross_entropy(logits_strong, logits_weak, self.threshold)
        return Losses(loss_x + self.lambda_u_at(ctx.step) * loss_u, loss_x.detach(), loss_u.detach())
