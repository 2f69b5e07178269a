"""Two processes on CPU (gloo): the torchrun CLI against one process, and what DDP must keep equal."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from mixmatch import runfolder
from mixmatch.config import TrainConfig
from mixmatch.training import checkpoint
from mixmatch.training.trainer import Trainer

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Every logged loss of the two-process run within LOSS_TOLERANCE of the one-process run, and their mean
# gap within MEAN_TOLERANCE. The two runs draw different batches, so the curves agree only as two seeds
# of one process do: between seeds 0, 1 and 2 of this setting the largest gap was 0.08, the mean 0.035.
LOSS_TOLERANCE = 0.15
MEAN_TOLERANCE = 0.07


def losses(run) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.slow
def test_torchrun_two_processes_follow_the_one_process_loss_curve(tmp_path):
    args = ["train", "--steps", "200", "--batch-size", "32", "--log-every", "25", "--eval-every", "200"]
    args += ["--checkpoint-every", "100", "--amp", "off", "--no-progress"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = subprocess.Popen(
        [*launcher, "-m", "mixmatch", *args, "--out", str(tmp_path / "two")],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    one = subprocess.run(
        [sys.executable, "-m", "mixmatch", *args, "--out", str(tmp_path / "one")], env=ENV, capture_output=True
    )
    out, err = two.communicate(timeout=300)
    assert two.returncode == 0 and one.returncode == 0, err
    assert json.loads(out)["steps"] == 200, "rank 0 alone prints the summary"

    curve_one, curve_two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(curve_one) == len(curve_two) == 8, "rank 0 alone writes metrics"
    gaps = [abs(a - b) for a, b in zip(curve_one, curve_two, strict=True)]
    assert max(gaps) < LOSS_TOLERANCE and sum(gaps) / len(gaps) < MEAN_TOLERANCE, (curve_one, curve_two)
    assert curve_two[-1] < 0.6 * curve_two[0]

    state = checkpoint.safe_load(runfolder.checkpoints(tmp_path / "two")[-1])
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    config = TrainConfig(steps=6, batch_size=32, log_every=3, eval_every=6, amp="off", progress=False, out=out)
    trainer = Trainer(config)
    assert trainer.local_batch == 16
    draws = trainer.dist.gather(torch.randint(10**9, (4,)))
    assert not torch.equal(draws[0], draws[1]), "each process draws its own batches"
    trainer.fit()
    for name, module in (("model", trainer.model), ("EMA", trainer.ema)):
        states = trainer.dist.gather(module.state_dict())
        for key, value in states[0].items():
            assert torch.equal(value, states[1][key]), f"{name} {key} differs between the processes"
    running = [m.running_mean for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(r.abs().sum() > 0 for r in running), "BatchNorm statistics were updated"
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_weights_batchnorm_statistics_and_ema_stay_identical_on_every_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path / "run")), nprocs=2)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 6, 6]


def test_sync_bn_is_refused_on_cpu(tmp_path):
    with pytest.raises(ValueError, match="--sync-bn needs CUDA"):
        Trainer(TrainConfig(device="cpu", sync_bn=True, out=str(tmp_path / "run")))


@pytest.mark.parametrize(("group", "expected"), [((0, 1, 0), "cuda:3"), ((1, 2, 1), "cuda:1")])
def test_plain_cuda_becomes_an_indexed_device_before_set_device(monkeypatch, group, expected):
    """torch.cuda.set_device refuses `cuda` without an index (the first GPU check crashed on it)."""
    from mixmatch.training.distributed import ProcessGroup

    chosen = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: chosen.append(device))
    device = ProcessGroup(*group).device(torch.device("cuda"))
    assert str(device) == expected and chosen == [device] and chosen[0].index is not None
    assert ProcessGroup(0, 1, 0).device(torch.device("cpu")) == torch.device("cpu")


def test_under_torchrun_rank_0_alone_says_an_error(monkeypatch, capsys):
    from mixmatch.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, said in (("1", ""), ("0", "mixmatch: error: --steps must be positive, got 0\n")):
        monkeypatch.setenv("RANK", rank)
        assert main(["train", "--steps", "0"]) == 2
        assert capsys.readouterr().err == said
