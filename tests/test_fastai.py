"""The fastai integration: MixMatchCallback's loss is mixmatch.algorithm's, and the Learner stays a normal Learner."""

import copy
import math
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("fastai")

from fastai.callback.core import (  # noqa: E402
    Callback,
    CancelEpochException,
    CancelFitException,
    CancelTrainException,
)
from fastai.torch_core import TensorImage  # noqa: E402

from mixmatch import algorithm as A  # noqa: E402
from mixmatch.augment import Augmenter  # noqa: E402
from mixmatch.data import labeled_split, load_dataset  # noqa: E402
from mixmatch.fastai import MixMatchCallback, image_dataloaders, mixmatch_learner  # noqa: E402
from mixmatch.models import build_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def split(digits):
    return labeled_split(digits.train_labels, 50, digits.num_classes, seed=0)


def make_learner(tmp_path, digits, split, iters=4, ema_decay=0.0, **kwargs):
    dls = image_dataloaders(digits, split, bs=16, iters_per_epoch=iters, pad=1, flip=False, device="cpu")
    kwargs.setdefault("unlabeled", digits.train_images)
    learn = mixmatch_learner(dls, arch="cnn", ema_decay=ema_decay, path=tmp_path, **kwargs)
    return learn


class Raise(Callback):
    """Raise `exception` after training batch `at` (counted from 0 within a fit)."""

    run_valid = False

    def __init__(self, exception, at=1):
        self.exception, self.at = exception, at

    def after_batch(self):
        if self.train_iter == self.at:
            raise self.exception()


def test_import_mixmatch_does_not_import_fastai():
    code = "import sys, mixmatch, mixmatch.train, mixmatch.cli; assert 'fastai' not in sys.modules, 'fastai imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


class Capture(Callback):
    """Saves the state just before MixMatchCallback's before_batch of training batch `at`, and the loss."""

    run_valid = False
    order = MixMatchCallback.order - 1

    def __init__(self, at):
        self.at, self.state, self.reported = at, None, None

    def before_batch(self):
        if self.train_iter == self.at:
            self.state = dict(
                x=self.xb[0].as_subclass(torch.Tensor).clone(),
                y=self.yb[0].as_subclass(torch.Tensor).clone(),
                weights=copy.deepcopy(self.learn.model.state_dict()),
                rng=torch.get_rng_state(),
            )

    def after_loss(self):
        if self.train_iter == self.at:
            self.reported = self.learn.loss.item()
            raise CancelFitException()


def test_reported_loss_equals_the_algorithm_on_the_same_batch_and_rng(tmp_path, digits, split):
    mean, std = digits.channel_stats()
    augment = Augmenter(mean, std, pad=1, flip=False)
    # Batch 2 of a 4-step ramp-up: lambda_u = 75 * 2/4, so both parts of the loss count.
    learn = make_learner(tmp_path, digits, split, augment=augment, rampup_steps=4, lambda_u=75.0)
    capture = Capture(at=2)
    learn.fit(1, 1e-3, cbs=capture)
    mm = learn.mix_match
    assert capture.reported is not None and mm.lambda_u_now == 37.5

    s = capture.state
    model = build_model("cnn", 10, 1, 8)
    model.load_state_dict(s["weights"])
    model.train()
    torch.set_rng_state(s["rng"])
    B = s["x"].shape[0]
    u = digits.train_images[torch.randint(digits.train_images.shape[0], (B,))]
    u_views = augment.views(u, 2)
    with A.frozen_batchnorm_stats(model):
        q = A.guess_labels(model, u_views, 0.5)
    p = F.one_hot(s["y"], 10).float()
    x_mix, p_mix, u_mix, q_mix = A.mixmatch(s["x"], p, u_views, q, 0.75)
    logits = model(torch.cat([x_mix, u_mix]))
    total, loss_x, loss_u = A.mixmatch_loss(logits[:B], p_mix, logits[B:], q_mix, 37.5)

    assert loss_u.item() > 0 and loss_x.item() > 0
    assert capture.reported == pytest.approx(total.item(), rel=1e-5)
    assert mm.loss_x.item() == pytest.approx(loss_x.item(), rel=1e-5)
    assert mm.loss_u.item() == pytest.approx(loss_u.item(), rel=1e-5)


def test_default_views_go_through_the_training_loaders_batch_transforms(tmp_path, digits, split):
    """augment=None: the labelled pipeline (crop/flip, IntToFloat, Normalize) makes the unlabelled views."""
    mean, std = digits.channel_stats()
    dls = image_dataloaders(digits, split, bs=16, iters_per_epoch=2, pad=0, flip=False, device="cpu")
    learn = mixmatch_learner(dls, digits.train_images, arch="cnn", K=3, ema_decay=0, path=tmp_path)
    u = digits.train_images[:8]
    views = learn.mix_match.views(u)
    assert views.shape == (3, 8, 1, 8, 8) and type(views) is torch.Tensor
    # No padding and no flip: each view is the plain normalisation, exactly as the library's Augmenter.
    plain = Augmenter(mean, std, pad=0, flip=False).plain(u)
    for view in views:
        torch.testing.assert_close(view, plain)

    dls = image_dataloaders(digits, split, bs=16, iters_per_epoch=2, pad=1, flip=False, device="cpu")
    learn = mixmatch_learner(dls, digits.train_images, arch="cnn", K=2, ema_decay=0, path=tmp_path)
    views = learn.mix_match.views(digits.train_images[:64])
    assert not torch.equal(views[0], views[1])  # independent random crops


