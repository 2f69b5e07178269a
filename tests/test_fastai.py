"""The fastai integration: MixMatchCallback's loss is mixmatch.algorithm's, and the Learner stays a normal Learner."""

import copy
import math
import random
import subprocess
import sys
import textwrap
from pathlib import Path

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

from conftest import photo_folder  # noqa: E402
from mixmatch import algorithm  # noqa: E402
from mixmatch.augment import Augmenter  # noqa: E402
from mixmatch.config import TrainConfig  # noqa: E402
from mixmatch.data import labeled_split, load_dataset  # noqa: E402
from mixmatch.fastai import EMACallback, MixMatchCallback, image_dataloaders, mixmatch_learner  # noqa: E402
from mixmatch.methods.mixmatch import MIX_MODES, class_marginal  # noqa: E402
from mixmatch.models import build_model  # noqa: E402
from mixmatch.training.trainer import Trainer  # noqa: E402

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


@pytest.mark.slow
def test_import_mixmatch_does_not_import_fastai():
    code = "import sys, mixmatch, mixmatch.training.trainer, mixmatch.cli; assert 'fastai' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


MISSING = 'mixmatch.fastai needs fastai, which is not installed (fastai is missing): pip install "mixmatch[fastai]"'


@pytest.mark.slow
def test_import_without_fastai_says_in_one_line_what_to_install():
    """fastai absent (None in sys.modules is how Python marks a module that cannot be imported)."""
    catch = textwrap.dedent("""
        import sys
        sys.modules["fastai"] = None
        try:
            import mixmatch.fastai
        except ModuleNotFoundError as error:  # so `except ImportError` in users' code still works
            print(type(error).__name__, error.name)
            print(error)
    """)
    out = subprocess.run([sys.executable, "-c", catch], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["FastaiMissingError fastai", MISSING]

    bare = "import sys; sys.modules['fastai'] = None; import mixmatch.fastai"
    run = subprocess.run([sys.executable, "-c", bare], capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == f"mixmatch.fastai.FastaiMissingError: {MISSING}"
    assert "During handling" not in run.stderr  # fastai's own ModuleNotFoundError is not chained on


class Capture(Callback):
    """Saves the state just before MixMatchCallback's before_batch of training batch `at`, and the loss."""

    run_valid = False
    order = MixMatchCallback.order - 1

    def __init__(self, at):
        self.at, self.state, self.reported = at, None, None

    def before_batch(self):
        if self.train_iter == self.at:
            marginal = self.learn.mix_match.method.guess_marginal
            self.state = dict(
                x=self.xb[0].as_subclass(torch.Tensor).clone(),
                y=self.yb[0].as_subclass(torch.Tensor).clone(),
                weights=copy.deepcopy(self.learn.model.state_dict()),
                rng=torch.get_rng_state(),
                marginal=None if marginal is None else marginal.clone(),
            )

    def after_loss(self):
        if self.train_iter == self.at:
            self.reported = self.learn.loss.item()
            self.marginal_after = self.learn.mix_match.method.guess_marginal
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
    with algorithm.frozen_batchnorm_stats(model):
        q = algorithm.guess_labels(model, u_views, 0.5)
    p = F.one_hot(s["y"], 10).float()
    x_mix, p_mix, u_mix, q_mix = algorithm.mix_batches(s["x"], p, u_views, q, 0.75)
    logits = model(torch.cat([x_mix, u_mix]))
    total, loss_x, loss_u = algorithm.mixmatch_loss(logits[:B], p_mix, logits[B:], q_mix, 37.5)

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


@pytest.mark.slow
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


@pytest.mark.parametrize(
    ("mix", "bn_mode", "alignment"),
    [("all", "concat", False), ("separate", "interleave", True), ("labeled", "concat", True),
     ("unlabeled", "interleave", False)],
)
def test_trainer_and_callback_give_the_same_loss_on_the_same_batch_and_draws(tmp_path, digits, mix, bn_mode, alignment):
    """Both front ends run one MixMatchStep: the callback's loss of a batch is the Trainer's, bit for bit.

    The Trainer's seam is its method's views_loss(trainer, x, y, views), which its batch_loss calls after
    augmenting the drawn batch; the callback draws the unlabelled batch and its views as the Trainer does
    (randint from the same pool, the same Augmenter), so from the same RNG state both then guess, mix and
    forward alike.
    """
    settings = dict(k=2, temperature=0.5, alpha=0.75, lambda_u=75, rampup_steps=4, mix=mix, bn_mode=bn_mode)
    # The callback's model keeps PyTorch's default memory format, so the Trainer's does too (the same kernels).
    cfg = TrainConfig(dataset="digits", arch="cnn", batch_size=16, amp="off", channels_last="off", device="cpu",
                      compile="off", ema_decay=0, distribution_alignment=alignment, progress=False,
                      out=str(tmp_path / "run"), **settings)
    trainer = Trainer(cfg, digits)
    dls = image_dataloaders(digits, trainer.split, bs=16, iters_per_epoch=4, pad=1, flip=False, device="cpu")
    learn = mixmatch_learner(dls, trainer.unlabeled_x, arch="cnn", augment=trainer.augment, K=2, T=0.5,
                             alpha=0.75, lambda_u=75, rampup_steps=4, mix=mix, bn_mode=bn_mode,
                             distribution_alignment=alignment,
                             labeled_marginal=trainer.method.labeled_marginal if alignment else None,
                             ema_decay=0, path=tmp_path)
    capture = Capture(at=2)  # lambda_u = 75 * 2/4: both parts of the loss count
    learn.fit(1, 1e-3, cbs=capture)
    s = capture.state

    def trainer_loss(T):
        trainer.method.T = T
        trainer.model.load_state_dict(s["weights"])
        trainer.model.train()
        trainer.step = 2
        if alignment:
            trainer.method.guess_marginal.copy_(s["marginal"])
        torch.set_rng_state(s["rng"])
        pool = trainer.unlabeled_x
        u_views = trainer.augment.views(pool[torch.randint(pool.shape[0], (16,))], 2)
        return trainer.method.views_loss(trainer, s["x"], s["y"], u_views)

    total, loss_x, loss_u = trainer_loss(0.5)
    assert loss_u.item() > 0 and learn.mix_match.lambda_u_now == 37.5
    assert capture.reported == total.item()
    assert learn.mix_match.loss_x.item() == loss_x.item() and learn.mix_match.loss_u.item() == loss_u.item()
    if alignment:
        assert not torch.equal(s["marginal"], torch.full((10,), 0.1))  # moved by the two batches before
        assert torch.equal(trainer.method.guess_marginal, capture.marginal_after)
    # The comparison sees a step that differs: another T, or no sharpening at all (T = 1).
    for T in (0.4, 1.0):
        assert abs(trainer_loss(T)[0].item() - capture.reported) > 1e-4


@pytest.mark.parametrize("mix", MIX_MODES)
def test_the_callback_trains_with_distribution_alignment_and_each_mix_mode(tmp_path, digits, split, mix):
    learn = make_learner(tmp_path, digits, split, iters=3, rampup_steps=3, mix=mix, distribution_alignment=True)
    loss_func = learn.loss_func
    learn.fit(1, 1e-3)
    mm = learn.mix_match
    assert mm.steps_done == 3 and learn.loss_func is loss_func and mm.method.mix_mode == mix
    # The labelled marginal is counted over the training loader's items: 48 of the 50 labelled images.
    torch.testing.assert_close(mm.method.labeled_marginal, class_marginal(digits.train_labels[split[:48]], 10))
    marginal = mm.method.guess_marginal
    assert not torch.allclose(marginal, torch.full((10,), 0.1))
    torch.testing.assert_close(marginal.sum(), torch.tensor(1.0))
    train_loss, valid_loss, acc = learn.recorder.values[-1]
    assert math.isfinite(train_loss) and math.isfinite(valid_loss) and 0 <= acc <= 1
    assert math.isfinite(mm.loss_u.item()) and mm.loss_u.item() > 0


def test_lr_find_leaves_the_alignment_marginal_as_it_was(tmp_path, digits, split):
    learn = make_learner(tmp_path, digits, split, iters=3, distribution_alignment=True)
    learn.lr_find(num_it=4, show_plot=False)
    assert torch.equal(learn.mix_match.method.guess_marginal, torch.full((10,), 0.1))
    learn.fit(1, 1e-3)
    assert not torch.equal(learn.mix_match.method.guess_marginal, torch.full((10,), 0.1))


class RaiseAfterPred(Callback):
    """Cancel the fit after the first prediction, before MixMatchCallback's after_pred."""

    run_valid = False
    order = MixMatchCallback.order - 1

    def after_pred(self):
        raise CancelFitException()


def test_interleave_updates_batchnorm_once_per_step_and_gives_the_forward_back(tmp_path, digits, split):
    learn = make_learner(tmp_path, digits, split, iters=3, bn_mode="interleave")
    model = learn.model
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    learn.fit(1, 1e-3)
    # Each step: guessing and the second and third interleaved passes leave the running statistics alone.
    assert int(bn.num_batches_tracked) == 3
    assert "forward" not in vars(model) and math.isfinite(learn.recorder.values[-1][0])
    learn.fit(1, 1e-3, cbs=RaiseAfterPred())  # cancelled while the interleaved forward is installed
    assert "forward" not in vars(model) and int(bn.num_batches_tracked) == 4


def test_bad_callback_settings_are_refused(tmp_path, digits, split):
    with pytest.raises(ValueError, match="labeled_marginal is the target of distribution_alignment"):
        MixMatchCallback(digits.train_images, labeled_marginal=torch.full((10,), 0.1))
    with pytest.raises(ValueError, match="mix must be one of"):
        MixMatchCallback(digits.train_images, mix="both")
    pool = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(digits.train_images[:64]), batch_size=8)
    learn = make_learner(tmp_path, digits, split, iters=2, unlabeled=pool, bn_mode="interleave")
    with pytest.raises(ValueError, match="interleave' needs unlabelled batches as large as the labelled ones"):
        learn.fit(1, 1e-3)
    assert "forward" not in vars(learn.model)


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_callback_warms_its_decay_up_unless_told_not_to(tmp_path, digits, split, warmup):
    """The callback's EMA is the Trainer's: warmed up by default, the paper's plain decay with warmup=False."""
    learn = make_learner(tmp_path, digits, split, iters=3, ema_decay=0.999, ema_warmup=warmup)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1)
    ema = next(cb for cb in learn.cbs if isinstance(cb, EMACallback)).ema_model
    assert ema.warmup is warmup and int(ema.updates) == 3
    expected = min(0.999, 4 / 13) if warmup else 0.999
    assert float(ema.current_decay()) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("pool", "shown"),
    [
        (lambda x: torch.nn.functional.interpolate(x.float(), size=16).to(torch.uint8), "1 channel of 16x16"),
        (lambda x: x.repeat(1, 3, 1, 1), "3 channels of 8x8"),
    ],
    ids=["size", "channels"],
)
def test_an_unlabelled_pool_of_another_size_or_channel_count_is_one_line(tmp_path, digits, split, pool, shown):
    learn = make_learner(tmp_path, digits, split, iters=2, unlabeled=pool(digits.train_images[:64]))
    with pytest.raises(ValueError) as caught, learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
    message = str(caught.value).splitlines()[-1].strip()
    assert message.startswith(f"MixMatchCallback: the unlabelled images ({shown} as given")
    assert "do not match the labelled batch (1 channel of 8x8): give unlabeled_dl (mixmatch_learner's unlabeled) " \
        "images of the labelled" in message


