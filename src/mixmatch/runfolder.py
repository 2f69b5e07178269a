"""The run folder's layout: the name of every file a run and its export write, and how they are written.

    RUN_DIR/config.json                    the TrainConfig the run started with (--resume reads it)
    RUN_DIR/split.json                     the labelled subset (--labeled-split reads it)
    RUN_DIR/metrics.jsonl                  one JSON record per log interval and per evaluation
    RUN_DIR/summary.json                   the finished run's figures
    RUN_DIR/checkpoints/step-NNNNNNNN.pt   the newest few checkpoints
    RUN_DIR/tensorboard/                   TensorBoard event files (--tensorboard)
    RUN_DIR/model.safetensors, model.json  `mixmatch export`: the evaluated weights and what rebuilds the model

Every file but metrics.jsonl (appended to, line by line) is written atomically: a crash leaves the old
file or the new one, never half of one. A write that fails (a read-only file system, no permission, a full
disk) raises WriteError, one line that names the path and the cause; `writable` checks a folder before the
work that will write there starts.

Nothing the product writes is read back as data: an image folder's scan passes over output folders
(`is_output_folder`) and PNGs tagged by `save_figure` (`OUR_SOFTWARE`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CONFIG = "config.json"
SPLIT = "split.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
MODEL = "model.safetensors"
# What a grid (`compare`, `ablate`), `report --out` and `demo` write beside their runs.
RESULTS_JSON = "results.json"
DEMO_RUNS = "runs.json"
# `report --out`'s list of the run folders it was made from, one a line, relative to the report folder.
REPORT_RUNS = "runs.txt"
# The Software text chunk of every PNG the product writes, by which an image folder's scan knows its own figures.
OUR_SOFTWARE = "mixmatch"

# Where a write failed, in words, by errno.
_CAUSES = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is used up",
    errno.ENOTDIR: "a file stands where a folder must be",
    errno.EISDIR: "a folder stands where the file must be",
}
# torch.save and safetensors report a failed write (a full disk, mostly) in their own exception types.
_WRITE_FAILED = re.compile(r"write failed|unexpected pos|No space|Read-only|Permission denied|IoError|os error")

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


class WriteError(ValueError):
    """A file or folder that cannot be written (read-only, no permission, no space); one line naming the path,
    the cause, and what was kept."""


def cause(error: BaseException, path: str | Path) -> str:
    """Why writing `path` failed, in words: from the errno of an OSError, else (torch.save's and safetensors'
    own errors) "no space left on the device" where its file system is full, else the error's first line."""
    if isinstance(error, OSError) and error.errno in _CAUSES:
        return _CAUSES[error.errno]
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    with contextlib.suppress(OSError):
        if shutil.disk_usage(folder).free < 1 << 20:
            return _CAUSES[errno.ENOSPC]
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return " ".join(str(error).split())[:120] or type(error).__name__


def _write_failed(error: BaseException) -> bool:
    return isinstance(error, OSError) or bool(_WRITE_FAILED.search(str(error)))


def writable(folder: str | Path, what: str = "output folder", hint: str = "") -> Path:
    """Check, before any work, that `folder` can be created (if it does not exist) and written in; returns it.

    Nothing is left behind: an existing folder gets a probe file, deleted at once; a missing one is not
    created (a probe folder is made and removed in the nearest folder that exists). Raises WriteError naming
    the folder and the cause, and `hint` (what to do instead) after them.
    """
    folder = Path(folder)
    target = folder
    while not target.exists() and target != target.parent:
        target = target.parent
    try:
        if not target.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(target))
        if target == folder:
            with tempfile.TemporaryFile(dir=folder, prefix=".mixmatch-probe-") as probe:
                probe.write(b"x")
                probe.flush()
                os.fsync(probe.fileno())
        else:
            os.rmdir(tempfile.mkdtemp(dir=target, prefix=".mixmatch-probe-"))
    except OSError as error:
        raise WriteError(
            f"cannot write the {what} {folder}: {cause(error, target)}; nothing was written{hint and f' ({hint})'}"
        ) from None
    return folder


def writable_file(path: str | Path, what: str, hint: str = "") -> Path:
    """Check, before any work, that the file `path` can be written (`writable` of its folder, and no folder in its
    place); returns it. Raises WriteError naming the file, or its folder, and the cause."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"cannot write the {what} {path}: {_CAUSES[errno.EISDIR]}; nothing was written")
    writable(path.parent, f"folder of the {what}", hint)
    return path


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an OSError inside the block into WriteError naming `path` and the cause."""
    try:
        yield
    except OSError as error:
        raise WriteError(f"cannot write {path}: {cause(error, path)}") from None


def make_folder(folder: str | Path) -> Path:
    """mkdir -p, or WriteError naming the folder and the cause."""
    folder = Path(folder)
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(temporary path) and move the result onto `path` in one step.

    A crash or SIGKILL mid-write leaves the previous file intact (and a stray temporary file, which
    remove_temporaries deletes), never a truncated `path`: os.replace within one folder is atomic, and
    fsync makes the bytes durable first. A write that fails (read-only, no space) raises WriteError, and
    the previous file, if any, is kept.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        # As a file opened for writing would be (some writers, safetensors among them, make theirs owner-only).
        tmp.chmod(0o666 & ~_umask())
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as error:
        if not _write_failed(error):
            raise
        kept = "; the previous file is kept" if path.exists() else ""
        raise WriteError(f"cannot write {path}: {cause(error, path)}{kept}") from None
    finally:
        # On a read-only or full file system the clean-up can fail too; that must not hide the first error.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _umask() -> int:
    """This process's umask (read without changing it where /proc tells it)."""
    try:
        line = next(li for li in Path("/proc/self/status").read_text().splitlines() if li.startswith("Umask:"))
        return int(line.split()[1], 8)
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def remove_temporaries(folder: Path, name_glob: str) -> None:
    """Delete the temporary files that processes killed inside atomic_write left of files named name_glob."""
    for stray in folder.glob(f".{name_glob}.tmp-*"):
        stray.unlink(missing_ok=True)


def write_json(path: Path, value: Any) -> None:
    """`value` as indented JSON, written atomically."""
    write_text(path, json.dumps(value, indent=2))


def write_text(path: Path, text: str) -> None:
    """`text` written atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def save_figure(fig: Any, path: str | Path, dpi: int) -> None:
    """A matplotlib figure as a PNG, written atomically and tagged with OUR_SOFTWARE, so that an image folder that
    holds it never reads it as a training image."""
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=dpi, format="png", metadata={"Software": OUR_SOFTWARE}))


def is_output_folder(folder: str | Path) -> bool:
    """Whether `folder` is one the product wrote: a run folder (config.json and split.json), a grid's or
    report's (results.json), or the sharpening demo's (runs.json)."""
    folder = Path(folder)
    return ((folder / CONFIG).is_file() and (folder / SPLIT).is_file()) or any(
        (folder / name).is_file() for name in (RESULTS_JSON, DEMO_RUNS)
    )
