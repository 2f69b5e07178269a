"""Tables from run records: the share of the labelled-only to fully supervised gap that a method closes."""

from pathlib import Path

import pytest

from mixmatch.experiments.report import aggregate, markdown_table


def run(method, seed, accuracy, tag=None, labels=100, steps=10):
    return dict(
        dir=f"runs/{method}-{tag}-seed{seed}",
        config=dict(method=method, tag=tag),
        summary=dict(
            num_labels=labels,
            seed=seed,
            test_accuracy=accuracy,
            median_test_accuracy_last_20=accuracy,
            wall_seconds=1.0,
            steps=steps,
        ),
    )


def test_gap_closed_is_the_issue_trackers_ratio_of_means_and_tagged_variants_are_rows():
    runs = [
        *(run("supervised", s, a) for s, a in enumerate([0.70, 0.72, 0.68])),
        *(run("fully-supervised", s, a, labels=60000) for s, a in enumerate([0.90, 0.92, 0.88])),
        *(run("mixmatch", s, a) for s, a in enumerate([0.85, 0.86, 0.84])),
        *(run("mixmatch", s, a, tag="plain") for s, a in enumerate([0.80, 0.71, 0.78])),
    ]
    rows = {r["name"]: r for r in aggregate(runs)}
    assert set(rows) == {"supervised", "fully-supervised", "mixmatch", "mixmatch (plain)"}
    assert rows["mixmatch"]["gap_closed"] == pytest.approx((0.85 - 0.70) / (0.90 - 0.70))
    assert rows["mixmatch (plain)"]["gap_closed"] == pytest.approx((0.7633333 - 0.70) / 0.20, rel=1e-6)
    assert rows["mixmatch"]["above_baseline_every_seed"]
    assert not rows["mixmatch (plain)"]["above_baseline_every_seed"]  # 0.71 against seed 1's 0.72
    assert "gap_closed" not in rows["supervised"] and "gap_closed" not in rows["fully-supervised"]
    table = markdown_table(aggregate(runs)).splitlines()
    assert table[0].endswith("| gap closed (%) |")
    assert next(line for line in table if line.startswith("| mixmatch |")).endswith("| 75 |")
    assert next(line for line in table if line.startswith("| supervised |")).endswith("| |")


def test_without_both_baselines_there_is_no_gap_column():
    runs = [run("supervised", 0, 0.7), run("mixmatch", 0, 0.8)]
    assert "gap_closed" not in aggregate(runs)[1]
    assert "gap closed" not in markdown_table(aggregate(runs))
    by_tag = [run("mixmatch", 0, 0.8, tag="a"), run("mixmatch", 0, 0.7, tag="b")]
    assert [r["name"] for r in aggregate(by_tag, key="tag")] == ["a", "b"]
    assert [r["name"] for r in aggregate(by_tag, key="run")] == ["mixmatch-a-seed0", "mixmatch-b-seed0"]


def test_a_row_of_runs_of_different_lengths_is_flagged(caplog):
    runs = [run("mixmatch", 0, 0.8), run("mixmatch", 1, 0.7, steps=2300), run("supervised", 0, 0.6)]
    with caplog.at_level("WARNING", logger="mixmatch.experiments.report"):
        aggregate(runs)
    assert caplog.messages == ["row mixmatch averages runs of different lengths: 10, 2300 steps"]


