"""The run folder's layout: the name of every file a run and its export write, and how they are written.

    RUN_DIR/config.json                    the TrainConfig the run started with (--resume reads it)
    RUN_DIR/split.json                     the labelled subset (--labeled-split reads it)
    RUN_DIR/metrics.jsonl                  one JSON record per log interval and per evaluation
    RUN_DIR/summary.json                   the finished run's figures
    RUN_DIR/checkpoints/step-NNNNNNNN.pt   the newest few checkpoints
    RUN_DIR/tensorboard/                   TensorBoard event files (--tensorboard)
    RUN_DIR/model.safetensors, model.json  `mixmatch export`: the evaluated weights and what rebuilds the model

Every file but metrics.jsonl (appended to, line by line) is written atomically: a crash leaves the old
file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONFIG = "config.json"
SPLIT = "split.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
MODEL = "model.safetensors"

_CHECKPOINT_NAME = re.compile(r"step-(\d+)\.pt")


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """RUN_DIR/checkpoints/step-NNNNNNNN.pt: zero-padded, so names sort as steps do."""
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}.pt"


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoint files of a run folder, oldest first (other files in checkpoints/ are ignored)."""
    folder = Path(run_dir) / CHECKPOINTS
    found = [(int(m.group(1)), p) for p in folder.glob("step-*.pt") if (m := _CHECKPOINT_NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def model_meta_path(model: str | Path) -> Path:
    """The JSON that describes an exported weights file: model.json beside model.safetensors."""
    return Path(model).with_suffix(".json")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(temporary path) and move the result onto `path` in one step.

    A crash or SIGKILL mid-write leaves the previous file intact (and a stray temporary file, which
    remove_temporaries deletes), never a truncated `path`: os.replace within one folder is atomic, and
    fsync makes the bytes durable first.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_temporaries(folder: Path, name_glob: str) -> None:
    """Delete the temporary files that processes killed inside atomic_write left of files named name_glob."""
    for stray in folder.glob(f".{name_glob}.tmp-*"):
        stray.unlink(missing_ok=True)


def write_json(path: Path, value: Any) -> None:
    """`value` as indented JSON, written atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2)))
