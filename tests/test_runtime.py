"""Where and how a run computes: memory format and CPU thread choices."""

import os

import pytest
import torch

from mixmatch.config import TrainConfig
from mixmatch.training import runtime
from mixmatch.training.trainer import train


@pytest.mark.parametrize(
    ("mode", "bf16", "device", "expected"),
    [
        ("auto", False, "cpu", True),  # oneDNN's convolutions want NHWC in fp32 too
        ("auto", True, "cpu", True),
        ("auto", False, "cuda", False),
        ("auto", True, "cuda", True),
        ("off", True, "cpu", False),
        ("on", False, "cuda", True),
    ],
)
def test_channels_last_choice(mode, bf16, device, expected):
    assert runtime.use_channels_last(mode, bf16, torch.device(device)) is expected


def test_free_cpus_is_between_none_and_the_cpus_this_process_may_use():
    allowed = len(os.sched_getaffinity(0))
    assert 0 <= runtime.free_cpus(0.05) <= allowed + 1e-9


@pytest.mark.parametrize(("free", "current", "expected"), [(2.0, 2, 2), (1.2, 2, 1), (0.1, 2, 1), (2.0, 1, 1)])
def test_auto_threads_take_the_idle_cpus_never_more_than_torchs_count(monkeypatch, free, current, expected):
    monkeypatch.setattr(runtime, "free_cpus", lambda interval=0.1: free)
    monkeypatch.setattr(torch, "get_num_threads", lambda: current)
    assert runtime.pick_threads(None) == expected
    assert runtime.pick_threads(3) == 3  # as given


def test_a_run_uses_its_threads_and_gives_torchs_count_back(tmp_path, digits, monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(runtime, "free_cpus", lambda interval=0.1: 0.0)  # every CPU busy: one thread
    cfg = TrainConfig(steps=2, eval_every=2, progress=False, out=str(tmp_path / "run"), amp="off")
    summary = train(cfg, digits)
    assert summary["threads"] == 1 and summary["channels_last"] is True
    assert torch.get_num_threads() == before
    assert train(TrainConfig(**{**cfg.to_dict(), "threads": 1}), digits)["threads"] == 1


def test_compile_mode_replays_cuda_graphs_on_one_gpu_only():
    assert runtime.compile_mode(torch.device("cuda"), distributed=False) == "reduce-overhead"
    assert runtime.compile_mode(torch.device("cuda"), distributed=True) is None
    assert runtime.compile_mode(torch.device("cpu"), distributed=False) is None


def test_step_begin_marks_a_new_cuda_graph_step_only_in_that_mode(monkeypatch):
    marked = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marked.append(1))
    runtime.CompiledOrEager(torch.nn.Linear(2, 2)).step_begin()
    assert marked == []
    runtime.CompiledOrEager(torch.nn.Linear(2, 2), "reduce-overhead").step_begin()
    assert marked == [1]
