"""README.md and docs/: every result table is the one `mixmatch report` makes from the committed run folders, and
every link and code name points at something that exists.

A table sits between `<!-- results/NAME -->` and `<!-- /results/NAME -->`; NAME's run folders (those its runs.txt
names, where `mixmatch report --out` wrote one, else those in it holding a summary.json) or, for the sharpening demo,
its runs.json are read again and the table rebuilt. Rows are compared
as a set: the order of rows follows the order in which folders were given.
"""

import importlib
import inspect
import json
import pkgutil
import re
from pathlib import Path

import pytest

import mixmatch
from mixmatch.experiments.ablate import paper_column
from mixmatch.experiments.demo import demo_table
from mixmatch.experiments.report import aggregate, markdown_table, read_run, report_runs

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = {path: path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
BLOCKS = [
    (name, block, path)
    for path, text in PAGES.items()
    for name, block in re.findall(r"<!-- (results/[\w./-]+) -->\n(.*?)\n<!-- /\1 -->", text, flags=re.S)
]


def rebuilt_table(folder: Path, header: str) -> str:
    if (folder / "runs.json").exists():
        return demo_table(json.loads((folder / "runs.json").read_text())["runs"])[1]
    key = header.split("|")[1].strip()
    runs = [read_run(d) for d in report_runs(folder)]
    table = markdown_table(aggregate(runs, key), key)
    return paper_column(table) if "paper" in header else table


def test_readme_is_a_front_page_and_the_tables_are_in_it_and_the_docs():
    assert len(README.splitlines()) <= 250
    first_screen = "\n".join(README.splitlines()[:50])
    assert "## Two commands" in first_screen and ".venv/bin/python -m pytest" in first_screen
    assert sum(path.name == "README.md" for _, _, path in BLOCKS) >= 2
    assert sum(path.parent.name == "docs" for _, _, path in BLOCKS) >= 10


@pytest.mark.parametrize(("name", "block", "page"), BLOCKS, ids=[f"{p.name}:{n}" for n, _, p in BLOCKS])
def test_table_is_rebuilt_from_committed_runs(name, block, page):
    folder = ROOT / name
    assert folder.is_dir(), f"{page.name} shows {name}, which is not committed"
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


@pytest.mark.parametrize("page", list(PAGES), ids=[p.name for p in PAGES])
def test_every_link_points_at_a_file(page):
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", PAGES[page])
    missing = [link for link in links if not link.startswith(("http://", "https://")) and
               not (page.parent / link).exists()]
    assert not missing, missing


def package_classes() -> dict[str, type]:
    """Every class defined in the package, by name (a name defined twice keeps the first)."""
    classes: dict[str, type] = {}
    for info in pkgutil.walk_packages(mixmatch.__path__, "mixmatch."):
        if info.name.startswith("mixmatch.fastai") or info.name == "mixmatch.__main__":
            continue  # an optional extra, and the command itself
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and value.__module__ == module.__name__:
                classes.setdefault(name, value)
    return classes


def resolves(dotted: str) -> bool:
    """Whether `mixmatch.a.b.c` is a module or an attribute reached from one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(obj, attribute):
                return False
            obj = getattr(obj, attribute)
        return True
    return False


@pytest.mark.parametrize("page", list(PAGES), ids=[p.name for p in PAGES])
def test_every_code_name_exists(page):
    """Backquoted code names: `mixmatch.x.y` is importable, `Class.member` is a member of a package class, and a
    path under the repository (src/, docs/, results/, ...) is there (a glob, some file of it)."""
    classes = package_classes()

    def exists(name: str) -> bool:
        if re.fullmatch(r"mixmatch(\.\w+)+", name) and not name.endswith(".py"):  # not the official mixmatch.py
            return name.startswith("mixmatch.fastai") or resolves(name)
        if member := re.fullmatch(r"([A-Z]\w+)\.(\w+)(\(.*\))?", name):
            owner = classes.get(member.group(1))
            return owner is None or hasattr(owner, member.group(2))
        if re.fullmatch(r"(src|tests|bench|examples|results|docs)/[\w./*-]+", name):
            return bool(list(ROOT.glob(name.rstrip("/"))))
        return True

    gone = [name for name in re.findall(r"`([^`\n]+)`", PAGES[page]) if not exists(name)]
    assert not gone, gone


def test_a_gone_name_is_caught():
    assert not resolves("mixmatch.training.trainer.Trainer._forward_mixed")
    assert resolves("mixmatch.methods.mixmatch.MixMatchStep.forward_mixed")
    assert not hasattr(package_classes()["Trainer"], "_forward_mixed")
