import json
import math

import pytest
import torch

from mixmatch import algorithm as A
from mixmatch.config import TrainConfig
from mixmatch.train import Trainer, TrainingDiverged


def config(tmp_path, **overrides) -> TrainConfig:
    values = dict(steps=20, eval_every=10, log_every=5, progress=False, out=str(tmp_path / "run"))
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize("method", ["mixmatch", "supervised", "fully-supervised"])
def test_each_method_writes_a_complete_run_folder(tmp_path, digits, method):
    summary = Trainer(config(tmp_path, method=method), digits).fit()
    run = tmp_path / "run"
    for key in ("dataset", "method", "num_labels", "seed", "steps", "test_accuracy", "wall_seconds"):
        assert key in summary
    assert summary["method"] == method and summary["steps"] == 20 and 0 <= summary["test_accuracy"] <= 1
    assert json.loads((run / "summary.json").read_text()) == summary
    assert json.loads((run / "config.json").read_text())["method"] == method
    split = json.loads((run / "split.json").read_text())["indices"]
    assert len(split) == 50
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [5, 10, 15, 20]
    assert [r["step"] for r in records if "test_accuracy" in r] == [10, 20]
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)


def test_fully_supervised_uses_every_label_and_supervised_only_the_split(tmp_path, digits):
    full = Trainer(config(tmp_path, method="fully-supervised"), digits)
    subset = Trainer(config(tmp_path, method="supervised"), digits)
    assert full.labeled_y.shape[0] == 1297 and subset.labeled_y.shape[0] == 50
    assert torch.equal(subset.labeled_y, digits.train_labels[subset.split])


def test_mixmatch_loss_matches_the_algorithm_functions(tmp_path, digits):
    trainer = Trainer(config(tmp_path, amp="off", ema_decay=0), digits)
    trainer.step = trainer.config.rampup_steps // 2
    assert trainer.lambda_u() == 37.5
    total, loss_x, loss_u = trainer.mixmatch_loss()
    assert math.isclose(total.item(), loss_x.item() + 37.5 * loss_u.item(), rel_tol=1e-5)
    trainer.step = 10 * trainer.config.rampup_steps
    assert trainer.lambda_u() == 75


def test_label_guessing_does_not_move_batchnorm_running_stats(tmp_path, digits):
    trainer = Trainer(config(tmp_path, amp="off"), digits)
    bn = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    trainer.model.train()
    views = trainer.augment.views(digits.train_images[:16], 2)
    with A.frozen_batchnorm_stats(trainer.model):
        A.guess_labels(trainer.model, views, 0.5)
    assert torch.equal(bn.running_mean, before)


@pytest.mark.parametrize("bn_mode", ["concat", "interleave"])
def test_running_stats_are_updated_once_per_step(tmp_path, digits, bn_mode):
    trainer = Trainer(config(tmp_path, amp="off", bn_mode=bn_mode), digits)
    bn = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    trainer.train_step()
    assert int(bn.num_batches_tracked) == 1


def test_interleave_and_concat_give_the_same_logits_in_eval_mode(tmp_path, digits):
    """With fixed statistics the two BatchNorm modes differ only in batching, so logits must agree."""
    trainer = Trainer(config(tmp_path, amp="off"), digits)
    trainer.model.eval()
    x, u = torch.randn(64, 1, 8, 8), torch.randn(128, 1, 8, 8)
    concat = trainer.mixmatch.forward_mixed(trainer.model, x, u, trainer.forward)
    trainer.mixmatch.bn_mode = "interleave"
    inter = trainer.mixmatch.forward_mixed(trainer.model, x, u, trainer.forward)
    for a, b in zip(concat, inter, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_ema_tracks_the_model(tmp_path, digits):
    trainer = Trainer(config(tmp_path, ema_decay=0.5), digits)
    trainer.train_step()
    trainer.train_step()
    live = trainer.model.classifier.weight
    ema = trainer.ema.module.classifier.weight
    assert not torch.equal(live, ema)
    assert (ema - live).abs().max() < 0.1


def test_mixmatch_learns_digits(tmp_path, digits):
    summary = Trainer(config(tmp_path, steps=600, eval_every=600, rampup_steps=200), digits).fit()
    assert summary["test_accuracy"] > 0.8


def test_nan_loss_stops_with_the_step(tmp_path, digits, monkeypatch):
    trainer = Trainer(config(tmp_path), digits)
    monkeypatch.setattr(trainer, "lambda_u", lambda: float("nan"))
    with pytest.raises(TrainingDiverged, match="at step 5"):
        trainer.fit()


def test_bad_settings_are_refused(tmp_path, digits):
    with pytest.raises(ValueError, match=r"^steps must be positive, got 0$"):
        Trainer(config(tmp_path, steps=0), digits)
    with pytest.raises(ValueError, match="unknown method"):
        Trainer(config(tmp_path, method="pseudo-label"), digits)


def test_distribution_alignment_tracks_the_guesses_and_resumes(tmp_path, digits):
    trainer = Trainer(config(tmp_path, distribution_alignment=True), digits)
    assert torch.allclose(trainer.guess_marginal, torch.full((10,), 0.1))
    torch.testing.assert_close(trainer.labeled_marginal, torch.full((10,), 0.1))  # 5 labels per class
    trainer.train_step()
    assert not torch.allclose(trainer.guess_marginal, torch.full((10,), 0.1))
    torch.testing.assert_close(trainer.guess_marginal.sum(), torch.tensor(1.0))
    again = Trainer(config(tmp_path, distribution_alignment=True), digits)
    again.load_state_dict(trainer.state_dict())
    assert torch.equal(again.guess_marginal, trainer.guess_marginal)
    assert Trainer(config(tmp_path), digits).guess_marginal is None
