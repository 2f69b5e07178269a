"""Which classes did the unlabelled images help? Per-class test accuracy of run folders, one row per method.

Exports each run's newest checkpoint (its EMA weights, `mixmatch export`), evaluates it on the run's
evaluation split (`mixmatch evaluate`, in fp32), and prints a Markdown table: for each row of `mixmatch
report` (method, or "method (tag)"), the mean over its runs of the accuracy on each true class, in percent.
The data come from each run's own --data-dir unless --data-dir is given.

    python examples/per_class.py results/fashion-mnist-100/*-seed* --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from mixmatch.data.dataset import DataError
from mixmatch.experiments.report import group_name, read_run
from mixmatch.export import evaluate, export
from mixmatch.training.checkpoint import CheckpointError


def per_class_rows(runs: list[str], data_dir: str | None) -> dict[str, list[dict[str, float]]]:
    """{row name: [per-class accuracy of each of its runs]}."""
    rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        for i, run_dir in enumerate(runs):
            run = read_run(run_dir)
            config = run["config"]
            model = export(run_dir, Path(tmp) / f"{i}.safetensors")
            result = evaluate(model, config["dataset"], data_dir or config["data_dir"], out=Path(tmp) / f"{i}.png",
                              val_fraction=config["val_fraction"])
            rows[group_name(run, "method")].append(result["per_class_accuracy"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (with checkpoints)")
    parser.add_argument("--data-dir", default=None, help="where the runs' data set is (default: each run's own)")
    args = parser.parse_args()
    try:
        rows = per_class_rows(args.runs, args.data_dir)
    except (FileNotFoundError, DataError, CheckpointError) as error:
        sys.exit(f"per_class.py: error: {error}")
    classes = list(next(iter(rows.values()))[0])
    print("| method | runs | " + " | ".join(classes) + " |")
    print("|---|---:|" + "---:|" * len(classes))
    for name, runs in sorted(rows.items()):
        means = [100 * sum(r[c] for r in runs) / len(runs) for c in classes]
        print(f"| {name} | {len(runs)} | " + " | ".join(f"{m:.1f}" for m in means) + " |")


if __name__ == "__main__":
    main()
