"""The result tables in README.md are the ones `mixmatch report` makes from the committed run folders.

A table sits between `<!-- results/NAME -->` and `<!-- /results/NAME -->`; NAME's run folders (those
holding a summary.json) or, for the sharpening demo, its runs.json are read again and the table rebuilt.
Rows are compared as a set: the order of rows follows the order in which folders were given.
"""

import json
import re
from pathlib import Path

import pytest

from mixmatch.experiments.ablate import paper_column
from mixmatch.experiments.demo import demo_table
from mixmatch.experiments.report import aggregate, markdown_table, read_run

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"<!-- (results/[\w./-]+) -->\n(.*?)\n<!-- /\1 -->", README, flags=re.S)


def rebuilt_table(folder: Path, header: str) -> str:
    if (folder / "runs.json").exists():
        return demo_table(json.loads((folder / "runs.json").read_text())["runs"])[1]
    key = header.split("|")[1].strip()
    runs = [read_run(d) for d in sorted(folder.iterdir()) if (d / "summary.json").exists()]
    table = markdown_table(aggregate(runs, key), key)
    return paper_column(table) if "paper" in header else table


def test_readme_has_result_tables():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize(("name", "block"), BLOCKS, ids=[name for name, _ in BLOCKS])
def test_readme_table_is_rebuilt_from_committed_runs(name, block):
    folder = ROOT / name
    assert folder.is_dir(), f"README shows {name}, which is not committed"
    lines = block.strip().splitlines()
    expected = rebuilt_table(folder, lines[0]).splitlines()
    assert lines[:2] == expected[:2]
    assert sorted(lines[2:]) == sorted(expected[2:])


def test_old_summaries_get_the_median_of_the_last_20_evaluations_from_metrics():
    """Committed runs predate the figure in summary.json; `mixmatch report` takes it from metrics.jsonl."""
    run = ROOT / "results" / "ablate-digits-50" / "mixmatch-seed0"
    assert "median_test_accuracy_last_20" not in json.loads((run / "summary.json").read_text())
    lines = (run / "metrics.jsonl").read_text().splitlines()
    accuracies = [r["test_accuracy"] for r in map(json.loads, lines) if "test_accuracy" in r]
    assert len(accuracies) == 20
    last = sorted(accuracies[-20:])
    assert read_run(run)["summary"]["median_test_accuracy_last_20"] == (last[9] + last[10]) / 2


def test_layout_names_every_module_once_and_nothing_else():
    """README's Layout section has one line per module of src/mixmatch and lists no module that is gone."""
    layout = README[README.index("## Layout") :]
    block = layout[layout.index("```") + 3 : layout.index("```", layout.index("```") + 3)]
    listed = [line.split()[0] for line in block.strip().splitlines() if line.startswith("src/mixmatch/")]
    modules = sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "src" / "mixmatch").rglob("*.py") if p.name != "__main__.py"
    )
    modules.remove("src/mixmatch/__init__.py")
    assert sorted(listed) == modules
