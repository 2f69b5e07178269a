"""Virtual Adversarial Training (Miyato et al., 2018, arXiv:1704.03976), as google-research/mixmatch vat.py and
third_party/vat_utils.py compute it.

On one augmented view of each unlabelled image, one power iteration from a random direction finds the direction in
which the model's prediction changes most; the image moved by vat_epsilon (6) along it is trained towards the clean
prediction with KL(perturbed || clean), the clean prediction held fixed, weighted by lambda_u (0.3) and ramped up over
the first 40% of the steps; the entropy of the clean prediction is minimised beside it, weighted by entropy_weight
(0.06), from the first step.

The power iteration is the product of the KL's Hessian with the random direction, estimated as vat_utils does by
the gradient at a finite step xi along it, in float32. vat_utils' xi is 1e-6, and at that step float32 loses the
product to rounding: the gradient is about as aligned with the product as a random vector (docs/methods.md, measured
by `python bench/vat_xi.py`). At 1e-2 (in the official units, beside an epsilon of 6) the estimate is the product,
and that is the step here: the direction the official code means.

The official images are in [-1, 1]; ours enter the model normalised per channel, (x/255 - mean) / std. Directions
are drawn and normalised in the official units and moved into ours (divided by 2 std), so that vat_epsilon means
what the official flag means.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..algorithm import frozen_batchnorm_stats
from .base import Batch, Context, Losses, WeightedUnlabelledLoss, labelled_loss_and_views

XI = 1e-2  # the power iteration's finite step, in the official [-1, 1] units (vat_utils: 1e-6; see above)


def unit_directions(d: Tensor) -> Tensor:
    """Each example of d (N, ...) divided by its largest absolute value, then by its L2 norm (vat_utils'
    get_normalized_vector, with its 1e-12 and 1e-6)."""
    dims = tuple(range(1, d.dim()))
    d = d / (1e-12 + d.abs().amax(dims, keepdim=True))
    return d / (1e-6 + d.square().sum(dims, keepdim=True)).sqrt()


def kl_from_logits(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """KL(p || q) of the categorical distributions of p_logits and q_logits (N, L): (N,)."""
    p_log = F.log_softmax(p_logits.float(), -1)
    return (p_log.exp() * (p_log - F.log_softmax(q_logits.float(), -1))).sum(-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution of each row of logits (N, L): (N,)."""
    log_p = F.log_softmax(logits.float(), -1)
    return -(log_p.exp() * log_p).sum(-1)


class VAT(WeightedUnlabelledLoss):
    name = "vat"
    reads = ("lambda_u", "rampup_steps", "vat_epsilon", "entropy_weight")

    def __init__(self, lambda_u: float, rampup_steps: int, vat_epsilon: float, entropy_weight: float):
        super().__init__(lambda_u, rampup_steps)
        self.epsilon, self.entropy_weight = vat_epsilon, entropy_weight

    def perturbation(self, ctx: Context, u: Tensor) -> Tensor:
        """The adversarial perturbation of normalised images u (N, C, H, W), in the model's input units: the unit
        direction (vat_utils.get_normalized_vector, in the official [-1, 1] units) of the gradient of
        KL(clean || perturbed) at a step of XI along a random direction, times vat_epsilon. Runs the model itself
        (not its DistributedDataParallel wrapper: the gradient is the input's alone) twice more, in float32."""
        to_input = 1 / (2 * ctx.augment.std.view(1, -1, 1, 1).to(u.device))  # [-1, 1] units -> (x - mean) / std
        d = (XI * unit_directions(torch.randn_like(u, dtype=torch.float32))).requires_grad_(True)
        image = u.detach().float()
        with torch.no_grad():
            clean = ctx.model(image)
        perturbed = ctx.model(image + d * to_input)
        (grad,) = torch.autograd.grad(kl_from_logits(clean, perturbed).mean(), d)
        return (self.epsilon * unit_directions(grad) * to_input).to(u.dtype)

    def batch_loss(self, ctx: Context, batch: Batch) -> Losses:
        loss_x, views = labelled_loss_and_views(ctx, batch, 1)
        u = views[0]
        with frozen_batchnorm_stats(ctx.model):
            with ctx.autocast():
                clean = ctx.forward(u)
            r = self.perturbation(ctx, u)
            with ctx.autocast():
                student = ctx.forward(u + r)
        loss_u = kl_from_logits(student, clean.detach()).mean()
        entropy = entropy_from_logits(clean).mean()
        total = loss_x + self.lambda_u_at(ctx.step) * loss_u + self.entropy_weight * entropy
        return Losses(total, loss_x.detach(), loss_u.detach())
