"""The benchmark scripts under bench/ run end to end on a CPU in a tiny setting."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["digits", "fashion-mnist"])
def test_gpu_check_runs_tiny_on_a_cpu(tmp_path, dataset, request):
    data_dir = str(request.getfixturevalue("shared_data")) if dataset == "fashion-mnist" else "unused"
    out = tmp_path / "gpu"
    cmd = [sys.executable, str(BENCH / "gpu.py"), "--tiny", "--device", "cpu", "--dataset", dataset,
           "--data-dir", data_dir, "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1].startswith("gpu check: done in")
    report = json.loads((out / "gpu.json").read_text())
    assert report["matmul_tflops"] > 0 and report["step"]["flops_per_step"] > 0
    assert set(report["step"]["paths"]) == {"reference", "eager"}  # compiling and graphs are skipped when tiny
    for entry in report["step"]["paths"].values():
        assert entry["paper_schedule_hours"] == pytest.approx(2**20 * entry["ms_per_step"] / 1000 / 3600)
        assert entry["fraction_of_matmul_peak"] > 0
    summary = json.loads((out / "run-summary.json").read_text())
    assert summary["dataset"] == dataset and summary["arch"] == "wrn28_2" and summary["steps"] == 4
    assert report["run"]["test_accuracy"] == summary["test_accuracy"]
    assert "| reference |" in (out / "gpu.md").read_text()


@pytest.mark.slow
def test_cpu_bench_runs_tiny_and_gives_each_round_its_own_peak(tmp_path):
    out = tmp_path / "cpu.json"
    cmd = [sys.executable, str(BENCH / "cpu.py"), "--models", "digits", "--steps", "4", "--rounds", "2",
           "--warmup", "1", "--jobs", "2", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 thread," in done.stdout and "fp32 peak in each round" in done.stdout
    report = json.loads(out.read_text())
    side = report["side_by_side"]
    assert side["jobs"] == 2 and len(side["rounds"]) == 2 and "2 processes of 1 thread side by side" in done.stdout
    for r in side["rounds"]:  # two workers' steps per second: each its own, summed, so more than zero
        assert r["side_by_side_steps_per_s"] > 0 and r["one_steps_per_s"] > 0 and r["peak"] > 0
    result = report["models"]["digits"]
    assert len(result["fp32_peak_per_round"]) == 2 and min(result["fp32_peak_per_round"]) > 0
    assert set(result["paths"]) == {"reference", "fp32-nchw", "fp32", "default"}
    for entry in result["paths"].values():
        per_round = entry["fraction_of_fp32_peak_per_round"]
        assert len(per_round) == 2 and entry["fraction_of_fp32_peak"] == pytest.approx(sum(per_round) / 2)
        if not entry["bf16"]:  # one figure for an fp32 path, not a second one against the start's peak
            assert entry["fraction_of_own_peak"] == entry["fraction_of_fp32_peak"]


@pytest.mark.slow
def test_main_job_bench_times_the_whole_command_per_setting(tmp_path):
    out = tmp_path / "main.json"
    cmd = [sys.executable, str(BENCH / "main_job.py"), "--seeds", "0", "--steps", "20", "--settings", "default",
           "one-by-one", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr[-2000:]
    settings = json.loads(out.read_text())["settings"]
    assert settings["one-by-one"]["flags"] == ["--jobs", "1"]
    assert settings["one-by-one"]["side_by_side"] == "" and "one after another" in done.stdout
    for entry in settings.values():
        assert len(entry["seconds"]) == 1 and entry["median_seconds"] == entry["seconds"][0] > 0


@pytest.mark.slow
@pytest.mark.skipif(not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")), reason="no C++ compiler")
def test_whole_step_bench_compiles_the_loss_and_runs_the_librarys_step():
    cmd = [sys.executable, str(BENCH / "whole_step.py"), "--steps", "2", "--rounds", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "bf16 units: " in done.stdout and "1 thread, torch" in done.stdout
    assert done.stdout.count("compiled/eager") == 1
