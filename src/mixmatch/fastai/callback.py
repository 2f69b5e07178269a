"""fastai callbacks: MixMatch's training step over the library's `MixMatchStep`, and an EMA of the weights."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision
from fastai.data.transforms import IntToFloatTensor, compose_tfms
from fastai.torch_core import TensorImage
from torch import Tensor, nn

from ..config import PAPER_RAMPUP_STEPS
from ..ema import EMA
from ..methods.mixmatch import MixMatchStep, class_marginal


def _plain(t: Tensor) -> Tensor:
    """Drop fastai's tensor subclasses (TensorImage, TensorCategory): the algorithm works on plain tensors,
    and mixing a TensorImage with a TensorCategory in one op is what fastai's type dispatch refuses."""
    return t.as_subclass(Tensor) if type(t) is not Tensor else t


def _shape(batch: Tensor) -> str:
    """A batch (B, C, H, W) in words: 'C channels of HxW'."""
    return f"{batch.shape[1]} channel{'' if batch.shape[1] == 1 else 's'} of {batch.shape[2]}x{batch.shape[3]}"


def images_of(batch: Any) -> Tensor:
    """The images of a batch that may be a tensor, or a tuple/list whose first element is the images."""
    return batch[0] if isinstance(batch, tuple | list) else batch


