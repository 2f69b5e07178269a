"""The methods of the comparison: each one's core against an independent computation, the registry against the
config, and each method through the Trainer (a step, a checkpoint, an exact resume after kill -9)."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixmatch import runfolder
from mixmatch.augment import Augmenter
from mixmatch.config import METHOD_DEFAULTS, METHOD_NAMES, METHOD_RAMPUP_SHARE, TrainConfig, field_types
from mixmatch.methods import ICT, METHODS, VAT, Batch, FixMatch, MeanTeacher, PiModel, PseudoLabel
from mixmatch.methods.pseudo_label import confident_cross_entropy
from mixmatch.methods.vat import kl_from_logits, unit_directions
from mixmatch.training.checkpoint import safe_load
from mixmatch.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


class Identity(Augmenter):
    """No augmentation: every view of an image is the image itself, normalised."""

    def weak(self, images):
        return images

    def strong_views(self, images, k):
        return self.views(images, k)


class Step:
    """A Context for one method's batch_loss: a tiny CNN, its forward pass, a teacher, the identity augmentation."""

    def __init__(self, teacher: bool = False, seed: int = 0):
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).train()
        self.forward = self.model
        self.augment = Identity(torch.tensor([0.5]), torch.tensor([0.25]), 0, False)
        self.step = 10**6
        self._teacher = None
        if teacher:
            import copy

            self._teacher = copy.deepcopy(self.model)

    @property
    def teacher(self):
        return self._teacher

    @property
    def num_classes(self):
        return 3

    def autocast(self):
        return contextlib.nullcontext()


def batch(n_x: int = 8, n_u: int = 8, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randint(0, 256, (n_x, 1, 6, 6), generator=g, dtype=torch.uint8),
                 torch.randint(0, 3, (n_x,), generator=g),
                 torch.randint(0, 256, (n_u, 1, 6, 6), generator=g, dtype=torch.uint8))


def test_the_registry_is_the_configs_and_every_method_reads_fields_that_exist():
    assert tuple(METHODS) == METHOD_NAMES
    fields = set(field_types())
    for name, cls in METHODS.items():
        assert cls.name == name and set(cls.reads) <= fields, name
    for name, defaults in METHOD_DEFAULTS.items():
        assert set(defaults) <= fields and name in METHODS
        assert set(defaults) - {"optimizer", "lr", "weight_decay", "schedule"} <= set(METHODS[name].reads), name
    assert set(METHOD_RAMPUP_SHARE) <= set(METHODS)
    assert [n for n, cls in METHODS.items() if not cls.in_paper] == ["fixmatch"]


@pytest.mark.parametrize("method", ["pi-model", "pseudo-label", "vat", "mean-teacher", "ict", "fixmatch", "mixup"])
def test_each_method_starts_from_its_official_settings_and_a_flag_wins(method):
    cfg = TrainConfig(dataset="cifar10", method=method).resolved()
    for field, value in METHOD_DEFAULTS[method].items():
        assert getattr(cfg, field) == value, field
    share = METHOD_RAMPUP_SHARE[method]
    assert cfg.rampup_steps == int(share * cfg.steps)  # warmup_pos of the official file, not MixMatch's 16384
    assert TrainConfig(dataset="cifar10", method=method, lambda_u=3.0).resolved().lambda_u == 3.0
    # MixMatch keeps the data set's own (the paper's per-data-set settings)
    assert TrainConfig(dataset="svhn").resolved().lambda_u == 250


