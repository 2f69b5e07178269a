"""Checkpoints of a run: written atomically, the last few kept, loaded without unpickling code.

A checkpoint is `RUN_DIR/checkpoints/step-NNNNNNNN.pt`, a torch.save of plain containers and tensors
only (RNG states included, as tensors and ints), so `torch.load(weights_only=True)` reads it; a file
holding any other Python object is refused rather than executed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import re
import signal
import threading
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .config import TrainConfig

FORMAT = "mixmatch-checkpoint/1"
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"step-(\d+)\.pt")


class CheckpointError(ValueError):
    """A checkpoint, exported model or run folder that cannot be used; its message is one line."""


# ---- files ------------------------------------------------------------------------------------


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(temporary path) and move the result onto `path` in one step.

    A crash or SIGKILL mid-write leaves the previous file intact (and a stray temporary file), never a
    truncated `path`: os.replace within one folder is atomic, and fsync makes the bytes durable first.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoints of a run folder, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    found = [(int(m.group(1)), p) for p in folder.glob("step-*.pt") if (m := _NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path:
    found = checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"{run_dir} has no checkpoint (nothing in {Path(run_dir) / CHECKPOINT_DIR})")
    return found[-1]


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:08d}.pt"


def save_checkpoint(state: dict[str, Any], path: Path, keep: int) -> None:
    """Write `state` to `path` (from checkpoint_path) and delete all but the newest `keep` checkpoints."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))
    run_dir = path.parent.parent
    for old in checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    # Temporary files of processes killed mid-write.
    for stray in path.parent.glob(".step-*.pt.tmp-*"):
        stray.unlink(missing_ok=True)


def remove_checkpoints(run_dir: str | Path) -> None:
    """Delete a run folder's checkpoints: a fresh run there must not resume, or keep, an earlier run's."""
    for path in checkpoints(run_dir):
        path.unlink()


def safe_load(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """torch.load with weights_only=True: tensors and plain containers only, never code.

    Raises CheckpointError (one line) for a missing, truncated or foreign file, and for one that holds
    other Python objects (a pickle that would run code on loading is one of those).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        with warnings.catch_warnings():
            # A foreign pickle's protocol warning would add lines to the one-line error.
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"refused to load {what} {path}: it holds Python objects other than tensors, which could run "
            f"code on loading (only weights-only files are read)"
        ) from None
    except Exception as error:  # torch raises OSError, RuntimeError, KeyError... for a damaged file
        raise CheckpointError(f"{what} {path} is truncated or not a {what} ({type(error).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a mixmatch checkpoint")
    return state


def describe(meta: dict[str, Any]) -> str:
    """A model description in words, for error messages."""
    c, s = meta["in_channels"], meta["image_size"]
    return f"a {meta['arch']} for {meta['num_classes']} classes of {c}x{s}x{s} images"


def check_compatible(saved: dict[str, Any], expected: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint of another architecture, class count or image shape."""
    keys = ("arch", "num_classes", "in_channels", "image_size")
    if not all(k in saved for k in keys):
        raise CheckpointError(f"checkpoint {path} does not say which model it holds")
    if any(saved[k] != expected[k] for k in keys):
        raise CheckpointError(f"checkpoint {path} holds {describe(saved)}; this run builds {describe(expected)}")


def run_config(run_dir: str | Path) -> TrainConfig:
    """The config a run folder was started with (its config.json), for --resume."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no config.json)")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON ({error})") from None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CheckpointError(f"{path} has settings this mixmatch does not know: {', '.join(unknown)}")
    return TrainConfig(**values)


# ---- state ------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every random generator of this process, as tensors and ints (weights-only loadable)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return dict(
        torch=torch.get_rng_state(),
        cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        numpy=dict(keys=torch.from_numpy(keys.astype(np.int64)), pos=pos, has_gauss=has_gauss, gauss=gauss),
        python=dict(version=version, internal=torch.tensor(internal, dtype=torch.int64), gauss_next=gauss_next),
    )


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """True if no tensor holds NaN or inf (one host sync for all of them)."""
    flags = [t.isfinite().all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


class StopSignals:
    """Turns SIGINT and SIGTERM into a flag the training loop polls, so it stops at a step boundary.

    A second signal of the same kind acts as it would without this (a second Ctrl-C interrupts at
    once). Outside the main thread, where Python cannot install handlers, it does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        signal.signal(signum, self._restorable(signum))

    def _restorable(self, sig: int) -> Any:
        previous = self._previous[sig]
        return signal.SIG_DFL if previous is None else previous

    def __exit__(self, *exc: object) -> None:
        for sig in self._previous:
            signal.signal(sig, self._restorable(sig))
