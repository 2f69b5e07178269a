"""Checkpoints: exact resume after SIGKILL and from a damaged run, SIGTERM/SIGINT stops, bad files, NaN."""

import json
import logging
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from mixmatch import runfolder
from mixmatch.config import TrainConfig
from mixmatch.data import ImageDataset
from mixmatch.training import checkpoint
from mixmatch.training.runtime import rng_state, set_rng_state
from mixmatch.training.trainer import Trainer, TrainingDiverged, TrainingInterrupted

# Bit-exact runs on CPU need the same kernels and reduction order in the killed, the resumed and the
# uninterrupted process: one intra-op thread everywhere (also faster on two shared cores), fp32 (no bf16
# autocast, which depends on the CPU), contiguous memory format, and deterministic algorithms.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
EXACT = ["--amp", "off", "--channels-last", "off", "--deterministic", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mixmatch", *args]


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the training process did not get there in time")
        time.sleep(0.01)


def records(run: pathlib.Path) -> list[dict]:
    """metrics.jsonl without the wall-clock times, which differ between runs."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in rows]


@pytest.mark.slow
def test_sigkill_then_resume_gives_bit_identical_weights(tmp_path):
    args = ["train", "--steps", "160", "--batch-size", "16", "--log-every", "20", "--eval-every", "80"]
    args += ["--checkpoint-every", "40", "--keep-checkpoints", "2", *EXACT]
    full, cut = tmp_path / "full", tmp_path / "cut"
    uninterrupted = subprocess.Popen(cli(*args, "--out", str(full)), env=ENV, stdout=subprocess.DEVNULL)
    killed = subprocess.Popen(cli(*args, "--out", str(cut)), env=ENV, stdout=subprocess.DEVNULL)
    wait_for(lambda: runfolder.checkpoints(cut) or killed.poll() is not None)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert not (cut / "summary.json").exists(), "the run finished before the kill; make it longer"
    killed_at = int(runfolder.checkpoints(cut)[-1].stem.split("-")[1])

    resumed = subprocess.run(cli("train", "--resume", str(cut), "--no-progress"), env=ENV, capture_output=True)
    assert resumed.returncode == 0, resumed.stderr
    assert uninterrupted.wait() == 0

    a, b = checkpoint.safe_load(runfolder.checkpoints(full)[-1]), checkpoint.safe_load(runfolder.checkpoints(cut)[-1])
    assert a["step"] == b["step"] == 160 and killed_at < 160
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume at step {killed_at}"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    # metrics.jsonl was appended to (records up to the checkpoint kept, later ones written again once)
    assert records(full) == records(cut)
    summary = json.loads(resumed.stdout)
    assert summary == json.loads((cut / "summary.json").read_text()) and summary["steps"] == 160
    assert summary["test_accuracy"] == json.loads((full / "summary.json").read_text())["test_accuracy"]


# `mixmatch ARGS...` with runtime.free_cpus, the seam of --threads auto, reporting IDLE CPUs: the load of the moment.
UNDER_LOAD = (
    "import sys, mixmatch.training.runtime as r; idle = float(sys.argv.pop(1)); "
    "r.free_cpus = lambda interval=0.1: idle; from mixmatch.cli import main; sys.exit(main(sys.argv[1:]))"
)


def cli_with_idle(idle: int, *args: str) -> list[str]:
    return [sys.executable, "-c", UNDER_LOAD, str(idle), *args]


@pytest.mark.slow
def test_sigkill_then_resume_under_another_load_keeps_the_threads_and_the_weights(tmp_path):
    """Default flags (auto threads, precision and memory format): started with 2 idle CPUs, killed, resumed with 1
    idle; the run keeps the 2 threads its config.json records and ends bit-identical to an uninterrupted one."""
    env = {**ENV, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    args = ["train", "--steps", "120", "--batch-size", "16", "--log-every", "20", "--eval-every", "60"]
    args += ["--checkpoint-every", "40", "--no-progress"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    done = subprocess.run(cli_with_idle(2, *args, "--out", str(full)), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    killed = subprocess.Popen(cli_with_idle(2, *args, "--out", str(cut)), env=env, stdout=subprocess.DEVNULL)
    wait_for(lambda: runfolder.checkpoints(cut) or killed.poll() is not None)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert not (cut / "summary.json").exists(), "the run finished before the kill; make it longer"
    recorded = json.loads((cut / "config.json").read_text())
    assert recorded["threads"] == 2 and recorded["amp"] in ("bf16", "off") and recorded["channels_last"] == "on"
    assert recorded["device"] == "cpu" and recorded["compile"] == "off"

    resumed = subprocess.run(cli_with_idle(1, "train", "--resume", str(cut), "--no-progress"), env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"mixmatch: continuing {cut} from step 40 of 120 (step-00000040.pt, cpu, 2 CPU threads)" in resumed.stderr
    a, b = checkpoint.safe_load(runfolder.checkpoints(full)[-1]), checkpoint.safe_load(runfolder.checkpoints(cut)[-1])
    assert a["step"] == b["step"] == 120
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after a resume under another load"


def test_resume_says_when_the_threads_or_device_differ_from_the_runs_own(finished_run, tmp_path, capsys, caplog,
                                                                         monkeypatch):
    from mixmatch.cli import main

    run = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(finished_run), str(run)], check=True)
    (run / "summary.json").unlink()
    (runfolder.checkpoints(run)[-1]).unlink()
    recorded = json.loads((run / "config.json").read_text())["threads"]
    assert isinstance(recorded, int)
    other = recorded + 1
    with caplog.at_level(logging.WARNING):
        assert main(["train", "--resume", str(run), "--threads", str(other), "--no-progress"]) == 0
    assert f"computed with --threads {recorded}; continuing with --threads {other}" in caplog.text
    assert "will not end with the weights of an uninterrupted run" in caplog.text
    assert f"({runfolder.checkpoints(run)[0].name}, cpu, {other} CPU threads)" in capsys.readouterr().err

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    caplog.clear()
    assert main(["train", "--resume", str(run), "--device", "cuda", "--no-progress"]) == 2
    assert capsys.readouterr().err == "mixmatch: error: --device cuda: this machine has no CUDA device\n"
    assert not caplog.text, "no warning before the error"
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "device": "cuda"}))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mixmatch: error: {run} trained on cuda, and this machine has no CUDA device: continue it on the "
                   "CPU with --device cpu (not bit-identical to an uninterrupted run)"]
    assert main(["train", "--resume", str(run), "--threads", "0", "--no-progress"]) == 2
    assert capsys.readouterr().err == "mixmatch: error: --threads must be >= 1, got 0\n"


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_says_where(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--steps", "100000", "--batch-size", "16", "--log-every", "10", "--checkpoint-every", "0"]
    process = subprocess.Popen(
        cli(*args, *EXACT, "--out", str(run)), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics = run / "metrics.jsonl"
    wait_for(lambda: (metrics.is_file() and metrics.stat().st_size > 0) or process.poll() is not None)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("mixmatch: stopped by SIGTERM at step "), stderr
    saved = pathlib.Path(line.split("checkpoint saved to ")[1].split(";")[0])
    assert saved.is_file() and runfolder.checkpoints(run) == [saved]
    step = int(line.split("at step ")[1].split(";")[0])
    assert checkpoint.safe_load(saved)["step"] == step > 0
    assert f"mixmatch train --resume {run}" in line
    assert not (run / "summary.json").exists()


@pytest.mark.slow
def test_a_stopped_grid_saves_each_running_run_and_resume_finishes_it_as_if_never_stopped(tmp_path):
    """SIGTERM to a compare grid in two workers: both runs stop with a checkpoint and the third never starts;
    `--resume` then finishes the grid with the results of one that was never stopped."""
    grid, whole = tmp_path / "grid", tmp_path / "whole"
    args = ["compare", "--steps", "600", "--eval-every", "200", "--batch-size", "16", "--log-every", "10",
            "--checkpoint-every", "0", "--methods", "mixmatch", "supervised", "fully-supervised", "--jobs", "2",
            "--threads", "1", *EXACT]
    process = subprocess.Popen(cli(*args, "--out", str(grid)), env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    logs = [grid / f"{method}-seed0" / "metrics.jsonl" for method in ("mixmatch", "supervised")]
    wait_for(lambda: all(log.is_file() and log.stat().st_size > 0 for log in logs) or process.poll() is not None)
    process.send_signal(signal.SIGTERM)  # to the parent alone: it passes the stop on
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("mixmatch: stopped by SIGTERM: 2 runs saved a checkpoint ("), stderr
    assert line.endswith("), 1 not started; finish the grid: the same command with --resume")
    for method in ("mixmatch", "supervised"):
        run = grid / f"{method}-seed0"
        assert str(run) in line and len(runfolder.checkpoints(run)) == 1 and not (run / "summary.json").exists()
    assert not (grid / "fully-supervised-seed0" / "metrics.jsonl").exists()

    for out, extra in ((grid, ["--resume"]), (whole, [])):
        done = subprocess.run(cli(*args, *extra, "--out", str(out)), env=ENV, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    finished, uninterrupted = (json.loads((out / "results.json").read_text()) for out in (grid, whole))
    assert [r["accuracies"] for r in finished] == [r["accuracies"] for r in uninterrupted]
    for method in ("mixmatch", "supervised", "fully-supervised"):
        a, b = (checkpoint.safe_load(runfolder.checkpoints(out / f"{method}-seed0")[-1]) for out in (grid, whole))
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), method


def config(tmp_path, **overrides) -> TrainConfig:
    values = dict(steps=20, batch_size=16, eval_every=10, log_every=5, progress=False, amp="off")
    values.update(out=str(tmp_path / "run"), **overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, digits) -> pathlib.Path:
    tmp_path = tmp_path_factory.mktemp("finished")
    Trainer(config(tmp_path, checkpoint_every=10, keep_checkpoints=5), digits).fit()
    return tmp_path / "run"


def test_checkpoints_are_kept_and_rotated(tmp_path, digits):
    Trainer(config(tmp_path, checkpoint_every=4, keep_checkpoints=2), digits).fit()
    names = [p.name for p in runfolder.checkpoints(tmp_path / "run")]
    assert names == ["step-00000016.pt", "step-00000020.pt"]
    assert not list((tmp_path / "run" / "checkpoints").glob(".*")), "no temporary files left behind"
    # A fresh run in the same folder starts without the earlier run's checkpoints.
    Trainer(config(tmp_path, steps=8, checkpoint_every=4, keep_checkpoints=2), digits).fit()
    assert [p.name for p in runfolder.checkpoints(tmp_path / "run")] == ["step-00000004.pt", "step-00000008.pt"]


def test_sigint_stops_at_the_step_with_a_checkpoint(tmp_path, digits):
    trainer = Trainer(config(tmp_path, checkpoint_every=0), digits)
    interrupt_at(trainer, 8)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGINT at step 8") as stop:
        trainer.fit()
    assert stop.value.signum == signal.SIGINT
    assert [p.name for p in runfolder.checkpoints(tmp_path / "run")] == ["step-00000008.pt"]
    assert signal.getsignal(signal.SIGINT) is handler, "the previous handler is back"


def test_nan_stops_naming_the_step_and_the_last_checkpoint(tmp_path, digits, monkeypatch):
    trainer = Trainer(config(tmp_path, checkpoint_every=5, log_every=10), digits)
    monkeypatch.setattr(trainer.method, "lambda_u_at", lambda step: float("nan") if step >= 10 else 1.0)
    # The loss turns NaN in step 11; the checkpoint of step 15 comes before the log record of step 20.
    with pytest.raises(TrainingDiverged, match=r"at step 15.*the last checkpoint is .*step-00000010\.pt"):
        trainer.fit()
    assert [p.name for p in runfolder.checkpoints(tmp_path / "run")] == ["step-00000005.pt", "step-00000010.pt"]
    for path in runfolder.checkpoints(tmp_path / "run"):
        assert checkpoint.all_finite(checkpoint.safe_load(path)["model"].values())


def test_resume_drops_metrics_written_after_the_checkpoint(tmp_path, digits):
    run = tmp_path / "run"
    Trainer(config(tmp_path, checkpoint_every=10, keep_checkpoints=5), digits).fit()
    before = records(run)
    # As if killed after the records of step 20 but before its checkpoint.
    runfolder.checkpoints(run)[-1].unlink()
    resumed = Trainer(config(tmp_path, checkpoint_every=10, keep_checkpoints=5), digits)
    assert resumed.resume().name == "step-00000010.pt" and resumed.step == 10
    resumed.fit()
    assert [r["step"] for r in records(run)] == [5, 10, 10, 15, 20, 20]
    assert records(run) == before


def test_truncated_checkpoint_is_one_line(finished_run, tmp_path, cli_error):
    run = tmp_path / "copy"
    run.mkdir()
    (run / "config.json").write_text((finished_run / "config.json").read_text())
    (run / "checkpoints").mkdir()
    data = runfolder.checkpoints(finished_run)[-1].read_bytes()
    (run / "checkpoints" / "step-00000020.pt").write_bytes(data[: len(data) // 2])
    assert "is truncated or not a checkpoint" in cli_error("train", "--resume", str(run))


def interrupt_at(trainer: Trainer, step: int) -> None:
    """SIGINT during `step`: fit() saves a checkpoint at its end and raises TrainingInterrupted."""
    train_step = trainer.train_step

    def interrupted_step():
        if trainer.step == step - 1:
            signal.raise_signal(signal.SIGINT)
        return train_step()

    trainer.train_step = interrupted_step


def test_damaged_newest_checkpoint_and_cut_metrics_resume_from_the_one_before(tmp_path, digits, caplog):
    """A run stopped at step 20 whose step-20 checkpoint was then cut in half (a full disk, a broken copy)
    and whose metrics.jsonl ends mid-line resumes from step 10 and ends as the uninterrupted run does."""
    settings = dict(steps=30, checkpoint_every=10, keep_checkpoints=5, channels_last="off")
    full = Trainer(config(tmp_path / "full", **settings), digits)
    full.fit()
    damaged = Trainer(config(tmp_path / "cut", **settings), digits)
    interrupt_at(damaged, 20)
    with pytest.raises(TrainingInterrupted):
        damaged.fit()
    run = tmp_path / "cut" / "run"
    newest = runfolder.checkpoints(run)[-1]
    assert newest.name == "step-00000020.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 25, "loss": 0.3')

    resumed = Trainer(config(tmp_path / "cut", **settings), digits)
    with caplog.at_level(logging.WARNING):
        assert resumed.resume().name == "step-00000010.pt" and resumed.step == 10
    [skipped] = caplog.messages
    assert "skipped 1 newer checkpoint(s) that do not load, using" in skipped and "step-00000010.pt" in skipped
    assert f"{newest} is truncated or not a checkpoint ({len(data) // 2} bytes: cut short" in skipped
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        resumed.fit()
    [cut_line] = caplog.messages
    assert "dropped 1 line(s) of" in cut_line and "metrics.jsonl that are cut short" in cut_line

    a, b = full.state_dict(), resumed.state_dict()
    assert a["step"] == b["step"] == 30
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert records(run) == records(tmp_path / "full" / "run")


def test_a_run_whose_checkpoints_are_all_damaged_names_the_newest_problem(finished_run, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for step in (10, 20):
        (run / "checkpoints" / f"step-{step:08d}.pt").write_bytes(b"")
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"none of the 2 checkpoints of .* loads; the newest: checkpoint "
                       r".*step-00000020\.pt is truncated or not a checkpoint \(0 bytes: an empty file"):
        checkpoint.load_newest(run)
    (run / "checkpoints" / "step-00000010.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"truncated or not a checkpoint \(23 bytes: not a file torch.save "):
        checkpoint.safe_load(run / "checkpoints" / "step-00000010.pt")


def test_pickle_with_code_is_refused(finished_run, tmp_path, capsys):
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "model": Payload()}, path)
    with pytest.raises(checkpoint.CheckpointError, match="refused to load checkpoint .*objects other than tensors"):
        checkpoint.safe_load(path)
    assert not marker.exists()


def test_checkpoint_of_another_architecture_is_refused(finished_run, digits, tmp_path):
    trainer = Trainer(config(tmp_path, arch="wrn28_2"), digits)
    path = runfolder.checkpoints(finished_run)[-1]
    message = "holds a cnn for 10 classes of 1x8x8 images; this run builds a wrn28_2 for 10 classes"
    with pytest.raises(checkpoint.CheckpointError, match=message):
        trainer.load_state_dict(checkpoint.safe_load(path), path)


def test_checkpoint_of_another_class_count_is_refused(finished_run, digits, tmp_path):
    keep_train, keep_test = digits.train_labels < 5, digits.test_labels < 5
    five = ImageDataset(
        "digits",
        digits.train_images[keep_train],
        digits.train_labels[keep_train],
        digits.test_images[keep_test],
        digits.test_labels[keep_test],
        digits.classes[:5],
    )
    trainer = Trainer(config(tmp_path, num_labels=25), five)
    path = runfolder.checkpoints(finished_run)[-1]
    with pytest.raises(checkpoint.CheckpointError, match="holds a cnn for 10 classes .* builds a cnn for 5 classes"):
        trainer.load_state_dict(checkpoint.safe_load(path), path)


def test_foreign_and_missing_files_are_one_line(finished_run, tmp_path, cli_error):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(checkpoint.CheckpointError, match="is not a mixmatch checkpoint"):
        checkpoint.safe_load(tmp_path / "foreign.pt")
    assert "is not a run folder" in cli_error("train", "--resume", str(tmp_path / "nothing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((finished_run / "config.json").read_text())
    assert "has no checkpoint" in cli_error("train", "--resume", str(empty))
    message = cli_error("train", "--resume", str(finished_run), "--steps", "50", "--lr", "0.1")
    assert "with its own config.json; drop --steps, --lr" in message


def test_rng_state_round_trips():
    state = rng_state()
    expected = (torch.rand(3), np.random.rand(3).tolist(), random.random())
    set_rng_state(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.random.rand(3).tolist() == expected[1]
    assert random.random() == expected[2]


def test_tensorboard_gets_the_jsonl_scalars(tmp_path, digits):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Trainer(config(tmp_path, tensorboard=True), digits).fit()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert {"loss", "loss_u", "test_accuracy"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss")] == [5, 10, 15, 20]


def test_tensorboard_flag_without_the_package_is_refused(tmp_path, digits, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ValueError, match="--tensorboard needs the tensorboard package"):
        Trainer(config(tmp_path, tensorboard=True), digits)