class MixMatchCallback(Callback):
    """Train a fastai Learner with MixMatch (Berthelot et al., 2019): labelled batches from the Learner's
    training loader, unlabelled batches from `unlabeled_dl`, and the step of the library's Trainer
    (`mixmatch.methods.mixmatch.MixMatchStep`, held as `method`), as fastai's MixHandler is over MixUp.

    unlabeled_dl: where unlabelled images come from, either
        - an image tensor (N, C, H, W): each step draws B images with replacement (B = labelled batch size),
          as the library's Trainer does. Fastest, and lets the pool live on the GPU; or
        - any iterable of batches (a torch or fastai DataLoader): a batch is a tensor (B_u, C, H, W) or a
          tuple/list whose first element is one (labels, if any, are ignored). It is cycled: a new pass
          starts whenever it runs out, so one fastai epoch is as long as the *labelled* loader.
        The images must be raw in the same way as the labelled items (e.g. uint8), because `augment`
        turns each one into K views.
    augment: one augmented, normalised view of an image batch, (B, C, H, W) -> float (B, C, H, W). If it
        has a ``views(images, k) -> (K, B, C, H, W)`` method (`mixmatch.augment.Augmenter` does) that is used
        for all K views in one call; otherwise it is called K times. None (the default) uses the batch
        transforms of the Learner's own training loader (``dls.train.after_batch``), so the unlabelled
        views get exactly the augmentation and normalisation the labelled batches get; the images are
        wrapped as `TensorImage` for fastai's type dispatch.
    K, T, alpha, lambda_u: the paper's views per unlabelled image, sharpening temperature, Beta(alpha, alpha)
        of MixUp and weight of the unlabelled loss.
    rampup_steps: lambda_u grows linearly from 0 to `lambda_u` over this many training batches (paper:
        16384). The count runs on across `fit` calls (like the Trainer's step), except that `lr_find` does
        not advance it. `steps_done` holds it; set it to resume a schedule.
    mix: what MixUp mixes, as the Trainer's --mix: "all" (the paper), "labeled", "unlabeled" or "separate"
        (the ablations of the paper's table 4).
    bn_mode: "concat" (default), the Learner's one forward pass over X' and U'; "interleave", the official
        code's K+1 interleaved passes with BatchNorm's running statistics from the first only: for the
        Learner's call of its model on a mixed batch, the model's `forward` is replaced by those passes
        (an instance attribute, removed right after the prediction). Needs an unlabelled batch as large
        as the labelled one (a tensor pool always gives that).
    distribution_alignment: align the guesses to the class distribution of the labelled data, against a
        running marginal of the guesses (ReMixMatch's; not in MixMatch), as the Trainer's
        --distribution-alignment. The labelled distribution is `labeled_marginal` (L,) if given, else
        counted once, at the first fit, over the items of the training loader (``dls.train_ds``, pairs
        whose second element is the class index; with `image_dataloaders` these are the labelled subset
        repeated to fill an epoch). The running marginal, `method.guess_marginal`, lives across fits;
        `lr_find` leaves it as it was.

    While training, the Learner's `loss_func` is replaced by the MixMatch loss; it is put back after
    training (also when training is cancelled), so validation, `get_preds`, `predict` and later plain
    training use the Learner's own loss function. After each training batch `loss_x`, `loss_u` and
    `lambda_u_now` hold the detached parts of the last loss, and `learn.loss` the total.
    Needs labelled targets as class indices (B,) (fastai's `Categorize`); train metrics are not supported
    (the targets of a MixMatch batch are soft labels for the mixed batch), validation metrics are.
    Raises ValueError for K < 1, T <= 0, alpha < 0, lambda_u < 0, an unknown mix or bn_mode, or a
    labeled_marginal without distribution_alignment.
    """

    # Inner-loop events run on training batches only; validation batches are left as they are.
    run_valid = False
    # After MixedPrecision (order 10) has entered autocast in before_batch, so label guessing runs under
    # the same precision as the forward pass (as the library's Trainer does).
    order = MixedPrecision.order + 1

    def __init__(
        self,
        unlabeled_dl: Tensor | Iterable[Any],
        augment: Callable[[Tensor], Tensor] | None = None,
        K: int = 2,
        T: float = 0.5,
        alpha: float = 0.75,
        lambda_u: float = 75.0,
        rampup_steps: int = PAPER_RAMPUP_STEPS,
        mix: str = "all",
        bn_mode: str = "concat",
        distribution_alignment: bool = False,
        labeled_marginal: Tensor | None = None,
    ):
        if labeled_marginal is not None and not distribution_alignment:
            raise ValueError("labeled_marginal is the target of distribution_alignment=True, which is off")
        if isinstance(unlabeled_dl, Tensor) and unlabeled_dl.ndim != 4:
            raise ValueError(
                f"MixMatchCallback: the unlabelled images (unlabeled_dl, mixmatch_learner's unlabeled) must be a "
                f"batch (N, C, H, W), got a tensor of shape {tuple(unlabeled_dl.shape)}"
            )
        self.method = MixMatchStep(
            K=K, T=T, alpha=alpha, lambda_u=lambda_u, rampup_steps=rampup_steps, mix=mix, bn_mode=bn_mode
        )
        self.unlabeled_dl, self.augment = unlabeled_dl, augment
        self.distribution_alignment, self._given_marginal = distribution_alignment, labeled_marginal
        self.steps_done = 0
        self.loss_x = self.loss_u = self.lambda_u_now = None
        self._unlabeled_iter: Iterator[Any] | None = None
        self._old_lf: Callable[..., Tensor] | None = None  # the Learner's loss_func while ours is installed
        self._n_labeled: int | None = None  # B of the mixed batch waiting for the loss, None when there is none
        self._saved: tuple[int, Tensor | None] | None = None  # steps_done and guess marginal, during lr_find

    # ---- where the unlabelled views come from ------------------------------------------------------

    def _unlabeled_batch(self, batch_size: int, device: torch.device) -> Tensor:
        """Raw unlabelled images (B_u, C, H, W) on `device`."""
        if isinstance(self.unlabeled_dl, Tensor):
            pool = self.unlabeled_dl
            idx = torch.randint(pool.shape[0], (batch_size,), device=pool.device)
            return _plain(pool[idx]).to(device, non_blocking=True)
        if self._unlabeled_iter is None:
            # itertools.cycle would replay the first pass's batches; re-iterating reshuffles a DataLoader.
            self._unlabeled_iter = itertools.chain.from_iterable(_forever(self.unlabeled_dl))
        return _plain(images_of(next(self._unlabeled_iter))).to(device, non_blocking=True)

    def views(self, u: Tensor) -> Tensor:
        """K augmented views of raw images u (B_u, C, H, W): float (K, B_u, C, H, W), as `augment` makes them."""
        augment, K = self.augment, self.method.K
        if augment is None:
            pipeline = getattr(self.dls.train, "after_batch", None)
            if pipeline is None:
                raise ValueError(
                    "MixMatchCallback(augment=None) uses the training loader's batch transforms "
                    "(dls.train.after_batch), and this loader has none: pass augment=..."
                )
            # split_idx=0 explicitly: the training transforms (random crop/flip), whatever split the pipeline
            # was last iterated for (fastai sets it only while a loader iterates, and loaders may share it).
            return torch.stack([_plain(compose_tfms(TensorImage(u), tfms=pipeline.fs, split_idx=0)) for _ in range(K)])
        if hasattr(augment, "views"):
            return _plain(augment.views(u, K))
        return torch.stack([_plain(augment(u)) for _ in range(K)])

    def _labeled_marginal(self) -> Tensor:
        """Class distribution (L,) of the labelled data: `labeled_marginal`, or counted over dls.train_ds."""
        if self._given_marginal is not None:
            return torch.as_tensor(self._given_marginal, dtype=torch.float32)
        try:
            labels = torch.tensor([int(item[1]) for item in self.dls.train_ds])
        except (AttributeError, IndexError, TypeError, ValueError) as error:
            raise ValueError(
                "distribution_alignment counts the classes of the training loader's items (dls.train_ds, "
                f"(input, class index) pairs), which failed here ({error}): pass labeled_marginal=..."
            ) from None
        return class_marginal(labels, int(self.dls.c))

    # ---- the events --------------------------------------------------------------------------------

    def before_fit(self) -> None:
        self._restore()  # in case an exception other than fastai's Cancel* left ours installed
        self._check_pool_scale()
        if self.distribution_alignment and not self.method.distribution_alignment:
            # After TrainEvalCallback (order -10) has moved the model to the loaders' device.
            device = next(self.learn.model.parameters()).device
            self.method.align_to(self._labeled_marginal().to(device))
        # lr_find trains for a few batches and puts the weights back; it must not use up the ramp-up, nor
        # move the running marginal of the guesses.
        marginal = self.method.guess_marginal
        self._saved = None
        if hasattr(self.learn, "lr_finder"):
            self._saved = (self.steps_done, None if marginal is None else marginal.clone())

    def _check_pool_scale(self) -> None:
        """A float pool put through the training loader's own transforms would be scaled twice (IntToFloatTensor
        divides by 255 whatever the type): the views would be near-constant, without a word."""
        pipeline = getattr(getattr(self.dls, "train", None), "after_batch", None)
        divides = pipeline is not None and any(isinstance(t, IntToFloatTensor) for t in pipeline.fs)
        pool = self.unlabeled_dl
        if self.augment is None and divides and isinstance(pool, Tensor) and pool.is_floating_point():
            raise ValueError(
                f"MixMatchCallback: the unlabelled images (unlabeled_dl, mixmatch_learner's unlabeled) are "
                f"{pool.dtype}, and the training loader's IntToFloatTensor divides them by 255 as if "
                "raw: give raw uint8 images, as the labelled items are (e.g. data.train_images), or an augment"
            )

    def before_train(self) -> None:
        if self._old_lf is None:
            self._old_lf, self.learn.loss_func = self.learn.loss_func, self.lf

    def before_batch(self) -> None:
        if len(self.xb) != 1 or len(self.yb) != 1:
            raise ValueError("MixMatchCallback expects batches of one input and one target (class indices)")
        x, y = _plain(self.xb[0]), _plain(self.yb[0])
        u = self._unlabeled_batch(x.shape[0], x.device)
        if self.method.bn_mode == "interleave" and u.shape[0] != x.shape[0]:
            raise ValueError(
                f"bn_mode='interleave' needs unlabelled batches as large as the labelled ones, got {u.shape[0]} "
                f"and {x.shape[0]}"
            )
        try:
            u_views: Tensor | None = self.views(u)
        except RuntimeError:  # the labelled batches' transforms (Normalize's channel stats) refuse other channels
            if u.shape[1] == x.shape[1]:
                raise
            u_views = None
        if u_views is None or u_views.shape[2:] != x.shape[1:]:
            augmented = "" if u_views is None else f", {_shape(u_views[0])} augmented"
            raise ValueError(
                f"MixMatchCallback: the unlabelled images ({_shape(u)} as given{augmented}) do not match the labelled "
                f"batch ({_shape(x)}): give unlabeled_dl (mixmatch_learner's unlabeled) images of the labelled images' "
                "channels and size (the same item transforms, e.g. Resize)"
            )
        q = self.method.guess(self.model, u_views)
        p = F.one_hot(y.long(), q.shape[-1]).to(q.dtype)
        x_mix, p_mix, u_mix, q_mix = self.method.mix(x, p, u_views.to(x.dtype), q)
        self._n_labeled = x_mix.shape[0]
        self.lambda_u_now = self.method.lambda_u_at(self.steps_done)
        self.learn.xb = (torch.cat([x_mix, u_mix]),)
        self.learn.yb = (torch.cat([p_mix, q_mix]),)
        if self.method.bn_mode == "interleave":
            self._interleave_next_forward(self.learn.model, x_mix.shape[0])

    def _interleave_next_forward(self, model: nn.Module, n_labeled: int) -> None:
        """Make the Learner's next call of `model` (on cat(X', U')) the step's interleaved passes."""
        own_forward = model.forward
        method = self.method

        def interleaved(batch: Tensor) -> Tensor:
            return torch.cat(method.forward_mixed(model, batch[:n_labeled], batch[n_labeled:], own_forward))

        model.forward = interleaved

    def after_pred(self) -> None:
        _drop_forward(self.learn.model)

    def lf(self, pred: Tensor, *yb: Tensor) -> Tensor:
        """The MixMatch loss of a mixed batch: pred ((1+K)B, L), yb = (soft targets ((1+K)B, L),) -> ().

        Any other call (validation, or this function left behind by an exception fastai does not report
        to callbacks) gets the Learner's own loss function.
        """
        if self._n_labeled is None or not self.training:
            return self._old_lf(pred, *yb)
        n, targets = self._n_labeled, yb[0]
        self._n_labeled = None
        total, loss_x, loss_u = self.method.loss(pred[:n], targets[:n], pred[n:], targets[n:], self.lambda_u_now)
        self.loss_x, self.loss_u = loss_x.detach(), loss_u.detach()
        return total

    def after_batch(self) -> None:
        self._n_labeled = None
        _drop_forward(self.learn.model)
        self.steps_done += 1

    def after_train(self) -> None:
        self._restore()

    def after_cancel_train(self) -> None:
        self._restore()

    def before_validate(self) -> None:
        # A CancelEpochException skips after_train; validation must still see the Learner's own loss.
        self._restore()

    def after_cancel_fit(self) -> None:
        self._restore()

    def after_fit(self) -> None:
        self._restore()
        if self._saved is not None:
            (self.steps_done, marginal), self._saved = self._saved, None
            if marginal is not None:
                self.method.guess_marginal.copy_(marginal)

    def _restore(self) -> None:
        """The Learner's own loss function and its model's own forward back in place."""
        if self._old_lf is not None:
            self.learn.loss_func, self._old_lf = self._old_lf, None
        self._n_labeled = None
        _drop_forward(self.learn.model)