def test_a_pool_that_is_no_image_batch_or_already_scaled_is_one_line(tmp_path, digits, split):
    with pytest.raises(ValueError, match=r"must be a batch \(N, C, H, W\), got a tensor of shape \(1297, 64\)"):
        make_learner(tmp_path, digits, split, unlabeled=digits.train_images.flatten(1))
    learn = make_learner(tmp_path, digits, split, iters=2, unlabeled=digits.train_images.float() / 255)
    with pytest.raises(ValueError) as caught, learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
    assert "are torch.float32, and the training loader's IntToFloatTensor divides them by 255 as if raw: give raw " \
        "uint8 images" in str(caught.value)


@pytest.mark.slow
def test_the_notebook_flow_vision_learner_aug_transforms_and_the_callback(tmp_path):
    """vision_learner(dls, resnet18) with aug_transforms() and MixMatchCallback over a folder's unlabelled photos,
    offline (pretrained=False): fine_tune trains and the callback runs every batch."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from fastai_vision_learner import mixmatch_vision_learner

    root = photo_folder(tmp_path / "photos")
    learn = mixmatch_vision_learner(root, "resnet18", pretrained=False, size=32, bs=6, lambda_u=75.0,
                                    rampup_steps=4)
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(1)
    callback = learn.mix_match
    assert callback.steps_done == 6 and callback.lambda_u_now > 0  # 3 batches frozen, 3 unfrozen
    assert callback.unlabeled_dl.shape == (12, 3, 32, 32) and callback.unlabeled_dl.dtype == torch.uint8
    valid_loss, accuracy = learn.validate()
    assert math.isfinite(valid_loss) and 0 <= accuracy <= 1
