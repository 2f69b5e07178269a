"""Where and how a run computes: device, bf16 autocast, memory format, torch.compile, seeds and determinism."""

from __future__ import annotations

import os
import random
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

# torch.compile costs a minute or more of compiling and saves a tenth of a step or so on a CPU: it pays only on
# long runs (docs/performance.md has the figures).
COMPILE_AUTO_MIN_STEPS = 20_000


def pick_device(name: str) -> torch.device:
    """auto: CUDA where present, else the CPU; ValueError for a CUDA device on a machine without CUDA."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for, but CUDA is not available here")
    return device


def cpu_has_bf16() -> bool:
    """True where the CPU has bf16 matrix units (AVX512-BF16 or AMX), which make bf16 autocast pay."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(amp: str, device: torch.device) -> bool:
    """--amp auto: bf16 autocast where the device computes bf16 natively; bf16 or off as asked."""
    if amp == "off":
        return False
    if amp == "bf16":
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def use_channels_last(mode: str, bf16: bool, device: torch.device) -> bool:
    """--channels-last auto: on CPUs (oneDNN's convolutions want NHWC, in fp32 as in bf16; docs/performance.md),
    on GPUs with bf16 autocast."""
    if mode != "auto":
        return mode == "on"
    return device.type == "cpu" or bf16


def _cpu_times(cpus: set[int]) -> tuple[float, float]:
    """(idle, total) jiffies of the given CPUs from /proc/stat (idle counts iowait too)."""
    idle = total = 0.0
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                values = [float(v) for v in fields[:8]]
                idle += values[3] + values[4]
                total += sum(values)
    return idle, total


def usable_cpus() -> set[int]:
    """The CPUs this process may run on."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def free_cpus(interval: float = 0.1) -> float:
    """How many of the CPUs this process may run on sat idle over `interval` seconds (Linux; else all)."""
    cpus = usable_cpus()
    try:
        idle0, total0 = _cpu_times(cpus)
        time.sleep(interval)
        idle1, total1 = _cpu_times(cpus)
    except (OSError, ValueError):
        return float(len(cpus))
    if total1 <= total0:
        return float(len(cpus))
    return len(cpus) * (idle1 - idle0) / (total1 - total0)


def pick_threads(threads: int | None) -> int:
    """CPU threads for a run: `threads` as given, or auto (None): the CPUs other processes leave idle.

    Why: torch's OpenMP threads wait for each other at the end of every operation, so when another process
    holds one of two cores, the thread that shares it makes every operation wait for a time slice (measured in
    docs/performance.md).
    auto never goes above torch's current count (what OMP_NUM_THREADS or torch.set_num_threads chose).
    """
    if threads is not None:
        return threads
    return max(1, min(torch.get_num_threads(), round(free_cpus())))


def use_compile(mode: str, steps: int) -> bool:
    """auto: compile long runs where inductor has the C++ compiler it needs."""
    if mode != "auto":
        return mode == "on"
    return steps >= COMPILE_AUTO_MIN_STEPS and any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++"))


def compile_mode(device: torch.device, distributed: bool) -> str | None:
    """torch.compile's mode for a device: "reduce-overhead" (the model's kernels replayed as CUDA graphs) on
    one GPU, inductor's default elsewhere.

    At the paper's batch of 64 a WRN-28-2 step on a GPU is bound by kernel launches, which compiling alone does
    not remove and CUDA graphs do (docs/performance.md). Under torchrun DDP's gradient hooks run between the
    graphs, so several processes keep the default mode.
    """
    return "reduce-overhead" if device.type == "cuda" and not distributed else None


class CompiledOrEager:
    """torch.compile(module, mode=mode), or the module itself for good once compiling fails.

    A missing compiler or an operation inductor cannot handle should cost speed, not the run: the failure
    is reported as a warning and the step goes on in eager mode. `module` is the eager module, `compiled`
    its compiled wrapper (None after a failure). With CUDA graphs ("reduce-overhead"), call `step_begin()`
    at the start of every training step: the outputs of the last step's replays may be overwritten from then on.
    """

    def __init__(self, module: nn.Module, mode: str | None = None):
        self.module = module
        self.cuda_graphs = mode == "reduce-overhead"
        self.compiled: Any = torch.compile(module, mode=mode)

    def step_begin(self) -> None:
        if self.cuda_graphs and self.compiled is not None:
            torch.compiler.cudagraph_mark_step_begin()

    def __call__(self, x: Tensor) -> Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except Exception as error:  # noqa: BLE001 (any compiler failure: eager gives the same result)
                reason = " ".join(str(error).split())[:200]
                warnings.warn(f"torch.compile failed, going on without it (--compile off hides this): {reason}",
                              stacklevel=2)
                self.compiled = None
        return self.module(x)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (torch's on every device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def use_deterministic_algorithms(device: torch.device) -> None:
    """Deterministic kernels only. CPU kernels already are at a fixed thread count; CUDA's need this."""
    if device.type == "cuda":
        # cuBLAS reads this when it first starts, which is after this point.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)


def rng_state() -> dict[str, Any]:
    """Every random generator of this process, as tensors and ints (so a weights-only checkpoint holds it)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return dict(
        torch=torch.get_rng_state(),
        cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        numpy=dict(keys=torch.from_numpy(keys.astype(np.int64)), pos=pos, has_gauss=has_gauss, gauss=gauss),
        python=dict(version=version, internal=torch.tensor(internal, dtype=torch.int64), gauss_next=gauss_next),
    )


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore an rng_state(); CUDA's only on a machine with as many devices as wrote it."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))