def _drop_forward(model: nn.Module) -> None:
    """Remove a `forward` set on the model instance (the interleaved passes), uncovering its class's."""
    if "forward" in vars(model):
        del model.forward


def _forever(loader: Iterable[Any]) -> Iterator[Iterable[Any]]:
    """The loader itself, over and over (each pass a fresh iterator); stops with an error if it is empty."""
    while True:
        it = iter(loader)
        try:
            first = next(it)
        except StopIteration:
            raise ValueError("the unlabelled loader yields no batches") from None
        yield itertools.chain([first], it)


class EMACallback(Callback):
    """Keep an exponential moving average of the weights (and buffers) and validate with it.

    The paper evaluates the EMA of the weights (decay 0.999), as the library's Trainer does. After every
    optimiser step the average is updated (mixmatch.ema.EMA, the Trainer's EMA: BatchNorm's running
    statistics are averaged too). The average starts from the weights at the first fit; with `warmup`
    (default) its decay is min(decay, (1 + t) / (10 + t)) at update t, as TensorFlow's and timm's, so a short
    run's EMA is not stuck near the initial weights; `warmup=False` is the paper's plain EMA.

    Validation: with `validate_ema` (default) the averaged weights are copied into `learn.model` at
    `before_validate` and the raw weights put back at `after_validate`. That covers the validation of
    every epoch (so the Recorder's valid_loss / metrics are the EMA model's), `learn.validate()`,
    `learn.get_preds()` and `learn.predict()` for as long as the callback stays attached, while training
    always continues from the raw weights. `ema_model` is the averaged nn.Module itself, and
    `apply_ema()` copies it into `learn.model` for good (e.g. before `learn.export()` or using
    `learn.model` directly); once applied, later fits train from the EMA weights and restart the average.

    The average lives across `fit` calls; `lr_find` neither updates nor uses it (its weights are
    thrown away), `reset()` starts afresh.
    """

    def __init__(self, decay: float = 0.999, validate_ema: bool = True, warmup: bool = True):
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay, self.validate_ema, self.warmup = decay, validate_ema, warmup
        self.ema_model: EMA | None = None
        self._raw: list[Tensor] | None = None  # the raw weights while the EMA ones are swapped in

    def reset(self) -> None:
        """Forget the average; the next fit starts a new one from the model's weights."""
        self._swap_back()
        self.ema_model = None

    @staticmethod
    def _tensors(model: nn.Module) -> list[Tensor]:
        return [*model.parameters(), *model.buffers()]

    def before_fit(self) -> None:
        self._swap_back()
        if hasattr(self.learn, "lr_finder"):
            self.run = False  # fastai sets it back to True after this fit
            return
        if self.ema_model is None:
            self.ema_model = EMA(self.learn.model, self.decay, self.warmup)

    def after_step(self) -> None:
        self.ema_model.update(self.learn.model)

    def before_validate(self) -> None:
        if not self.validate_ema or self.ema_model is None or self.ema_model.updates.item() == 0:
            return
        self._swap_back()
        with torch.no_grad():
            current = self._tensors(self.learn.model)
            self._raw = [t.detach().clone() for t in current]
            for t, e in zip(current, self._tensors(self.ema_model.module), strict=True):
                t.copy_(e)

    def after_validate(self) -> None:
        self._swap_back()

    def before_train(self) -> None:
        self._swap_back()

    def _swap_back(self) -> None:
        """Put the raw weights back if the EMA ones are in the model."""
        if self._raw is None:
            return
        with torch.no_grad():
            for t, r in zip(self._tensors(self.learn.model), self._raw, strict=True):
                t.copy_(r)
        self._raw = None

    def apply_ema(self) -> None:
        """Copy the averaged weights into `learn.model` for good (and start a new average next fit)."""
        if self.ema_model is None:
            raise RuntimeError("no EMA yet: fit the Learner first")
        self._swap_back()
        with torch.no_grad():
            for t, e in zip(self._tensors(self.learn.model), self._tensors(self.ema_model.module), strict=True):
                t.copy_(e)
        self.ema_model = None