def test_runs_at_several_label_counts_draw_the_papers_figure_2(tmp_path, monkeypatch):
    from mixmatch.data.images import is_our_figure
    from mixmatch.experiments import report as report_module

    runs = [
        *(run(m, s, a + 0.01 * labels / 40, labels=labels) for m, a in (("mixmatch", 0.8), ("vat", 0.7))
          for labels in (40, 250) for s in (0, 1)),
        run("fully-supervised", 0, 0.9, labels=60000),
    ]
    drawn = {}
    monkeypatch.setattr(report_module, "read_run", lambda d: next(r for r in runs if r["dir"] == d))
    monkeypatch.setattr(report_module, "plot_curves", lambda runs, path, key: None)
    real = report_module.plot_error_against_labels
    monkeypatch.setattr(report_module, "plot_error_against_labels",
                        lambda rows, path, title: drawn.update(rows=rows) or real(rows, path, title))
    for r in runs:
        r["summary"]["dataset"] = "fashion-mnist"
        r["dir"] += f"-{r['summary']['num_labels']}"
    report_module.report([r["dir"] for r in runs], tmp_path)
    figure = tmp_path / "error-vs-labels.png"
    assert figure.is_file() and is_our_figure(figure.read_bytes())
    assert {(r["name"], r["num_labels"]) for r in drawn["rows"]} == {
        ("mixmatch", 40), ("mixmatch", 250), ("vat", 40), ("vat", 250), ("fully-supervised", 60000)}
    one_count = [r for r in runs if r["summary"]["num_labels"] in (250, 60000)]
    (tmp_path / "again").mkdir()
    report_module.report([r["dir"] for r in one_count], tmp_path / "again")
    assert not (tmp_path / "again" / "error-vs-labels.png").exists()


def test_runs_on_a_validation_split_are_never_headed_test_accuracy(caplog):
    tuning = [run("mixmatch", s, 0.8) for s in range(2)]
    for r in tuning:
        r["summary"]["evaluated_on"] = "validation"
    assert "| validation accuracy (%) |" in markdown_table(aggregate(tuning)).splitlines()[0]
    assert "| test accuracy (%) |" in markdown_table(aggregate([run("mixmatch", 0, 0.8)])).splitlines()[0]
    mixed = markdown_table(aggregate([*tuning, run("mixmatch", 2, 0.8)])).splitlines()[0]
    assert "| test and validation accuracy (%) |" in mixed
    assert "different splits" in caplog.text


def test_a_report_folder_names_its_runs_and_they_are_read_again_from_it(tmp_path, monkeypatch):
    import shutil

    from mixmatch.experiments import report as report_module

    root = tmp_path / "clone"
    grid = root / "grid-40"
    for name in ("mixmatch-seed0", "supervised-seed0"):
        (grid / name).mkdir(parents=True)
        (grid / name / "summary.json").write_text("{}")
    (root / "grid-100" / "fully-supervised-seed0").mkdir(parents=True)
    accuracy = {"mixmatch": 0.8, "supervised": 0.7, "fully-supervised": 0.9}

    def read_run(folder):
        method = Path(folder).name.split("-seed")[0]
        return run(method, 0, accuracy[method])

    monkeypatch.setattr(report_module, "read_run", read_run)
    monkeypatch.setattr(report_module, "plot_curves", lambda runs, path, key: None)
    dirs = [grid / "mixmatch-seed0", grid / "supervised-seed0", root / "grid-100" / "fully-supervised-seed0"]
    report_module.report(dirs, grid)
    assert (grid / "runs.txt").read_text().split() == [
        "mixmatch-seed0", "supervised-seed0", "../grid-100/fully-supervised-seed0"]
    shutil.copytree(root, tmp_path / "elsewhere")  # paths relative to the report: a clone elsewhere reads them
    moved = report_module.report_runs(tmp_path / "elsewhere" / "grid-40")
    assert [d.resolve() for d in moved] == [(tmp_path / "elsewhere" / d.relative_to(root)).resolve() for d in dirs]
    shutil.rmtree(root / "grid-100")
    with pytest.raises(FileNotFoundError, match="names run folders that are gone: .*fully-supervised-seed0"):
        report_module.report_runs(grid)
    (grid / "runs.txt").unlink()  # a grid's folder without one: the run folders in it
    assert [d.name for d in report_module.report_runs(grid)] == ["mixmatch-seed0", "supervised-seed0"]
