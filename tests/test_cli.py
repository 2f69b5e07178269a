import json
import re
import subprocess
import sys

import pytest

from mixmatch.cli import main
from mixmatch.config import FINETUNE, METHOD_DEFAULTS


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mixmatch", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "imagenet"], "unknown data set 'imagenet'"),
        (["--num-labels", "5000"], "asks for 500 labels per class, but class 0 has only"),
        (["--num-labels", "55"], "--num-labels 55 is not a multiple of the 10 classes"),
        (["--dataset", "fashion-mnist"], "needs --data-dir"),
        (["--dataset", "fashion-mnist", "--data-dir", "/no/such/dir"], "--data-dir /no/such/dir does not exist"),
        (["--arch", "vgg"], "unknown architecture 'vgg'"),
        (["--steps", "0"], "--steps must be positive"),
        (["--ema-decay", "1.5"], "--ema-decay must be in [0, 1), got 1.5"),
    ],
)
def test_bad_input_exits_with_one_line(args, message, tmp_path):
    result = run_cli("train", "--no-progress", "--out", str(tmp_path / "run"), *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mixmatch: error:") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_train_writes_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--steps",
                "30",
                "--eval-every",
                "15",
                "--no-progress",
                "--out",
                str(out),
                "--k",
                "3",
                "--temperature",
                "0.4",
                "--alpha",
                "0.5",
                "--lambda-u",
                "10",
                "--rampup-steps",
                "10",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 30 and summary == json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert (config["k"], config["temperature"], config["alpha"], config["lambda_u"]) == (3, 0.4, 0.5, 10)


@pytest.mark.slow
def test_compare_prints_table_and_writes_plot(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert (
        main(
            [
                "compare",
                "--steps",
                "20",
                "--eval-every",
                "10",
                "--no-progress",
                "--out",
                str(out),
                "--methods",
                "mixmatch",
                "supervised",
                "--seeds",
                "0",
                "1",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| mixmatch | 50 | 2 |" in printed and "| supervised | 50 | 2 |" in printed
    assert (out / "results.md").read_text().strip() in printed
    assert (out / "curves.png").stat().st_size > 10_000
    assert len(json.loads((out / "results.json").read_text())) == 2
    # the baselines train on the very split MixMatch used
    splits = {
        json.loads((out / f"{m}-seed0" / "split.json").read_text())["indices"].__repr__()
        for m in ("mixmatch", "supervised")
    }
    assert len(splits) == 1


def test_report_of_missing_run_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a finished run folder" in capsys.readouterr().err


@pytest.mark.slow
def test_fashion_mnist_from_shared_data(shared_data, tmp_path):
    result = run_cli(
        "train",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        str(shared_data),
        "--steps",
        "20",
        "--eval-every",
        "20",
        "--no-progress",
        "--out",
        str(tmp_path / "run"),
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["dataset"] == "fashion-mnist" and summary["num_labels"] == 100 and summary["steps"] == 20


def subcommands() -> dict:
    from mixmatch.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    data = commands["data"]._subparsers._group_actions[0].choices
    return {**{name: p for name, p in commands.items() if name != "data"}, **{f"data {n}": p for n, p in data.items()}}


def test_every_command_is_bound_to_its_own_function():
    bound = {name: parser.get_default("func") for name, parser in subcommands().items()}
    assert set(bound) == {
        "train", "compare", "ablate", "report", "export", "predict", "evaluate", "figures", "demo", "data list",
        "data info",
    }  # fmt: skip
    assert all(callable(f) for f in bound.values()) and len(set(bound.values())) == len(bound)


@pytest.mark.parametrize("command", ["train", "compare", "ablate", "evaluate", "demo", "data info"])
def test_help_shows_each_default_once_in_the_groups(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    text = " ".join(subcommands()[command].format_help().split())
    assert "(default: None)" not in text and not re.search(r"\(default: [^)]*\) \(default:", text)
    assert text.count("(default:") == sum(
        1 for a in subcommands()[command]._actions if a.help and "(default:" in a.help
    )
    if command == "train":
        assert "(default: data set preset)" in text and "--lambda-u LAMBDA_U weight of the unlabelled" in text
        # the methods' and fine-tuning's own values replace the preset's, and --help gives each
        text = text.replace("- ", "-")  # argparse wraps lines after hyphens
        lr_help = re.search(r"--lr LR (.*?) --optimizer", text).group(1)
        assert lr_help.endswith(f"(default: data set preset; fixmatch: {METHOD_DEFAULTS['fixmatch']['lr']}; "
                                f"fine-tuning: {FINETUNE['lr']})")
        assert "(default: pseudo-label, fixmatch: 0.95)" in re.search(r"--threshold THRESHOLD (.*?) --", text).group(1)
        rampup = re.search(r"--rampup-steps RAMPUP_STEPS (.*?) --", text).group(1)
        assert "pi-model, pseudo-label, vat, mean-teacher, ict: 40% of the steps; mixup, fixmatch: none" in rampup
        assert "SVHN: see docs/methods.md" in re.search(r"--weight-decay WEIGHT_DECAY (.*?) --", text).group(1)
        titles = ["data:", "model:", "MixMatch:", "optimisation:", "run:"]
        assert all(t in text for t in titles) and sorted(titles, key=text.index) == titles
    if command == "evaluate":
        assert "--image-size IMAGE_SIZE --dataset folder: images are scaled" in text
        assert text.count("(default: the model's)") == 2


def test_a_bad_flag_or_choice_is_one_line_not_the_usage_block(capsys):
    for argv in (["train", "--schedule", "bogus"], ["trian"], ["train", "--steps", "ten"]):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("mixmatch: error: "), err
    with pytest.raises(SystemExit):
        main(["train", "--schedule", "bogus"])
    assert "invalid choice: 'bogus' (choose from 'constant', 'cosine', 'onecycle')" in capsys.readouterr().err


def test_every_help_text_is_one_line():
    """What a flag does fits one line of --help (its default is added after it); depth lives in docs/cli.md."""
    import argparse
    import re

    from mixmatch.cli import build_parser

    parsers = list(build_parser().commands.values())
    parsers += [p for parser in parsers for action in parser._actions
                if isinstance(action, argparse._SubParsersAction) for p in action.choices.values()]
    long = [(parser.prog, action.option_strings or action.dest) for parser in parsers for action in parser._actions
            if action.help and len(re.sub(r" \(default: .*\)$", "", action.help)) > 100]
    assert not long, long
