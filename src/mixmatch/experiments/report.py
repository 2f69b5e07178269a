"""Run folders to tables and pictures: every table and curve in results/ is generated here, not typed."""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from .. import runfolder
from ..training.metrics import MEDIAN_OF_LAST, median_of_last, read_records

log = logging.getLogger(__name__)

# summary.json's key for the paper's statistic: the median test accuracy of the last 20 evaluations.
MEDIAN_KEY = f"median_test_accuracy_last_{MEDIAN_OF_LAST}"


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's summary, config and metrics (training records and evaluation records apart).

    A summary written before summary.json gave the median of the last 20 evaluations gets it from
    metrics.jsonl's evaluation records, and `evaluated_on` ("test" or "validation") from its --val-fraction.
    A metrics line cut short is skipped with a warning.
    """
    run_dir = Path(run_dir)
    summary_path = run_dir / runfolder.SUMMARY
    if not summary_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a finished run folder (no {runfolder.SUMMARY})")
    records = read_records(run_dir / runfolder.METRICS, warn=True)
    evaluations = [r for r in records if "test_accuracy" in r]
    summary = json.loads(summary_path.read_text())
    summary.setdefault(MEDIAN_KEY, median_of_last([r["test_accuracy"] for r in evaluations]))
    config = json.loads((run_dir / runfolder.CONFIG).read_text())
    summary.setdefault("evaluated_on", "validation" if config.get("val_fraction") else "test")
    return dict(
        dir=str(run_dir),
        summary=summary,
        config=config,
        train=[r for r in records if "loss" in r],
        eval=evaluations,
    )


def report_runs(folder: str | Path) -> list[Path]:
    """The run folders a report in `folder` was made from (its runs.txt), or else the run folders in it (a grid's).
    Raises FileNotFoundError where runs.txt names a folder that is gone."""
    folder = Path(folder)
    listed = folder / runfolder.REPORT_RUNS
    if not listed.is_file():
        return [d for d in sorted(folder.iterdir()) if (d / runfolder.SUMMARY).is_file()]
    runs = [folder / line for line in listed.read_text().splitlines() if line.strip()]
    gone = [str(d) for d in runs if not d.is_dir()]
    if gone:
        raise FileNotFoundError(f"{listed} names run folders that are gone: {', '.join(gone)}")
    return runs


def group_name(run: dict[str, Any], key: str) -> str:
    """The row a run belongs to in a table grouped by `key`: a config field, or "run" (the run folder's name,
    one row per run). Grouped by method, a tagged run is its own row, "method (tag)"."""
    if key == "run":
        return Path(run["dir"]).name
    config = run["config"]
    tag = config.get("tag")
    return f"{config[key]} ({tag})" if key == "method" and tag else str(config[key])


def aggregate(runs: list[dict[str, Any]], key: str = "method") -> list[dict[str, Any]]:
    """Group runs by config[key] (and labels) and give mean/std of accuracy and wall time over seeds.

    A row whose runs trained different numbers of steps shows the first run's and logs a warning naming them.

    Grouped by method, a run with a tag is its own row, "method (tag)": a variant beside the same baselines.
    """
    groups: dict[tuple[Any, Any], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[(group_name(run, key), run["summary"]["num_labels"])].append(run)
    rows = []
    for (name, labels), members in groups.items():
        steps = sorted({m["summary"]["steps"] for m in members})
        if len(steps) > 1:  # e.g. runs of one preset capped on different machines
            log.warning("row %s averages runs of different lengths: %s steps", name, ", ".join(map(str, steps)))
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
                methods=sorted({m["config"]["method"] for m in members}),
                evaluated_on=evaluated_on(members),
            )
        )
    return _gap_closed(rows)


def evaluated_on(runs: list[dict[str, Any]]) -> str:
    """What the runs' accuracies measure: "test", "validation", or "test and validation" (a warning)."""
    splits = sorted({run["summary"].get("evaluated_on", "test") for run in runs})
    if len(splits) > 1:
        log.warning("runs evaluated on different splits are reported together: %s", ", ".join(splits))
    return " and ".join(splits)


def _gap_closed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where the table holds one labelled-only and one fully supervised row, every other row gets
    `gap_closed`, (mean acc - mean labelled-only) / (mean fully supervised - mean labelled-only): the share
    of what all the labels would add that the unlabelled images gave; and `above_baseline_every_seed`,
    whether each run beat the labelled-only run of its seed."""
    plain = [dict(r) for r in rows]
    found = {m: [r for r in rows if r["methods"] == [m]] for m in ("supervised", "fully-supervised")}
    if any(len(f) != 1 for f in found.values()):
        return plain
    sup, full = found["supervised"][0], found["fully-supervised"][0]
    if full["accuracy_mean"] == sup["accuracy_mean"]:  # no gap to close
        return plain
    by_seed = dict(zip(sup["seeds"], sup["accuracies"], strict=True))
    for row, source in zip(plain, rows, strict=True):
        if source is sup or source is full:
            continue
        row["gap_closed"] = (row["accuracy_mean"] - sup["accuracy_mean"]) / (
            full["accuracy_mean"] - sup["accuracy_mean"]
        )
        row["above_baseline_every_seed"] = all(
            a > by_seed[s] for s, a in zip(row["seeds"], row["accuracies"], strict=True) if s in by_seed
        )
    return plain


def markdown_table(rows: list[dict[str, Any]], key: str = "method") -> str:
    """One row per aggregate() row: mean ± std over seeds of the final test (or validation) accuracy, of the
    median of the last 20 evaluations (the paper's statistic), the final error, steps and wall time; where the
    runs hold both baselines, the share of the gap between their means that each other row's mean closed."""
    gap = any("gap_closed" in r for r in rows)
    split = " and ".join(sorted({r["evaluated_on"] for r in rows}))
    lines = [
        f"| {key} | labels | runs | {split} accuracy (%) | median of last {MEDIAN_OF_LAST} (%) | error (%) | steps "
        "| wall time (s) |" + (" gap closed (%) |" if gap else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if gap else ""),
    ]
    for r in rows:
        spread = f" ± {100 * r['accuracy_std']:.2f}" if r["runs"] > 1 else ""
        median_spread = f" ± {100 * r['median_std']:.2f}" if r["runs"] > 1 else ""
        line = (
            f"| {r['name']} | {r['num_labels']} | {r['runs']} | {100 * r['accuracy_mean']:.2f}{spread} | "
            f"{100 * r['median_mean']:.2f}{median_spread} | {100 * (1 - r['accuracy_mean']):.2f} | {r['steps']} | "
            f"{r['wall_seconds_mean']:.1f} |"
        )
        if gap:
            line += f" {100 * r['gap_closed']:.0f} |" if "gap_closed" in r else " |"
        lines.append(line)
    return "\n".join(lines)


def plot_curves(runs: list[dict[str, Any]], path: str | Path, key: str = "method") -> None:
    """Test accuracy, training loss and lambda_u against steps, one line per run, coloured by config[key]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(group_name(run, key) for run in runs))
    colours = {name: f"C{i}" for i, name in enumerate(names)}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    labelled: set[str] = set()
    for run in runs:
        name = group_name(run, key)
        style = dict(color=colours[name], alpha=0.85, label=None if name in labelled else name)
        labelled.add(name)
        axes[0].plot([r["step"] for r in run["eval"]], [100 * r["test_accuracy"] for r in run["eval"]], **style)
        axes[1].plot([r["step"] for r in run["train"]], [r["loss"] for r in run["train"]], **style)
        axes[2].plot([r["step"] for r in run["train"]], [r["lambda_u"] for r in run["train"]], **style)
    for ax, title in zip(
        axes,
        (f"{evaluated_on(runs)} accuracy (%) of the evaluated model", "training loss", "lambda_u (ramp-up)"),
        strict=True,
    ):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend()
    first = runs[0]["summary"]
    fig.suptitle(f"{first['dataset']}, {first['num_labels']} labels, {len(runs)} runs")
    fig.tight_layout()
    runfolder.save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_error_against_labels(rows: list[dict[str, Any]], path: str | Path, title: str) -> None:
    """The paper's figure 2: test error (%) against the number of labels (log scale), one line per row name with
    the spread over seeds as error bars; a row trained on every label (fully supervised) is a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted({r["num_labels"] for r in rows})
    ceiling = [r for r in rows if r["num_labels"] == max(counts) and "fully-supervised" in r["methods"]]
    names = list(dict.fromkeys(r["name"] for r in rows if r not in ceiling))
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for i, name in enumerate(names):
        mine = sorted((r for r in rows if r["name"] == name), key=lambda r: r["num_labels"])
        # each line a few percent to the side, so that error bars at one label count do not hide each other
        dodge = math.exp(0.012 * (i - (len(names) - 1) / 2))
        ax.errorbar(
            [r["num_labels"] * dodge for r in mine],
            [100 * (1 - r["accuracy_mean"]) for r in mine],
            yerr=[100 * r["accuracy_std"] for r in mine],
            marker="o",
            capsize=3,
            color=f"C{i}",
            label=name,
        )
    for r in ceiling:
        ax.axhline(100 * (1 - r["accuracy_mean"]), color="black", ls="--", label=f"{r['name']} ({r['num_labels']})")
    ax.set_xscale("log")
    labelled = [c for c in counts if all(c != r["num_labels"] for r in ceiling)]
    ax.set_xticks(labelled, [str(c) for c in labelled])
    ax.minorticks_off()
    ax.set(xlabel="number of labelled images", ylabel="error (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    runfolder.save_figure(fig, path, dpi=110)
    plt.close(fig)


def report(run_dirs: list[str | Path], out: str | Path | None = None, key: str = "method") -> str:
    """Markdown table of the runs; with `out`, also writes there results.md, results.json, runs.txt (the run
    folders, relative to `out`, from which `report_runs` reads them again) and, where the runs have one number of
    labels, curves.png, where several, error-vs-labels.png (the paper's figure 2)."""
    runs = [read_run(d) for d in run_dirs]
    rows = aggregate(runs, key)
    table = markdown_table(rows, key)
    if out is not None:
        out = runfolder.make_folder(out)
        runfolder.write_text(out / "results.md", table + "\n")
        runfolder.write_json(out / runfolder.RESULTS_JSON, rows)
        sources = [Path(os.path.relpath(Path(d).resolve(), out.resolve())).as_posix() for d in run_dirs]
        runfolder.write_text(out / runfolder.REPORT_RUNS, "\n".join(sources) + "\n")
        if len({r["num_labels"] for r in rows if "fully-supervised" not in r["methods"]}) <= 1:
            plot_curves(runs, out / "curves.png", key)
        else:
            dataset = runs[0]["summary"]["dataset"]
            plot_error_against_labels(
                rows, out / "error-vs-labels.png", f"{dataset}: {evaluated_on(runs)} error against labels"
            )
    return table
