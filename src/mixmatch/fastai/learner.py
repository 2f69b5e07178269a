"""A fastai Learner set up as the paper and the library's Trainer, with the MixMatch and EMA callbacks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.optimizer import Adam
from torch import Tensor

from ..config import PAPER_RAMPUP_STEPS
from ..models import build_model
from .callback import EMACallback, MixMatchCallback, images_of


def _input_shape(dls: DataLoaders, unlabeled: Any) -> tuple[int, int]:
    """(channels, image size) from the unlabelled pool if it is a tensor, else from one training item."""
    if isinstance(unlabeled, Tensor):
        return int(unlabeled.shape[1]), int(unlabeled.shape[-1])
    x = images_of(dls.train_ds[0]) if hasattr(dls, "train_ds") else images_of(dls.one_batch())[0]
    return int(x.shape[0]), int(x.shape[-1])


def mixmatch_learner(
    dls: DataLoaders,
    unlabeled: Tensor | Iterable[Any] | None,
    arch: str = "wrn28_2",
    augment: Callable[[Tensor], Tensor] | None = None,
    K: int = 2,
    T: float = 0.5,
    alpha: float = 0.75,
    lambda_u: float = 75.0,
    rampup_steps: int = PAPER_RAMPUP_STEPS,
    ema_decay: float = 0.999,
    num_classes: int | None = None,
    in_channels: int | None = None,
    image_size: int | None = None,
    wd: float = 0.02,
    cbs: Sequence[Callback] = (),
    mix: str = "all",
    bn_mode: str = "concat",
    distribution_alignment: bool = False,
    labeled_marginal: Tensor | None = None,
    ema_warmup: bool = True,
    **learner_kwargs: Any,
) -> Learner:
    """A Learner set up as the paper (and the library's Trainer): model `arch` from
    `mixmatch.models.build_model`, Adam (beta1 0.9, beta2 0.999, eps 1e-8, as torch's and the official
    code's) with decoupled weight decay `wd` on conv/linear weights only (fastai's default leaves
    BatchNorm and biases undecayed, and applies w *= 1 - lr*wd, the Trainer's form), cross-entropy and
    accuracy for validation, `MixMatchCallback(unlabeled, augment, K, T, alpha, lambda_u, rampup_steps, mix,
    bn_mode, distribution_alignment, labeled_marginal)` and, if ema_decay > 0,
    `EMACallback(ema_decay, warmup=ema_warmup)`.

    unlabeled: see `MixMatchCallback` (an image tensor (N, C, H, W) or a loader). None builds the same
        Learner without MixMatch: the labelled-only baseline, trained and evaluated the same way.
    num_classes, in_channels, image_size: for the model; by default dls.c and the shape of the images.
    learner_kwargs go to `Learner` (e.g. path, lr, opt_func, metrics, loss_func).
    """
    if num_classes is None:
        num_classes = int(dls.c)
    if in_channels is None or image_size is None:
        channels, size = _input_shape(dls, unlabeled)
        in_channels, image_size = in_channels or channels, image_size or size
    model = build_model(arch, num_classes, in_channels, image_size)
    callbacks: list[Callback] = list(cbs)
    if unlabeled is not None:
        callbacks.append(
            MixMatchCallback(
                unlabeled,
                augment=augment,
                K=K,
                T=T,
                alpha=alpha,
                lambda_u=lambda_u,
                rampup_steps=rampup_steps,
                mix=mix,
                bn_mode=bn_mode,
                distribution_alignment=distribution_alignment,
                labeled_marginal=labeled_marginal,
            )
        )
    if ema_decay > 0:
        callbacks.append(EMACallback(ema_decay, warmup=ema_warmup))
    learner_kwargs.setdefault("loss_func", CrossEntropyLossFlat())
    learner_kwargs.setdefault("metrics", accuracy)
    learner_kwargs.setdefault("opt_func", partial(Adam, mom=0.9, sqr_mom=0.999, eps=1e-8))
    learner_kwargs.setdefault("lr", 2e-3)
    return Learner(dls, model, wd=wd, cbs=callbacks, **learner_kwargs)
