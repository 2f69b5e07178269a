"""Run folders to tables and pictures: every table and curve in results/ is generated here, not typed."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from . import runfolder as R
from .metrics import MEDIAN_OF_LAST, median_of_last, read_records

# summary.json's key for the paper's statistic: the median test accuracy of the last 20 evaluations.
MEDIAN_KEY = f"median_test_accuracy_last_{MEDIAN_OF_LAST}"


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's summary, config and metrics (training records and evaluation records apart).

    A summary written before summary.json gave the median of the last 20 evaluations gets it from
    metrics.jsonl's evaluation records. A metrics line cut short is skipped with a warning.
    """
    run_dir = Path(run_dir)
    summary_path = run_dir / R.SUMMARY
    if not summary_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a finished run folder (no {R.SUMMARY})")
    records = read_records(run_dir / R.METRICS, warn=True)
    evaluations = [r for r in records if "test_accuracy" in r]
    summary = json.loads(summary_path.read_text())
    summary.setdefault(MEDIAN_KEY, median_of_last([r["test_accuracy"] for r in evaluations]))
    return dict(
        dir=str(run_dir),
        summary=summary,
        config=json.loads((run_dir / R.CONFIG).read_text()),
        train=[r for r in records if "loss" in r],
        eval=evaluations,
    )


def aggregate(runs: list[dict[str, Any]], key: str = "method") -> list[dict[str, Any]]:
    """Group runs by config[key] (and labels) and give mean/std of accuracy and wall time over seeds."""
    groups: dict[tuple[Any, Any], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[(run["config"][key], run["summary"]["num_labels"])].append(run)
    rows = []
    for (name, labels), members in groups.items():
        acc = [m["summary"]["test_accuracy"] for m in members]
        median = [m["summary"][MEDIAN_KEY] for m in members]
        wall = [m["summary"]["wall_seconds"] for m in members]
        rows.append(
            dict(
                name=name,
                num_labels=labels,
                runs=len(members),
                seeds=[m["summary"]["seed"] for m in members],
                accuracy_mean=statistics.fmean(acc),
                accuracy_std=statistics.stdev(acc) if len(acc) > 1 else 0.0,
                accuracies=acc,
                median_mean=statistics.fmean(median),
                median_std=statistics.stdev(median) if len(median) > 1 else 0.0,
                wall_seconds_mean=statistics.fmean(wall),
                steps=members[0]["summary"]["steps"],
            )
        )
    return rows


def markdown_table(rows: list[dict[str, Any]], key: str = "method") -> str:
    """One row per aggregate() row: mean ± std over seeds of the final test accuracy, of the median of the
    last 20 evaluations (the paper's statistic), the final error, steps and wall time."""
    lines = [
        f"| {key} | labels | runs | test accuracy (%) | median of last {MEDIAN_OF_LAST} (%) | error (%) | steps "
        "| wall time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        spread = f" ± {100 * r['accuracy_std']:.2f}" if r["runs"] > 1 else ""
        median_spread = f" ± {100 * r['median_std']:.2f}" if r["runs"] > 1 else ""
        lines.append(
            f"| {r['name']} | {r['num_labels']} | {r['runs']} | {100 * r['accuracy_mean']:.2f}{spread} | "
            f"{100 * r['median_mean']:.2f}{median_spread} | {100 * (1 - r['accuracy_mean']):.2f} | {r['steps']} | "
            f"{r['wall_seconds_mean']:.1f} |"
        )
    return "\n".join(lines)


def plot_curves(runs: list[dict[str, Any]], path: str | Path, key: str = "method") -> None:
    """Test accuracy, training loss and lambda_u against steps, one line per run, coloured by config[key]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(run["config"][key] for run in runs))
    colours = {name: f"C{i}" for i, name in enumerate(names)}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    labelled: set[str] = set()
    for run in runs:
        name = run["config"][key]
        style = dict(color=colours[name], alpha=0.85, label=None if name in labelled else name)
        labelled.add(name)
        axes[0].plot([r["step"] for r in run["eval"]], [100 * r["test_accuracy"] for r in run["eval"]], **style)
        axes[1].plot([r["step"] for r in run["train"]], [r["loss"] for r in run["train"]], **style)
        axes[2].plot([r["step"] for r in run["train"]], [r["lambda_u"] for r in run["train"]], **style)
    for ax, title in zip(
        axes, ("test accuracy (%) of the evaluated model", "training loss", "lambda_u (ramp-up)"), strict=True
    ):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend()
    first = runs[0]["summary"]
    fig.suptitle(f"{first['dataset']}, {first['num_labels']} labels, {len(runs)} runs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(run_dirs: list[str | Path], out: str | Path | None = None, key: str = "method") -> str:
    """Markdown table of the runs; with `out`, also writes results.md, results.json and curves.png there."""
    runs = [read_run(d) for d in run_dirs]
    rows = aggregate(runs, key)
    table = markdown_table(rows, key)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.md").write_text(table + "\n")
        (out / "results.json").write_text(json.dumps(rows, indent=2))
        plot_curves(runs, out / "curves.png", key)
    return table
