"""A run's metrics: always metrics.jsonl, and TensorBoard event files with --tensorboard."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write


def require_tensorboard() -> None:
    if importlib.util.find_spec("tensorboard") is None:
        raise ValueError("--tensorboard needs the tensorboard package (pip install 'mixmatch[tensorboard]')")


class MetricsLog:
    """Appends one JSON record per line to RUN_DIR/metrics.jsonl (and scalars to RUN_DIR/tensorboard).

    Resuming at step S keeps the records up to S and drops later ones, which a killed run wrote after its
    last checkpoint and the resumed run writes again. `run_dir=None` (processes other than rank 0)
    writes nothing.
    """

    def __init__(self, run_dir: Path | None, resume_step: int | None = None, tensorboard: bool = False):
        self.file = None
        self.writer = None
        if run_dir is None:
            return
        path = run_dir / "metrics.jsonl"
        if resume_step is None:
            path.write_text("")
        else:
            kept = [r for r in _records(path) if r["step"] <= resume_step]
            atomic_write(path, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in kept)))
        self.file = path.open("a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)

    def write(self, record: dict[str, Any]) -> None:
        if self.file is None:
            return
        # A record per log interval is rare enough to flush each: a killed run loses none.
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self.writer.add_scalar(key, value, record["step"])

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()


def _records(path: Path) -> list[dict[str, Any]]:
    """The complete records of a metrics file; a line cut short by a kill is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
