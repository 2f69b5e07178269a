"""A grid of runs (compare, ablate) in worker processes: how many, the same runs as one after another, errors."""

import json
import pickle

import pytest
import torch

from mixmatch.cli import main
from mixmatch.config import ConfigError
from mixmatch.data.dataset import DataError
from mixmatch.data.images import ImageError
from mixmatch.experiments.grid import WorkerDied, pick_jobs
from mixmatch.training import runtime
from mixmatch.training.checkpoint import CheckpointError
from mixmatch.training.trainer import TrainingDiverged, TrainingInterrupted


@pytest.fixture
def cpus(monkeypatch):
    """Pretend this machine has `n` idle CPUs and torch `n` threads."""
    threads = torch.get_num_threads()

    def set_cpus(n: int) -> None:
        torch.set_num_threads(n)
        monkeypatch.setattr(runtime, "free_cpus", lambda interval=0.1: float(n))
        monkeypatch.setattr(runtime, "usable_cpus", lambda: set(range(n)))

    yield set_cpus
    torch.set_num_threads(threads)


def test_auto_gives_each_idle_cpu_a_run_and_splits_the_rest(cpus):
    cpus(2)
    assert pick_jobs(None, 9, None, "cpu") == (2, 1)
    cpus(8)
    assert pick_jobs(None, 9, None, "cpu") == (8, 1)
    assert pick_jobs(None, 3, None, "cpu") == (3, 2)  # 8 CPUs over 3 runs: 2 threads each
    assert pick_jobs(None, 9, 4, "cpu") == (2, 4)  # the user's --threads: 8 CPUs hold 2 such runs


def test_auto_runs_one_after_another_where_side_by_side_cannot_pay(cpus, monkeypatch):
    cpus(1)
    assert pick_jobs(None, 9, None, "cpu") == (1, None)  # one idle CPU (or OMP_NUM_THREADS=1)
    cpus(8)
    assert pick_jobs(None, 1, None, "cpu") == (1, None)
    assert pick_jobs(None, 9, None, "cuda") == (1, None)
    assert pick_jobs(None, 9, 2, "cuda") == (1, 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert pick_jobs(None, 9, None, "cpu") == (1, None)  # under torchrun


def test_a_given_jobs_is_kept_up_to_the_runs_and_oversubscribing_says_so(cpus, capsys):
    cpus(2)
    assert pick_jobs(4, 9, None, "cpu") == (4, 1)
    assert "4 runs at a time of 1 CPU thread each ask for 4 threads of this machine's 2 CPUs" in capsys.readouterr().err
    assert pick_jobs(4, 3, None, "cpu") == (3, 1)
    assert pick_jobs(1, 9, 2, "cpu") == (1, 2)
    assert pick_jobs(2, 9, 3, "cpu") == (2, 3)
    capsys.readouterr()
    assert pick_jobs(2, 9, 2, "cpu") == (2, 2)  # --jobs 2 --threads 2 on two cores
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mixmatch: warning: 2 runs at a time of 2 CPU threads each ask for 4 threads of this machine's 2 "
                   "CPUs: they will slow each other down (the results are the same)"]
    assert pick_jobs(2, 9, 1, "cpu") == (2, 1) and not capsys.readouterr().err


