"""A time budget instead of a step count: the folder preset's schedule on a CPU, and --minutes."""

import dataclasses
import json

import pytest
import torch

from mixmatch.cli import main
from mixmatch.config import PRESETS, ConfigError, TrainConfig
from mixmatch.data.loaders import load_dataset
from mixmatch.training import budget, trainer
from mixmatch.training.trainer import Trainer
from test_data_flags import image_folder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    image_folder(root, with_test=True)
    return root


def test_the_folder_preset_fits_ten_minutes_on_a_cpu_with_the_cpu_scale_settings(folder, monkeypatch):
    assert PRESETS["folder"]["steps"] is None and PRESETS["folder"]["arch"] is None
    cfg = TrainConfig(dataset="folder", data_dir=str(folder), image_size=16, device="cpu").resolved()
    data = load_dataset("folder", str(folder), image_size=16)
    monkeypatch.setattr(trainer, "time_run", lambda cfg, data: (0.05, 3.0))  # 50 ms a step, 3 s an evaluation
    planned, why = trainer.fit_to_machine(cfg, data)
    # 90% of 10 minutes less 20 evaluations of 3 s, at 50 ms a step, in hundreds: 9600 steps; ramp-up 40%.
    assert (planned.steps, planned.arch, planned.rampup_steps, planned.eval_every) == (9600, "wrn10_1", 3840, 480)
    assert (planned.schedule, planned.lambda_u, planned.distribution_alignment) == ("cosine", 150, True)
    assert planned.minutes is None and not budget.needs_budget(planned)
    assert "folder on cpu: no --steps given, so 10 minutes of training: model wrn10_1, 50 ms a step and 3 s an " \
        "evaluation (measured)" in why
    assert "9600 steps" in why and "--minutes 40" in why
    assert "cosine learning rate, distribution alignment on" in why
    capped = TrainConfig(dataset="folder", data_dir=str(folder), image_size=16, device="cpu", max_minutes=5)
    assert trainer.fit_to_machine(capped.resolved(), data)[0].steps == 4200  # 270 s less 60 s, at 50 ms a step


