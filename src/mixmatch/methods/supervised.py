"""The two baselines every table holds: the labelled subset alone, and every training label.

Both train the same model with the same augmentation, optimiser, schedule and EMA as the semi-supervised methods,
so that the gap between them is what the unlabelled images can close.
"""

from __future__ import annotations

import torch.nn.functional as F

from .base import Batch, Context, Losses, Method, zero_like


class Supervised(Method):
    """Cross-entropy on the augmented labelled batch; the unlabelled images are not used."""

    name = "supervised"
    uses_unlabeled = False

    def batch_loss(self, ctx: Context, batch: Batch) -> Losses:
        with ctx.autocast():
            logits = ctx.forward(ctx.augment(batch.x))
        loss = F.cross_entropy(logits.float(), batch.y)
        return Losses(loss, loss.detach(), zero_like(loss))


class FullySupervised(Supervised):
    """Cross-entropy with every training image labelled: the ceiling of the semi-supervised methods."""

    name = "fully-supervised"
    all_labels = True