def records(run) -> list[dict]:
    """metrics.jsonl without its wall-clock times."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in lines]


@pytest.mark.slow
def test_side_by_side_trains_the_same_runs_as_one_after_another(tmp_path, capsys):
    args = ["compare", "--steps", "20", "--eval-every", "10", "--log-every", "5", "--amp", "off", "--threads", "1",
            "--methods", "mixmatch", "supervised", "--seeds", "0", "1"]
    assert main([*args, "--jobs", "1", "--no-progress", "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--jobs", "2", "--out", str(tmp_path / "two")]) == 0
    err = capsys.readouterr().err
    assert "mixmatch: 4 runs, 2 at a time in worker processes of 1 CPU thread each" in err
    assert err.count("test accuracy") == 8
    for run in ("mixmatch-seed0", "mixmatch-seed1", "supervised-seed0", "supervised-seed1"):
        assert records(tmp_path / "one" / run) == records(tmp_path / "two" / run), run
        config = json.loads((tmp_path / "two" / run / "config.json").read_text())
        assert config["threads"] == 1 and config["progress"] is False
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert [r["accuracies"] for r in one] == [r["accuracies"] for r in two]


@pytest.mark.slow
def test_an_error_in_a_worker_is_one_line(tmp_path, capsys):
    argv = ["compare", "--steps", "30", "--rampup-steps", "10", "--lr", "1e30", "--methods", "mixmatch", "supervised",
            "--threads", "1", "--jobs", "2", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("mixmatch: 2 runs, 2 at a time") and len(err) == 2, err
    assert err[1].startswith("mixmatch: error: loss became nan at step ")


@pytest.mark.parametrize("value", ["0", "-2", "abc", "1.5"])
def test_jobs_that_is_no_count_is_one_line(value, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["ablate", "--jobs", value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mixmatch: error: argument --jobs: expected a whole number >= 1 or auto, got {value!r} (see")


def test_auto_is_a_value_of_jobs_and_threads():
    from mixmatch.cli import build_parser

    args = build_parser().parse_args(["compare", "--jobs", "auto", "--threads", "auto"])
    assert args.jobs is None and args.threads is None
    args = build_parser().parse_args(["compare", "--jobs", "3", "--threads", "2"])
    assert args.jobs == 3 and args.threads == 2


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("lambda_u", "lambda_u must be >= 0, got -1"),
        ImageError("a.png: not an image", "not an image"),
        TrainingInterrupted("stopped by SIGTERM at step 3", 15),
        DataError("no images"),
        CheckpointError("not a checkpoint"),
        TrainingDiverged("loss became nan"),
        WorkerDied("a worker process died"),
    ],
)
def test_errors_cross_from_a_worker_whole(error):
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and str(back) == str(error) and vars(back) == vars(error)


def test_a_cap_that_would_cut_side_by_side_runs_keeps_them_one_after_another(tmp_path, cpus, monkeypatch, capsys):
    from mixmatch.experiments import grid
    from mixmatch.training import trainer

    cpus(2)
    # On one thread a step takes 30 s (the 1-minute cap would cut 400 steps to 100), on two a millisecond.
    monkeypatch.setattr(trainer, "time_run", lambda cfg, data: (30.0 if torch.get_num_threads() == 1 else 0.001, 0.0))
    trained = []
    monkeypatch.setattr(grid, "_train", lambda cfg, fitted, again: trained.append(cfg) or {"test_accuracy": 0.5,
                                                                                    "wall_seconds": 1.0})
    monkeypatch.setattr("mixmatch.experiments.report.report", lambda runs, out, key: "table")
    args = ["compare", "--max-minutes", "1", "--steps", "400", "--amp", "off", "--methods", "mixmatch",
            "supervised", "--seeds", "0", "--out", str(tmp_path)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "the runs train one after another: side by side, on 1 CPU thread each, the cap would cut them to 100" in err
    assert [cfg.steps for cfg in trained] == [400, 400] and "at a time" not in err


def test_a_budgeted_grid_gives_each_run_the_whole_machine(tmp_path, cpus, monkeypatch, capsys):
    from mixmatch.experiments import grid
    from mixmatch.training import trainer

    cpus(2)
    threads = []
    monkeypatch.setattr(trainer, "time_run", lambda cfg, data: (threads.append(torch.get_num_threads()) or 0.01, 0.0))
    monkeypatch.setattr(grid, "_train", lambda cfg, fitted, again: {"test_accuracy": 0.5, "wall_seconds": 1.0})
    monkeypatch.setattr("mixmatch.experiments.report.report", lambda runs, out, key: "table")
    args = ["compare", "--minutes", "0.1", "--amp", "off", "--methods", "mixmatch", "supervised", "--seeds", "0",
            "--out", str(tmp_path)]
    assert main(args) == 0
    assert threads == [2] and "at a time" not in capsys.readouterr().err


@pytest.mark.slow
def test_a_stopped_run_needs_resume_and_resume_needs_the_grids_own_flags(tmp_path, capsys):
    grid = tmp_path / "grid"
    args = ["compare", "--steps", "20", "--eval-every", "10", "--amp", "off", "--methods", "supervised", "--seeds",
            "0", "1", "--jobs", "1", "--threads", "1", "--no-progress", "--out", str(grid)]
    assert main(args) == 0
    (grid / "supervised-seed1" / "summary.json").unlink()  # as a run stopped after its last checkpoint
    capsys.readouterr()
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == (
        f"mixmatch: error: {grid / 'supervised-seed1'} holds a stopped run (a checkpoint at step 20): finish the "
        "grid with --resume, or give another --out")
    assert main([*args, "--lr", "0.01", "--resume"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"mixmatch: error: --resume: {grid / 'supervised-seed0'} was started with --lr 0.002, not 0.01; give the "
        "grid's own flags, or another --out to start afresh")
    assert main([*args, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "supervised seed 0: test accuracy" in err and err.count("(kept)") == 1  # seed 1 continued
    assert (grid / "supervised-seed1" / "summary.json").is_file()
    assert main([*args, "--resume"]) == 0
    assert capsys.readouterr().err.count("(kept)") == 2


def test_a_resumed_run_shows_progress_as_the_command_asks_not_as_its_worker_saved(tmp_path):
    from mixmatch.cli import build_parser, train_config

    run = tmp_path / "run"
    assert main(["train", "--steps", "4", "--eval-every", "4", "--no-progress", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["progress"] is False  # as a grid's worker saves it
    assert train_config(build_parser().parse_args(["train", "--resume", str(run)])).progress is True
    assert train_config(build_parser().parse_args(["train", "--resume", str(run), "--no-progress"])).progress is False


def test_runs_a_resumed_grid_starts_take_the_threads_its_first_runs_had(tmp_path, cpus, monkeypatch, capsys):
    from mixmatch.experiments import grid

    out = tmp_path / "grid"

    def argv(*seeds: str) -> list[str]:
        return ["compare", "--steps", "20", "--eval-every", "10", "--amp", "off", "--methods", "supervised",
                "--no-progress", "--out", str(out), "--resume", "--jobs", "1", "--seeds", *seeds]

    assert main([*argv("0"), "--threads", "1"]) == 0
    assert "no run of this grid in" in capsys.readouterr().err
    (out / "supervised-seed0" / "summary.json").unlink()  # stopped, as a worker of one thread leaves it
    cpus(2)
    trained = []
    monkeypatch.setattr(grid, "_train", lambda cfg, fitted, again: trained.append((cfg.seed, cfg.threads, again))
                        or {"test_accuracy": 0.5, "wall_seconds": 1.0})
    monkeypatch.setattr("mixmatch.experiments.report.report", lambda runs, out, key: "table")
    # Finished one after another with auto threads: the new seed still trains on the grid's one thread.
    assert main(argv("0", "1")) == 0
    assert trained == [(0, 1, True), (1, 1, False)]


def test_a_ctrl_c_while_the_table_is_written_says_the_runs_are_finished(tmp_path, monkeypatch, capsys):
    def interrupted(runs, out, key):
        raise KeyboardInterrupt

    monkeypatch.setattr("mixmatch.experiments.report.report", interrupted)
    grid = tmp_path / "grid"
    args = ["compare", "--steps", "4", "--eval-every", "4", "--amp", "off", "--methods", "supervised", "--jobs", "1",
            "--no-progress", "--out", str(grid)]
    assert main(args) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"mixmatch: interrupted while writing the grid's table; its runs are finished in {grid}: the same command "
        "with --resume writes it")
    monkeypatch.undo()
    assert main([*args, "--resume"]) == 0
    assert (grid / "results.md").is_file() and "(kept)" in capsys.readouterr().err


@pytest.mark.parametrize("length", [["--minutes", "1"], ["--max-minutes", "1", "--steps", "400"]])
def test_a_fitted_grid_keeps_each_methods_own_settings_and_ramp_up_share(length, tmp_path, cpus, monkeypatch, capsys):
    from mixmatch.config import METHOD_DEFAULTS
    from mixmatch.experiments import grid
    from mixmatch.training import trainer

    cpus(1)
    # A step of 0.2 s: a minute (less a margin) is 270 steps, so the cap cuts 400 steps to that.
    monkeypatch.setattr(trainer, "time_run", lambda cfg, data: (0.2, 0.0))
    trained = {}
    monkeypatch.setattr(grid, "_train", lambda cfg, fitted, again: trained.setdefault(cfg.method, cfg) and {
        "test_accuracy": 0.5, "wall_seconds": 1.0})
    monkeypatch.setattr("mixmatch.experiments.report.report", lambda runs, out, key: "table")
    methods = ["mixmatch", "mixup", "vat", "ict", "fixmatch"]
    assert main(["compare", *length, "--amp", "off", "--methods", *methods, "--out", str(tmp_path)]) == 0
    steps = trained["mixmatch"].steps
    assert 200 < steps < 300 and {cfg.steps for cfg in trained.values()} == {steps}
    assert [trained[m].lambda_u for m in methods[1:]] == [METHOD_DEFAULTS[m]["lambda_u"] for m in methods[1:]]
    assert (trained["mixup"].rampup_steps, trained["fixmatch"].rampup_steps) == (0, 0)
    assert all(abs(trained[m].rampup_steps - 0.4 * steps) <= 1 for m in ("vat", "ict"))  # their files' warmup_pos
    assert trained["fixmatch"].optimizer == "sgd" and trained["ict"].alpha == 0.75
