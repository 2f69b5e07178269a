"""MixMatch for fastai: a training callback, an EMA-of-weights callback, data loaders and a Learner factory.

This module is the only one that imports fastai (an optional extra: ``pip install "mixmatch[fastai]"``;
without it, importing this module raises `FastaiMissingError`, which says so); ``import mixmatch`` never
loads it. The MixMatch step is not repeated here: the callback is an adapter over `mixmatch.step.MixMatchStep`,
the object the library's Trainer uses (guessing, distribution alignment, mixing, forward pass, loss).

    from mixmatch.data import load_dataset, labeled_split
    from mixmatch.fastai import image_dataloaders, mixmatch_learner

    data = load_dataset("digits")
    split = labeled_split(data.train_labels, 50, data.num_classes, seed=0)
    dls = image_dataloaders(data, split, bs=64, iters_per_epoch=250, pad=1, flip=False)
    learn = mixmatch_learner(dls, unlabeled=data.train_images, arch="cnn", rampup_steps=2000)
    learn.fit_one_cycle(20, 2e-3)
    preds, targets = learn.get_preds()          # validated with the EMA weights
    learn.mix_match.steps_done, learn.ema.ema_model   # the callbacks, by fastai's names for them

How a training batch flows (shapes: B labelled, K views, L classes, images (C, H, W)):

    before_batch   xb = (x (B,C,H,W),) yb = (y (B,),) from the Learner's training loader;
                   u (B_u,C,H,W) from the unlabelled source -> K augmented views (K,B_u,C,H,W);
                   q = step.guess(model, views) in training mode with BatchNorm statistics frozen
                   (aligned, if distribution_alignment);
                   X', p', U', q' = step.mix(x, one_hot(y), views, q)   (mix: all, labeled, unlabeled, separate);
                   xb <- (cat(X', U'),)  yb <- (cat(p', q'),)   (soft targets, ((1+K)B, L))
    forward        the Learner's own call of its model on the whole mixed batch, so MixedPrecision,
                   ChannelsLast etc. apply unchanged: one pass (bn_mode='concat'), or with bn_mode='interleave'
                   the model's forward is step.forward_mixed's K+1 interleaved passes for this one call
    loss           step.loss(pred[:B], p', pred[B:], q', step.lambda_u_at(steps_done)): L_X + lambda_u * L_U
    validation     the Learner's own loss_func (cross-entropy) and metrics, on plain batches
"""

from __future__ import annotations


class FastaiMissingError(ModuleNotFoundError):
    """fastai (the optional extra of mixmatch.fastai) is not installed."""


try:
    import fastai.callback.progress  # noqa: F401  (ProgressCallback: the fastprogress bars fastai users expect)
    import fastai.callback.schedule  # noqa: F401  (patches Learner.fit_one_cycle and Learner.lr_find)
    import fastai.learner  # noqa: F401
except ModuleNotFoundError as error:
    # fastai itself, or one of the packages it is installed with, is missing: the same one fix for both.
    missing = (error.name or "").split(".")[0]
    if missing not in ("fastai", "fastcore", "fastprogress", "fasttransform"):
        raise
    raise FastaiMissingError(
        f'mixmatch.fastai needs fastai, which is not installed ({missing} is missing): pip install "mixmatch[fastai]"',
        name=missing,
    ) from None

from .callback import EMACallback, MixMatchCallback  # noqa: E402
from .data import ImageOf, LabelOf, RandomCropFlip, image_dataloaders  # noqa: E402
from .learner import mixmatch_learner  # noqa: E402

__all__ = [
    "EMACallback",
    "FastaiMissingError",
    "ImageOf",
    "LabelOf",
    "MixMatchCallback",
    "RandomCropFlip",
    "image_dataloaders",
    "mixmatch_learner",
]
