"""Every command that loads data takes the same data flags; `evaluate` on image folders with and without test/."""

import json

import numpy as np
import pytest
from PIL import Image

from mixmatch.cli import build_parser, data_fields, flag, main

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ("zero", "one", "two")


def command_parsers() -> dict:
    commands = build_parser()._subparsers._group_actions[0].choices
    info = commands["data"]._subparsers._group_actions[0].choices["info"]
    return {**{name: commands[name] for name in ("train", "compare", "ablate", "evaluate", "demo")}, "data info": info}


def test_every_command_that_loads_data_takes_the_same_data_flags():
    loading = {flag(name) for name in data_fields()}
    assert loading == {
        "--dataset", "--data-dir", "--download", "--labels-csv", "--test-csv", "--image-size", "--strict-images",
        "--val-fraction",
    }  # fmt: skip
    for name, parser in command_parsers().items():
        options = {option for action in parser._actions for option in action.option_strings}
        expected = loading - {"--dataset"} if name == "data info" else loading  # its data set is an argument
        assert expected <= options, (name, expected - options)
        helps = {a.option_strings[0]: a.help for a in parser._actions if a.option_strings}
        assert "test split" in helps["--val-fraction"], name


def image_folder(root, with_test: bool, per_class: int = 12) -> None:
    """Three classes of 8x8 scikit-learn digits as PNGs: labeled/<class>/, unlabeled/, and test/<class>/."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts = dict.fromkeys(range(3), 0)
    for image, label in zip(digits.images, digits.target, strict=True):
        if label > 2 or counts[label] >= 2 * per_class + 4:
            continue
        i = counts[label]
        counts[label] += 1
        if i < per_class:
            path = root / "labeled" / CLASSES[label] / f"{label}-{i}.png"
        elif i < 2 * per_class or not with_test:
            path = root / "unlabeled" / f"{label}-{i}.png"
        else:
            path = root / "test" / CLASSES[label] / f"{label}-{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(image * (255 / 16)).astype(np.uint8)).save(path)


def train_and_export(root, out, capsys) -> dict:
    args = ["train", "--dataset", "folder", "--data-dir", str(root), "--image-size", "16", "--arch", "cnn"]
    args += ["--steps", "3", "--batch-size", "8", "--amp", "off", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert main(["export", str(out)]) == 0
    capsys.readouterr()
    return summary


@pytest.mark.parametrize("with_test", [True, False], ids=["with-test", "without-test"])
def test_evaluate_a_folder_model_at_its_own_image_size(with_test, tmp_path, capsys):
    root = tmp_path / "images"
    image_folder(root, with_test)
    summary = train_and_export(root, tmp_path / "run", capsys)
    # Neither the image size (16, not the default 32) nor the data set need naming: the model knows both.
    png = tmp_path / "confusion.png"
    assert main(["evaluate", "--model", str(tmp_path / "run"), "--data-dir", str(root), "--out", str(png)]) == 0
    result = json.loads(capsys.readouterr().out)
    # With test/, its 12 images; without, the 10% of each class's 12 labelled images that training held out.
    assert result["images"] == (12 if with_test else 3)
    assert result["dataset"] == "folder" and result["accuracy"] == summary["test_accuracy"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_folder_problems_are_one_line(tmp_path, capsys, cli_error):
    root = tmp_path / "images"
    image_folder(root, with_test=False)
    train_and_export(root, tmp_path / "run", capsys)
    model = ["--model", str(tmp_path / "run"), "--dataset", "folder", "--data-dir", str(root)]
    message = cli_error("evaluate", *model, "--val-fraction", "1")
    assert message == "mixmatch: error: --val-fraction must be in [0, 1), got 1"
    message = cli_error("evaluate", *model, "--image-size", "32")
    assert "3 classes of 1x32x32 images; the model is a cnn for 3 classes of 1x16x16 images" in message
    # No test/ and nothing held out: an empty evaluation split.
    message = cli_error("evaluate", *model, "--val-fraction", "0")
    assert message.startswith("mixmatch: error: folder has no test images: give it a test split or a --val-fraction")


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["train", "--lambda-u", "-3"], "--lambda-u must be >= 0, got -3"),
        (["train", "--k", "0"], "--k must be positive, got 0"),
        (["train", "--temperature", "0"], "--temperature must be > 0, got 0"),
        (["train", "--alpha", "-0.5"], "--alpha must be >= 0, got -0.5"),
        (["train", "--lr", "0"], "--lr must be > 0, got 0"),
        (["train", "--weight-decay", "-1"], "--weight-decay must be >= 0, got -1"),
        (["train", "--batch-size", "0"], "--batch-size must be positive, got 0"),
        (["train", "--rampup-steps", "-5"], "--rampup-steps must be >= 0, got -5"),
        (["train", "--eval-every", "0"], "--eval-every must be positive, got 0"),
        (["train", "--checkpoint-every", "-1"], "--checkpoint-every must be >= 0, got -1"),
        (["train", "--keep-checkpoints", "0"], "--keep-checkpoints must be >= 1, got 0"),
        (["train", "--num-labels", "0"], "--num-labels must be positive, got 0"),
        (["train", "--lr", "inf"], "--lr must be a finite number, got inf"),
        (["train", "--minutes", "0"], "--minutes must be > 0, got 0"),
        (["train", "--threads", "0"], "--threads must be >= 1, got 0"),
        (["train", "--steps", "10", "--minutes", "1"], "--minutes (a time budget) and a step count both set"),
        # before anything loads: the data set is missing, yet the range is what the line names
        (["train", "--dataset", "cifar10", "--data-dir", "/no/such", "--ema-decay", "1"], "--ema-decay must be in"),
        (["compare", "--seeds", "0", "-1"], "--seeds must be >= 0, got -1"),
        (["ablate", "--pad", "-2"], "--pad must be >= 0, got -2"),
        (["demo", "--dataset", "folder", "--image-size", "2"], "--image-size must be at least 4, got 2"),
        (["demo", "--epochs", "0"], "--epochs must be positive, got 0"),
        (["data", "info", "digits", "--val-fraction", "1.5"], "--val-fraction must be in [0, 1), got 1.5"),
    ],
)
def test_each_flag_out_of_range_is_one_line_before_anything_loads(argv, line, cli_error, tmp_path):
    assert cli_error(*argv).startswith(f"mixmatch: error: {line}")


def test_demo_runs_on_a_folder_without_test_split(tmp_path, capsys):
    root = tmp_path / "images"
    image_folder(root, with_test=False)
    out = tmp_path / "demo"
    args = ["demo", "--dataset", "folder", "--data-dir", str(root), "--image-size", "16", "--epochs", "1"]
    assert main([*args, "--seeds", "0", "--num-labels", "6", "--out", str(out)]) == 0
    assert (out / "results.md").read_text().count("| folder |") == 2
    runs = json.loads((out / "runs.json").read_text())["runs"]
    assert [r["steps"] for r in runs] == [1, 1]  # fewer unlabelled images than one batch: still one step
    assert (out / "tsne.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_folder_without_test_split_says_what_it_held_out(tmp_path, caplog):
    from mixmatch.config import TrainConfig
    from mixmatch.data.splits import load_for_config

    image_folder(tmp_path, with_test=False)
    data = load_for_config(TrainConfig(dataset="folder", data_dir=str(tmp_path), image_size=8))
    assert data.test_labels.numel() == 3
    assert "folder has no test split, so 3 labelled images (10%) are held out as one" in caplog.text
    assert "accuracy moves in steps of 33.3 points" in caplog.text
    caplog.clear()
    load_for_config(TrainConfig(dataset="folder", data_dir=str(tmp_path), image_size=8, val_fraction=0.2))
    assert "held out" not in caplog.text  # asked for, so nothing to say


def test_predict_with_a_training_checkpoint_says_to_export_first(tmp_path, cli_error):
    checkpoint = tmp_path / "step-00000010.pt"
    checkpoint.write_bytes(b"not read")
    assert "is a training checkpoint; export its run first" in cli_error("predict", "--model", str(checkpoint), "x.png")