def test_on_svhn_each_method_takes_the_official_svhn_scripts_settings():
    # runs/table6.sh (SVHN's train split) and table7.sh (its extra split too), typed out here from the scripts
    table6 = {
        "ict": dict(lambda_u=20, alpha=0.5, weight_decay=0.02),
        "mean-teacher": dict(lambda_u=150, weight_decay=0.02),
        "mixmatch": dict(lambda_u=250, alpha=0.75, weight_decay=0.02),
        "mixup": dict(alpha=0.25, weight_decay=0.02),
        "pi-model": dict(lambda_u=5, weight_decay=0.2),
        "pseudo-label": dict(lambda_u=2, weight_decay=0.02),
        "vat": dict(lambda_u=0.3, weight_decay=0.02),
    }
    table7 = dict(table6, **{"mean-teacher": dict(lambda_u=180, weight_decay=0.02),
                             "mixmatch": dict(lambda_u=250, alpha=0.25, weight_decay=0.02)})
    for dataset, table in (("svhn", table6), ("svhn-extra", table7)):
        for method, settings in table.items():
            cfg = TrainConfig(dataset=dataset, method=method).resolved()
            assert {k: getattr(cfg, k) for k in settings} == settings, (dataset, method)
    assert TrainConfig(dataset="svhn", method="ict", alpha=0.3).resolved().alpha == 0.3  # a flag still wins


def test_pi_model_and_mean_teacher_see_no_inconsistency_between_identical_views():
    step = Step(teacher=True)  # the teacher is a copy of the model's weights, as the EMA is when it starts
    for method in (PiModel(lambda_u=1.0, rampup_steps=0), MeanTeacher(lambda_u=1.0, rampup_steps=0)):
        losses = method.batch_loss(step, batch())
        assert losses.unsupervised.item() == 0.0
        assert torch.allclose(losses.total, losses.supervised)
    with torch.no_grad():
        step.teacher[0].weight.add_(0.5)  # a teacher that disagrees
    assert MeanTeacher(lambda_u=1.0, rampup_steps=0).batch_loss(step, batch()).unsupervised.item() > 0


def test_ict_without_mixing_and_with_the_models_own_weights_sees_no_inconsistency():
    step = Step(teacher=True)
    assert ICT(lambda_u=1.0, rampup_steps=0, alpha=0.0).batch_loss(step, batch()).unsupervised.item() == 0.0
    assert ICT(lambda_u=1.0, rampup_steps=0, alpha=0.75).batch_loss(step, batch()).unsupervised.item() > 0


def test_the_pseudo_label_mask_counts_only_guesses_at_the_threshold():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.2, 0.1, 0.0], [0.0, 0.0, 9.0], [1.0, 1.0, 1.0]])
    probs = torch.softmax(logits, -1)
    threshold = float(probs[0].max())  # the first row is exactly at it: counted
    student = torch.randn(4, 3)
    each = F.cross_entropy(student, torch.tensor([0, 0, 2, 0]), reduction="none")
    expected = (each[0] + each[2]) / 4  # the rest count as zero, and the mean is over all four
    torch.testing.assert_close(confident_cross_entropy(student, logits, threshold), expected)
    assert confident_cross_entropy(student, logits, 1.0).item() == 0.0


def test_pseudo_label_and_fixmatch_ignore_unconfident_images():
    step = Step()
    assert PseudoLabel(lambda_u=1.0, rampup_steps=0, threshold=1.0).batch_loss(step, batch()).unsupervised.item() == 0
    fixmatch = FixMatch(lambda_u=1.0, threshold=1.0, mu=1)
    losses = fixmatch.batch_loss(step, batch())
    assert losses.unsupervised.item() == 0 and torch.allclose(losses.total, losses.supervised)
    everything = FixMatch(lambda_u=1.0, threshold=0.0, mu=1).batch_loss(step, batch())
    assert everything.unsupervised.item() > 0


def test_vat_perturbation_raises_the_kl_more_than_a_random_one_of_the_same_norm():
    step = Step(seed=3)
    vat = VAT(lambda_u=1.0, rampup_steps=0, vat_epsilon=2.0, entropy_weight=0.0)
    u = step.augment(batch(n_u=32).u)
    step.model.eval()  # fixed statistics: the KL measures the inputs' effect alone
    adversarial = vat.perturbation(step, u)
    random = unit_directions(torch.randn_like(u)) * adversarial.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    with torch.no_grad():
        clean = step.model(u)
        kl_adversarial = kl_from_logits(clean, step.model(u + adversarial))
        kl_random = kl_from_logits(clean, step.model(u + random))
    assert kl_adversarial.mean() > 2 * kl_random.mean()
    # its size: epsilon in the official [-1, 1] units, moved into ours by 1 / (2 std) = 2
    torch.testing.assert_close(adversarial.flatten(1).norm(dim=1), torch.full((32,), 2.0 * 2), rtol=1e-3, atol=1e-3)


