"""The experiment commands: ablations, the sharpening demo and the explanatory figures."""

import json

import pytest

from mixmatch.cli import main
from mixmatch.config import TrainConfig
from mixmatch.experiments.ablate import ABLATIONS, ablation_configs
from mixmatch.experiments.demo import sharpening_demo, train_pseudo_label
from mixmatch.experiments.figures import all_figures

pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_ablation_is_its_override_on_the_base_config(tmp_path):
    base = TrainConfig(steps=100).resolved()
    configs = ablation_configs(base, list(ABLATIONS), [0, 1], tmp_path)
    assert len(configs) == 2 * len(ABLATIONS)
    by_tag = {(c.tag, c.seed): c for c in configs}
    assert by_tag["k1", 1].k == 1 and by_tag["t1", 0].temperature == 1.0 and by_tag["no-mixup", 0].alpha == 0
    assert by_tag["mixup-separate", 0].mix == "separate" and by_tag["no-ema", 0].ema_decay == 0
    assert by_tag["mixmatch", 0].k == base.k and by_tag["mixmatch", 0].temperature == base.temperature
    assert len({c.out for c in configs}) == len(configs)
    with pytest.raises(ValueError, match="unknown ablation 'k3'"):
        ablation_configs(base, ["k3"], [0], tmp_path)


def test_ablate_command_writes_the_table_beside_the_papers(tmp_path, capsys):
    out = tmp_path / "ablate"
    args = ["--steps", "20", "--eval-every", "20", "--rampup-steps", "10", "--no-progress", "--out", str(out)]
    assert main(["ablate", "--ablations", "mixmatch", "t1", *args]) == 0
    table = (out / "results.md").read_text()
    assert "| mixmatch | 50 | 1 |" in table and "| 11.80 |" in table and "| 27.83 |" in table
    assert table.strip() in capsys.readouterr().out


def test_unknown_ablation_and_missing_demo_data_are_one_line(cli_error, tmp_path):
    assert "unknown ablation 'k3'" in cli_error("ablate", "--ablations", "k3", "--out", str(tmp_path))
    assert "needs --data-dir" in cli_error("demo", "--dataset", "fashion-mnist", "--out", str(tmp_path))


def test_demo_without_sharpening_is_labelled_only_training(digits):
    """At T=1 the target is the prediction itself, so the unlabelled term has no gradient at all."""
    _, unsharpened = train_pseudo_label(digits, 1.0, seed=0, num_labels=50, epochs=2)
    _, no_unlabelled = train_pseudo_label(digits, 1.0, seed=0, num_labels=50, epochs=2, lambda_u=0.0)
    _, sharpened = train_pseudo_label(digits, 0.5, seed=0, num_labels=50, epochs=2)
    assert unsharpened["test_accuracy"] == no_unlabelled["test_accuracy"]
    assert unsharpened["mean_confidence"] == no_unlabelled["mean_confidence"]
    assert sharpened["mean_confidence"] != unsharpened["mean_confidence"]


@pytest.mark.slow
def test_demo_writes_runs_table_and_tsne(tmp_path, digits):
    results = sharpening_demo(digits, tmp_path, seeds=(0, 1), num_labels=50, epochs=1)
    assert set(results) == {"1.0", "0.5"} and all(len(r["accuracies"]) == 2 for r in results.values())
    runs = json.loads((tmp_path / "runs.json").read_text())["runs"]
    assert [(r["T"], r["seed"]) for r in runs] == [(1.0, 0), (1.0, 1), (0.5, 0), (0.5, 1)]
    assert all(r["dataset"] == "digits" for r in runs)
    assert (tmp_path / "results.md").read_text().count("| digits |") == 2
    assert (tmp_path / "tsne.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figures_are_pngs(tmp_path):
    paths = all_figures(tmp_path)
    assert [p.name for p in paths] == ["beta.png", "sharpening.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