def test_lr_find_and_fit_one_cycle(tmp_path, digits, split):
    learn = make_learner(tmp_path, digits, split, iters=5, ema_decay=0.99, rampup_steps=10)
    loss_func = learn.loss_func
    weights = copy.deepcopy(learn.model.state_dict())
    suggestion = learn.lr_find(num_it=10, show_plot=False)
    assert math.isfinite(suggestion.valley) and suggestion.valley > 0
    assert len(learn.recorder.losses) > 0 and all(math.isfinite(float(v)) for v in learn.recorder.losses)
    # lr_find puts the weights back, and neither uses up the ramp-up nor feeds the EMA.
    assert learn.mix_match.steps_done == 0 and learn.ema.ema_model is None
    assert all(torch.equal(weights[k], v) for k, v in learn.model.state_dict().items())
    assert learn.loss_func is loss_func

    learn.fit_one_cycle(2, 2e-3)
    assert learn.loss_func is loss_func
    assert learn.mix_match.steps_done == 10 and learn.mix_match.lambda_u_now == pytest.approx(75 * 9 / 10)
    assert int(learn.ema.ema_model.updates) == 10
    assert len(learn.recorder.values) == 2
    train_loss, valid_loss, acc = learn.recorder.values[-1]
    assert math.isfinite(train_loss) and math.isfinite(valid_loss) and 0 <= acc <= 1
    learn.fit(1, 1e-3)  # a second fit continues the ramp-up
    assert learn.mix_match.steps_done == 15


class Shapes(Callback):
    """The (prediction, target) shapes of the training batches."""

    run_valid = False

    def __init__(self):
        self.seen = set()

    def after_loss(self):
        self.seen.add((tuple(self.pred.shape), tuple(self.yb[0].shape)))


@pytest.mark.parametrize("exception", [CancelFitException, CancelTrainException, CancelEpochException])
def test_the_learner_trains_plainly_after_a_cancelled_fit(tmp_path, digits, split, exception):
    learn = make_learner(tmp_path, digits, split, iters=4)
    loss_func = learn.loss_func
    learn.fit(2, 1e-3, cbs=Raise(exception, at=1))
    assert learn.loss_func is loss_func

    learn.remove_cb(MixMatchCallback)
    shapes = Shapes()
    learn.fit(1, 1e-3, cbs=shapes)
    assert learn.loss_func is loss_func
    # Plain batches: the loader's 16 images and class indices, not mixed batches of 48 with soft targets.
    assert shapes.seen == {((16, 10), (16,))}
    assert math.isfinite(learn.recorder.values[-1][0])


def test_get_preds_and_predict_use_the_ema_weights_and_leave_the_raw_ones(tmp_path, digits, split):
    learn = make_learner(tmp_path, digits, split, iters=6, ema_decay=0.9)
    learn.fit(1, 2e-3)
    ema = learn.ema.ema_model
    assert int(ema.updates) == 6
    raw = copy.deepcopy(learn.model.state_dict())

    preds, targets = learn.get_preds()
    assert preds.shape == (500, 10) and torch.equal(targets, digits.test_labels)
    torch.testing.assert_close(preds.sum(1), torch.ones(500))
    # The same numbers as the averaged model run by hand, on the Learner's own normalisation.
    mean, std = digits.channel_stats()
    ema.module.eval()
    with torch.no_grad():
        by_hand = torch.softmax(ema.module(Augmenter(mean, std, 0, False).plain(digits.test_images)), -1)
    torch.testing.assert_close(preds, by_hand, rtol=1e-4, atol=1e-5)
    assert learn.validate()[1] == pytest.approx((preds.argmax(1) == targets).float().mean().item())

    name, index, probs = learn.predict(TensorImage(digits.test_images[3]))
    assert name == digits.classes[int(index)] and int(index) == int(preds[3].argmax())
    torch.testing.assert_close(probs, preds[3], rtol=1e-4, atol=1e-5)
    assert all(torch.equal(raw[k], v) for k, v in learn.model.state_dict().items())

    learn.ema.apply_ema()
    assert all(
        torch.equal(a, b)
        for a, b in zip(learn.model.state_dict().values(), ema.module.state_dict().values(), strict=True)
    )


def test_an_unlabelled_dataloader_is_cycled_on_fashion_mnist(tmp_path, shared_data):
    """Real 28x28 data, labelled-only vs MixMatch Learner, unlabelled images from a torch DataLoader."""
    data = load_dataset("fashion-mnist", str(shared_data))
    split = labeled_split(data.train_labels, 100, data.num_classes, seed=0)
    random.seed(0)  # fastai's loaders seed their shuffling from Python's RNG
    dls = image_dataloaders(data, split, bs=32, iters_per_epoch=12, pad=2, flip=True, device="cpu")
    # 3 batches of 32: the 12 training steps go through it four times.
    pool = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.train_images[:96]), batch_size=32)
    learn = mixmatch_learner(dls, pool, arch="cnn", ema_decay=0, rampup_steps=12, path=tmp_path)
    learn.fit(1, 3e-3)
    assert learn.mix_match.steps_done == 12
    train_loss, valid_loss, acc = learn.recorder.values[-1]
    assert math.isfinite(train_loss) and math.isfinite(valid_loss)
    # Ten classes: 0.1 by chance. Twelve steps reach 0.31-0.47 over seeds; 0.2 leaves room for all of them.
    assert acc > 0.2