def test_kl_and_unit_directions_are_what_they_say():
    p, q = torch.randn(5, 3), torch.randn(5, 3)
    expected = (torch.softmax(p, -1) * (torch.log_softmax(p, -1) - torch.log_softmax(q, -1))).sum(-1)
    torch.testing.assert_close(kl_from_logits(p, q), expected)
    assert kl_from_logits(p, p).abs().max() < 1e-6
    d = unit_directions(torch.randn(4, 2, 3, 3) * 100)
    torch.testing.assert_close(d.flatten(1).norm(dim=1), torch.ones(4), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_trains_through_the_trainer_and_checkpoints_its_state(tmp_path, digits, method):
    cfg = TrainConfig(method=method, steps=4, batch_size=16, eval_every=4, log_every=2, mu=2, amp="off",
                      progress=False, out=str(tmp_path / "run"))
    trainer = Trainer(cfg, digits)
    summary = trainer.fit()
    assert summary["steps"] == 4 and 0 <= summary["test_accuracy"] <= 1
    state = safe_load(runfolder.checkpoints(tmp_path / "run")[-1])
    assert state["method"] == trainer.method.state_dict()
    drawn = trainer.draw_batch()
    expected_u = None if not METHODS[method].uses_unlabeled else trainer.method.unlabeled_ratio * 16
    assert (drawn.u.shape[0] if drawn.u is not None else None) == expected_u
    assert trainer.method.unlabeled_ratio == (2 if method == "fixmatch" else 1)


def test_a_teacher_method_without_an_ema_is_one_line(tmp_path, digits, cli_error):
    line = cli_error("train", "--method", "mean-teacher", "--ema-decay", "0", "--steps", "2", "--no-progress",
                     "--out", str(tmp_path / "run"))
    assert line == "mixmatch: error: mean-teacher's teacher is the EMA of the weights: --ema-decay must be above 0"


def test_a_flag_no_method_of_the_command_reads_is_one_line(cli_error, capsys):
    line = cli_error("train", "--method", "mixmatch", "--threshold", "0.9", "--steps", "1")
    assert line == ("mixmatch: error: only pseudo-label and fixmatch read --threshold; this command trains mixmatch: "
                    "drop it, or train one of them")
    line = cli_error("compare", "--methods", "supervised", "fully-supervised", "--alpha", "0.5", "--steps", "1")
    assert line.startswith("mixmatch: error: only mixmatch, mixup, ict read --alpha; this command trains "
                           "supervised, fully-supervised")
    from mixmatch.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["train", "--method", "nope"])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and "invalid choice: 'nope' (choose from 'mixmatch', 'supervised'" in line


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.mark.slow
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_sigkill_then_resume_gives_bit_identical_weights_for_every_method(tmp_path, method):
    args = [sys.executable, "-m", "mixmatch", "train", "--method", method, "--steps", "60", "--batch-size", "16",
            "--log-every", "10", "--eval-every", "30", "--checkpoint-every", "20", "--amp", "off",
            "--channels-last", "off", "--no-progress", *(["--mu", "2"] if method == "fixmatch" else [])]
    full, cut = tmp_path / "full", tmp_path / "cut"
    uninterrupted = subprocess.Popen([*args, "--out", str(full)], env=ENV, stdout=subprocess.DEVNULL)
    killed = subprocess.Popen([*args, "--out", str(cut)], env=ENV, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not runfolder.checkpoints(cut) and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert not (cut / "summary.json").exists(), "the run finished before the kill; make it longer"
    resumed = subprocess.run([sys.executable, "-m", "mixmatch", "train", "--resume", str(cut), "--no-progress"],
                             env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert uninterrupted.wait() == 0
    a, b = (safe_load(runfolder.checkpoints(run)[-1]) for run in (full, cut))
    assert a["step"] == b["step"] == 60
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{method}: {part}.{key} differs after the resume"
    assert a["method"].keys() == b["method"].keys()
