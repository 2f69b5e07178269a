"""Checkpoints of a run: saved atomically, the last few kept, loaded without unpickling code.

A checkpoint (runfolder.checkpoint_path) is a torch.save of plain containers and tensors only (RNG states
included, as tensors and ints), so `torch.load(weights_only=True)` reads it; a file holding any other
Python object is refused rather than executed. A run folder whose newest checkpoint is damaged (a disk
that filled, a copy that broke) resumes and exports from the newest one that loads.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import signal
import threading
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import Tensor

from .. import runfolder
from ..config import TrainConfig, read_settings

FORMAT = "mixmatch-checkpoint/1"

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint, exported model or run folder that cannot be used; its message is one line."""


# ---- files ------------------------------------------------------------------------------------


def save_checkpoint(state: dict[str, Any], path: Path, keep: int) -> None:
    """Write `state` to `path` (from runfolder.checkpoint_path) and delete all but the newest `keep` checkpoints."""
    runfolder.make_folder(path.parent)
    runfolder.atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))
    run_dir = path.parent.parent
    for old in runfolder.checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    runfolder.remove_temporaries(path.parent, "step-*.pt")


def remove_checkpoints(run_dir: str | Path) -> None:
    """Delete a run folder's checkpoints: a fresh run there must not resume, or keep, an earlier run's."""
    for path in runfolder.checkpoints(run_dir):
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
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error) and "Unsupported class" not in str(error):
            raise CheckpointError(f"{what} {path} is truncated or not a {what} ({_damage(path, error)})") from None
        raise CheckpointError(
            f"refused to load {what} {path}: it holds Python objects other than tensors, which could run "
            f"code on loading (only weights-only files are read)"
        ) from None
    except Exception as error:  # torch raises OSError, RuntimeError, KeyError... for a damaged file
        raise CheckpointError(f"{what} {path} is truncated or not a {what} ({_damage(path, error)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a mixmatch checkpoint")
    return state


def _damage(path: Path, error: Exception) -> str:
    """What is wrong with a file torch.load failed on, in words."""
    size = path.stat().st_size
    if size == 0:
        return "0 bytes: an empty file"
    with path.open("rb") as f:
        zip_start = f.read(4) == b"PK\x03\x04"
    # torch.save writes a zip archive, whose directory is at its end.
    if not zip_start:
        return f"{size} bytes: not a file torch.save writes (no zip archive)"
    if not zipfile.is_zipfile(path):
        return f"{size} bytes: cut short, the end of its zip archive is missing"
    first = " ".join(str(error).split()).split(". ")[0][:200]
    return f"{size} bytes: {type(error).__name__}: {first}"


def load_newest(run_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of a run folder that loads, and its state (safe_load's).

    Newer ones that do not load are skipped with one warning line that names each and why; CheckpointError
    if the folder has none, or none loads (the message gives the newest one's problem).
    """
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"{run_dir} is not a folder (a run folder holds its checkpoints)")
    found = runfolder.checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"{run_dir} has no checkpoint (nothing in {Path(run_dir) / runfolder.CHECKPOINTS})")
    problems: list[str] = []
    for path in reversed(found):
        try:
            state = safe_load(path)
        except CheckpointError as error:
            problems.append(str(error))
            continue
        if problems:
            skipped = f"skipped {len(problems)} newer checkpoint(s) that do not load"
            log.warning(f"mixmatch: {skipped}, using {path}: {'; '.join(problems)}")
        return path, state
    if len(found) == 1:
        raise CheckpointError(problems[0])
    raise CheckpointError(f"none of the {len(found)} checkpoints of {run_dir} loads; the newest: {problems[0]}")


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


# What a resumed run may change: where and how it continues. Of these, a device or thread count other than the
# run's own changes the floating-point sums, so the resumed steps are not those of an uninterrupted run.
RESUME_OVERRIDES = ("device", "progress", "data_dir", "download", "threads")


def run_config(run_dir: str | Path) -> TrainConfig:
    """The config a run folder was started with (its config.json), for --resume."""
    path = Path(run_dir) / runfolder.CONFIG
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no {runfolder.CONFIG})")
    return TrainConfig(**read_settings(path))


def resume_config(run_dir: str | Path, overrides: dict[str, Any]) -> TrainConfig:
    """The config a stopped run continues with: its config.json, which records what each `auto` resolved to when it
    started (device, precision, memory format, compiling, CPU threads), with `overrides` (RESUME_OVERRIDES).

    One warning line where an override changes the device or the thread count the run computed with, while steps
    remain, or where the run's config.json does not record its thread count (a run from before it did);
    CheckpointError where the run, or --device, names a CUDA device this machine does not have.
    """
    import torch

    saved = run_config(run_dir)
    resumed = dataclasses.replace(saved, out=str(run_dir), **overrides).validate()
    if resumed.device.startswith("cuda") and not torch.cuda.is_available():
        if "device" in overrides:
            raise CheckpointError(f"--device {resumed.device}: this machine has no CUDA device")
        raise CheckpointError(
            f"{run_dir} trained on {saved.device}, and this machine has no CUDA device: continue it on the CPU with "
            "--device cpu (not bit-identical to an uninterrupted run)"
        )
    if (Path(run_dir) / runfolder.SUMMARY).is_file():  # finished: nothing left to compute differently
        return resumed
    for name in ("device", "threads"):
        theirs, mine = getattr(saved, name), getattr(resumed, name)
        if theirs is not None and mine != theirs:
            log.warning(
                f"mixmatch: warning: {run_dir} computed with --{name} {theirs}; continuing with --{name} {mine}, the "
                "rest of the run sums in another order, so it will not end with the weights of an uninterrupted run"
            )
    if saved.threads is None and resumed.threads is None:
        log.warning(
            f"mixmatch: warning: {Path(run_dir) / runfolder.CONFIG} does not record the thread count the run started "
            "with (it predates that): it continues on auto threads, which is exact only if they are as many"
        )
    return resumed


# ---- state ------------------------------------------------------------------------------------


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """True if no tensor holds NaN or inf (one host sync for all of them)."""
    flags = [t.isfinite().all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


class StopSignals:
    """Turns SIGINT and SIGTERM into a flag the training loop polls, so it stops at a step boundary.

    A second signal of the same kind acts as it would without this (a second Ctrl-C interrupts at
    once). Outside the main thread, where Python cannot install handlers, it does nothing. A signal that
    the process took before entering and deferred (`deferred`: a grid's worker, between and before its
    runs, mixmatch.grid) counts as received on entry, so the loop stops after its first step.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    deferred = 0

    def __init__(self) -> None:
        self.received = StopSignals.deferred
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