def test_on_a_gpu_the_folder_preset_takes_the_papers_model_and_settings(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = TrainConfig(dataset="folder").resolved()
    assert (cfg.arch, cfg.schedule, cfg.lambda_u, cfg.distribution_alignment) == ("wrn28_2", "constant", 75, False)
    mine = TrainConfig(dataset="folder", arch="cnn", distribution_alignment=True).resolved()
    assert (mine.arch, mine.schedule, mine.distribution_alignment) == ("cnn", "constant", True)


def test_given_minutes_ramp_up_and_evaluation_interval_are_kept(folder):
    cfg = TrainConfig(dataset="digits", minutes=1, rampup_steps=7, eval_every=9, device="cpu").resolved()
    assert cfg.steps is None  # the budget decides, not the preset's 5000
    assert budget.needs_budget(cfg)
    planned, why = budget.plan(cfg, seconds_per_step=0.01)
    assert (planned.steps, planned.arch, planned.rampup_steps, planned.eval_every) == (5400, "cnn", 7, 9)
    assert why.startswith("digits on cpu: 1 minute of training")
    assert budget.plan(cfg, seconds_per_step=100.0)[0].steps == budget.MIN_STEPS


def test_a_budget_below_the_least_a_run_trains_says_how_long_that_takes():
    cfg = TrainConfig(dataset="digits", minutes=0.1, device="cpu").resolved()
    planned, why = budget.plan(cfg, seconds_per_step=0.2, seconds_per_evaluation=0.5)
    assert planned.steps == budget.MIN_STEPS == 100
    # 100 steps at 0.2 s and the 2 evaluations of 0.5 s that fit: 21 s, over the 0.1 minutes (6 s) asked for.
    assert "100 steps (100 steps is the least a run trains: about 21 s here, more than the 0.1 minutes asked for)" \
        in why
    assert "2 evaluations (20 evaluations of 0.5 s would take over 25% of the budget" in why
    # At the floor, the plan speaks of the evaluations its interval gives: 17 fit a quarter of the budget, but
    # 100 steps evaluated every 100 // 17 = 5 are evaluated 20 times.
    planned, why = budget.plan(cfg, seconds_per_step=0.2, seconds_per_evaluation=0.078)
    assert planned.steps == 100 and planned.eval_every == 5 and "20 evaluations." in why and "over the" not in why
    roomy, why = budget.plan(dataclasses.replace(cfg, minutes=10), seconds_per_step=0.2)
    assert roomy.steps > 100 and "least a run trains" not in why


def test_steps_and_minutes_together_and_a_trainer_without_steps_are_refused(tmp_path, digits):
    with pytest.raises(ConfigError, match=r"a step count both set the length of a run"):
        budget.plan(TrainConfig(steps=10, minutes=1.0), seconds_per_step=0.1)
    with pytest.raises(ConfigError, match="steps must be set"):
        Trainer(TrainConfig(dataset="folder", out=str(tmp_path)), digits)


def test_time_run_measures_a_real_step_and_evaluation(digits):
    step, evaluation = trainer.time_run(TrainConfig(device="cpu", amp="off").resolved(), digits, steps=2)
    assert 0 < step < 5 and 0 < evaluation < 5


@pytest.mark.slow
def test_a_folder_run_with_minutes_says_what_it_picked_and_records_the_steps(folder, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--dataset", "folder", "--data-dir", str(folder), "--image-size", "16", "--minutes", "0.02"]
    assert main([*args, "--batch-size", "8", "--amp", "off", "--no-progress", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "mixmatch: folder on cpu: 0.02 minutes of training: model wrn10_1" in err
    config = json.loads((out / "config.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert config["minutes"] is None and config["arch"] == "wrn10_1" and config["steps"] == summary["steps"] >= 100
    assert config["rampup_steps"] == int(0.4 * config["steps"])
    # 20 evaluations, or fewer where this machine's evaluation is slow beside so short a budget; the line says which
    evaluations = config["steps"] // config["eval_every"]
    assert evaluations <= 20 and f" {evaluations} evaluation" in err


def test_a_cpu_preset_is_capped_at_15_minutes_unless_the_user_gives_the_steps():
    cfg = TrainConfig(dataset="fashion-mnist", device="cpu").resolved()
    assert (cfg.steps, cfg.max_minutes) == (5000, 15)
    assert TrainConfig(dataset="fashion-mnist", steps=5000).resolved().max_minutes is None
    assert TrainConfig(dataset="fashion-mnist", steps=5000, max_minutes=3).resolved().max_minutes == 3
    assert TrainConfig(dataset="fashion-mnist", minutes=3).resolved().max_minutes is None  # a budget, not a cap
    with pytest.raises(ConfigError, match="max_minutes caps a step count; minutes"):
        TrainConfig(dataset="fashion-mnist", minutes=3, max_minutes=3).validate()
    assert TrainConfig(dataset="digits").resolved().max_minutes is None  # seconds, not minutes
    assert TrainConfig(dataset="cifar10").resolved().max_minutes is None  # the paper's schedule stays whole
    # 150 ms a step and 2 s an evaluation (the fp32 stand-in here): 5000 steps and 20 evaluations fit 90% of
    # 15 minutes, nothing changes.
    assert budget.cap(cfg, seconds_per_step=0.15, seconds_per_evaluation=2.0) == (cfg, None)
    # A CPU at 250 ms a step and 6 s an evaluation: 810 s less 120 s holds 2700 steps; ramp-up and evaluations
    # keep their share.
    capped, why = budget.cap(cfg, seconds_per_step=0.25, seconds_per_evaluation=6.0)
    assert (capped.steps, capped.rampup_steps, capped.eval_every) == (2700, 1080, 135)
    assert capped.max_minutes == 15 and capped.arch == cfg.arch and capped.lambda_u == cfg.lambda_u
    assert "fashion-mnist on cpu: 5000 steps at 250 ms a step and 6 s an evaluation (measured) would take 23 " \
        "minutes" in why
    assert "over its 15-minute cap: training 2700 steps" in why and "pass --steps 5000 and no --max-minutes" in why


def test_a_tight_budget_evaluates_fewer_times_and_counts_its_steps_in_tens():
    cfg = TrainConfig(dataset="digits", minutes=1, device="cpu").resolved()
    # 20 evaluations of 3 s would take all of 90% of a minute (54 s): a quarter of it holds 4 of them, and
    # the 42 s left hold 840 steps of 50 ms, counted in tens below 1000.
    planned, why = budget.plan(cfg, seconds_per_step=0.05, seconds_per_evaluation=3.0)
    assert (planned.steps, planned.eval_every, planned.rampup_steps) == (840, 210, 336)
    assert "840 steps" in why and "4 evaluations (20 evaluations of 3 s would take over 25% of the budget; the " \
        "median of the last 20 is over the 4 there are)" in why
    # Cheap evaluations keep all 20, and steps below 1000 are no longer rounded down to hundreds.
    planned, why = budget.plan(cfg, seconds_per_step=0.2, seconds_per_evaluation=0.0)
    assert (planned.steps, planned.eval_every) == (270, 13)
    assert "20 evaluations." in why
    # An evaluation under a second is shown as such, not as 0 s.
    assert "5 ms a step and 0.08 s an evaluation" in budget.plan(cfg, 0.005, 0.08)[1]
    # The user's own --eval-every is kept, and its evaluations are paid for: 50 ms a step plus 3 s every 100
    # steps is 80 ms a step, so 54 s hold 670 steps and 6 evaluations.
    mine = TrainConfig(dataset="digits", minutes=1, eval_every=100, device="cpu").resolved()
    planned, why = budget.plan(mine, seconds_per_step=0.05, seconds_per_evaluation=3.0)
    assert (planned.steps, planned.eval_every) == (670, 100)
    assert "670 steps" in why and "6 evaluations." in why and "would take over" not in why
    # A CPU preset under a tight cap does the same: 1 minute for the Fashion-MNIST preset's 5000 steps.
    preset = TrainConfig(dataset="fashion-mnist", max_minutes=1, device="cpu").resolved()
    capped, why = budget.cap(preset, seconds_per_step=0.05, seconds_per_evaluation=3.0)
    assert (capped.steps, capped.eval_every, capped.rampup_steps) == (840, 210, 336)
    assert "training 840 steps, lambda_u 150 ramped up over 336 steps, evaluated every 210 (20 evaluations of 3 s " \
        "would take over 25% of the budget" in why
    fixmatch = TrainConfig(dataset="fashion-mnist", method="fixmatch", max_minutes=1, device="cpu").resolved()
    assert "training 840 steps, lambda_u 1, evaluated every 210" in budget.cap(fixmatch, 0.05, 3.0)[1]


def test_a_capped_run_says_so_and_records_its_steps(tmp_path, digits, monkeypatch, capsys):
    from mixmatch.training.trainer import train

    monkeypatch.setattr(trainer, "time_run", lambda cfg, data: (30.0, 1.0))  # a very slow machine
    cfg = TrainConfig(dataset="digits", max_minutes=1, steps=400, rampup_steps=200, eval_every=100, amp="off",
                      progress=False, out=str(tmp_path / "run"))
    summary = train(cfg, digits)
    assert summary["steps"] == budget.MIN_STEPS
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["steps"], config["rampup_steps"], config["eval_every"]) == (100, 50, 25)
    err = capsys.readouterr().err
    assert "digits on cpu: 400 steps at 30000 ms a step and 1 s an evaluation (measured) would take 200 minutes" in err
    assert "(100 steps is the least a run trains)" in err


@pytest.mark.slow
def test_a_compare_grid_is_capped_once_and_every_run_keeps_the_same_steps(tmp_path, monkeypatch, capsys):
    timed = []
    monkeypatch.setattr(trainer, "time_run", lambda cfg, data: (timed.append(cfg.method) or 30.0, 1.0))
    args = ["compare", "--max-minutes", "1", "--steps", "400", "--rampup-steps", "200", "--eval-every", "100",
            "--amp", "off", "--no-progress", "--methods", "mixmatch", "supervised", "--seeds", "0"]
    assert main([*args, "--out", str(tmp_path / "grid")]) == 0
    assert timed == ["mixmatch", "supervised"]  # each method once for the grid
    err = capsys.readouterr().err
    assert err.count("over its 1-minute cap: training 100 steps") == 1 and "Every run of this grid" in err
    for method in ("mixmatch", "supervised"):
        config = json.loads((tmp_path / "grid" / f"{method}-seed0" / "config.json").read_text())
        assert (config["steps"], config["rampup_steps"], config["eval_every"]) == (100, 50, 25)
        assert config["max_minutes"] == 1  # the run folder says what shortened it


def test_a_grids_cap_holds_for_its_slowest_method_not_only_for_mixmatch(monkeypatch):
    from mixmatch.experiments.grid import _fitted

    ms = {"mixmatch": 50, "fixmatch": 100, "supervised": 20}  # FixMatch's step costs twice MixMatch's
    monkeypatch.setattr(trainer, "time_run", lambda cfg, data: (ms[cfg.method] / 1000, 3.0))
    configs = [TrainConfig(dataset="fashion-mnist", method=m, max_minutes=1, device="cpu").resolved() for m in ms]
    fitted, why = _fitted(configs, configs[0], threads=1, data=object())
    mixmatch, _ = budget.cap(configs[0], 0.05, 3.0)
    assert fitted.method == "fixmatch" and fitted.steps < mixmatch.steps
    evaluations = fitted.steps // fitted.eval_every
    assert fitted.steps * 0.1 + evaluations * 3.0 <= budget.SPARE * 60  # FixMatch's run fits the cap too
    assert why.startswith("fashion-mnist on cpu: 5000 steps at 100 ms a step")
    # A time budget stays MixMatch's minutes: every method trains the steps MixMatch trains in them.
    budgeted = [dataclasses.replace(cfg, steps=None, max_minutes=None, minutes=1) for cfg in configs]
    assert _fitted(budgeted, budgeted[0], threads=1, data=object())[0].method == "mixmatch"


@pytest.mark.slow
def test_a_budgeted_grid_with_a_cap_is_timed_once_too(folder, tmp_path, monkeypatch):
    timed = []
    monkeypatch.setattr(trainer, "time_run", lambda cfg, data: (timed.append(cfg.method) or 30.0, 1.0))
    args = ["compare", "--dataset", "folder", "--data-dir", str(folder), "--image-size", "16", "--max-minutes",
            "0.02", "--batch-size", "8", "--amp", "off", "--no-progress", "--methods", "mixmatch", "supervised",
            "--seeds", "0", "--out", str(tmp_path / "grid")]
    assert main(args) == 0
    assert timed == ["mixmatch", "supervised"]  # once each for the grid; the runs do not time themselves again
    for method in ("mixmatch", "supervised"):
        config = json.loads((tmp_path / "grid" / f"{method}-seed0" / "config.json").read_text())
        assert config["steps"] == budget.MIN_STEPS and config["max_minutes"] == 0.02


def test_the_budgets_line_names_only_what_the_runs_method_reads():
    def why(method: str) -> str:
        cfg = TrainConfig(dataset="fashion-mnist", method=method, minutes=1, device="cpu").resolved()
        return budget.plan(cfg, seconds_per_step=0.05, seconds_per_evaluation=3.0)[1]

    assert "lambda_u 150 ramped up over 336 steps" in why("mixmatch") and "distribution alignment on" in why("mixmatch")
    assert "lambda_u 1, cosine" in why("fixmatch") and "alignment" not in why("fixmatch")
    assert "lambda_u" not in why("supervised") and "alignment" not in why("supervised")
    capped = TrainConfig(dataset="fashion-mnist", method="supervised", max_minutes=1, device="cpu").resolved()
    assert "training 840 steps, evaluated every 210" in budget.cap(capped, 0.05, 3.0)[1]
