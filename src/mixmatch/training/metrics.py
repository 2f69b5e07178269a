"""A run's metrics: always metrics.jsonl, and TensorBoard event files with --tensorboard."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import statistics
from pathlib import Path
from typing import Any

from .. import runfolder

# The paper reports the median error of the last 20 checkpoints (arXiv:1905.02249, section 4.1).
MEDIAN_OF_LAST = 20

log = logging.getLogger(__name__)


def require_tensorboard() -> None:
    if importlib.util.find_spec("tensorboard") is None:
        raise ValueError("--tensorboard needs the tensorboard package (pip install 'mixmatch[tensorboard]')")


def median_of_last(accuracies: list[float], n: int = MEDIAN_OF_LAST) -> float:
    """The median of the last `n` test accuracies (of all of them if fewer); NaN if there are none."""
    return statistics.median(accuracies[-n:]) if accuracies else float("nan")


class MetricsLog:
    """Appends one JSON record per line to RUN_DIR/metrics.jsonl (and scalars to RUN_DIR/tensorboard).

    Resuming at step S keeps the records up to S and drops later ones, which a killed run wrote after its
    last checkpoint and the resumed run writes again; a line cut short (a kill mid-write, a full disk) is
    dropped with a warning. `run_dir=None` (processes other than rank 0) writes nothing. `accuracies`
    holds the test accuracy of every evaluation in the file, in order.
    """

    def __init__(self, run_dir: Path | None, resume_step: int | None = None, tensorboard: bool = False):
        self.file = None
        self.writer = None
        self.accuracies: list[float] = []
        if run_dir is None:
            return
        self.path = path = run_dir / runfolder.METRICS
        kept = [] if resume_step is None else [r for r in read_records(path, warn=True) if r["step"] <= resume_step]
        runfolder.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        self.accuracies = [r["test_accuracy"] for r in kept if "test_accuracy" in r]
        with runfolder.writing(path):
            self.file = path.open("a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / runfolder.TENSORBOARD), purge_step=resume_step)

    def write(self, record: dict[str, Any]) -> None:
        if "test_accuracy" in record:
            self.accuracies.append(record["test_accuracy"])
        if self.file is None:
            return
        # A record per log interval is rare enough to flush each: a killed run loses none.
        with runfolder.writing(self.path):
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self.writer.add_scalar(key, value, record["step"])

    def flush(self) -> None:
        if self.file is not None:
            with runfolder.writing(self.path):
                self.file.flush()
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.file is not None:
            # A full disk fails the close too (its buffer is written then); the write's own error came first.
            with contextlib.suppress(OSError):
                self.file.close()
        if self.writer is not None:
            self.writer.close()


def read_records(path: Path, warn: bool = False) -> list[dict[str, Any]]:
    """The complete records of a metrics file, in order ([] if there is no file).

    A line that is not a JSON record (cut short by a kill or a full disk) is skipped; with `warn`, one
    warning line names the lines skipped.
    """
    if not path.is_file():
        return []
    records, damaged = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            damaged.append(number)
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
        else:
            damaged.append(number)
    if damaged and warn:
        lines = ", ".join(map(str, damaged[:5])) + (" ..." if len(damaged) > 5 else "")
        log.warning(f"mixmatch: dropped {len(damaged)} line(s) of {path} that are cut short or not a record "
                    f"(line {lines})")
    return records
