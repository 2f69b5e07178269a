"""export, predict and evaluate: the EMA weights outside their run, and their bad inputs."""

import csv
import json
import logging

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mixmatch import export, runfolder
from mixmatch.cli import main
from mixmatch.config import TrainConfig
from mixmatch.data.dataset import DataError
from mixmatch.data.images import ImageError
from mixmatch.training import checkpoint
from mixmatch.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    """A short run (fp32, so that the trainer's evaluation and `evaluate` agree exactly) and its export."""
    run = tmp_path_factory.mktemp("export") / "run"
    config = TrainConfig(steps=120, batch_size=32, eval_every=120, progress=False, amp="off", out=str(run))
    trainer = Trainer(config, digits)
    summary = trainer.fit()
    assert main(["export", str(run)]) == 0
    return trainer, summary, run


def test_export_writes_ema_weights_and_what_rebuilds_the_model(trained):
    trainer, _, run = trained
    weights = load_file(str(run / "model.safetensors"))
    ema = trainer.ema.module.state_dict()
    assert weights.keys() == ema.keys()
    assert all(torch.equal(weights[k], ema[k]) for k in ema)
    meta = json.loads((run / "model.json").read_text())
    assert meta["arch"] == "cnn" and meta["num_classes"] == 10 and meta["classes"] == [str(i) for i in range(10)]
    assert (meta["in_channels"], meta["image_size"], meta["step"]) == (1, 8, 120)
    assert meta["mean"] == pytest.approx(trainer.augment.mean.tolist())
    assert meta["std"] == pytest.approx(trainer.augment.std.tolist())


def test_export_skips_a_damaged_newest_checkpoint_with_one_warning(trained, tmp_path, caplog):
    _, _, run = trained
    copy = tmp_path / "run"
    (copy / "checkpoints").mkdir(parents=True)
    good = runfolder.checkpoints(run)[-1]
    (copy / "checkpoints" / good.name).write_bytes(good.read_bytes())
    cut = copy / "checkpoints" / "step-00000130.pt"
    cut.write_bytes(good.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING):
        out = export.export(copy)
    [warning] = caplog.messages
    using = copy / "checkpoints" / good.name
    assert f"skipped 1 newer checkpoint(s) that do not load, using {using}: checkpoint {cut} is truncated" in warning
    assert json.loads(runfolder.model_meta_path(out).read_text())["step"] == 120
    exported, original = load_file(str(out)), load_file(str(run / "model.safetensors"))
    assert all(torch.equal(exported[k], original[k]) for k in original)


def test_evaluate_matches_the_trainer_and_draws_the_confusion_matrix(trained, capsys, tmp_path):
    _, summary, run = trained
    png = tmp_path / "confusion.png"
    assert main(["evaluate", "--model", str(run / "model.safetensors"), "--dataset", "digits", "--out", str(png)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == summary["test_accuracy"] and result["images"] == 500
    assert png.stat().st_size > 10_000
    matrix = export.evaluate(run, "digits", out=png)["confusion"]
    assert sum(map(sum, matrix)) == 500 and sum(matrix[i][i] for i in range(10)) == round(500 * result["accuracy"])
    per_class = result["per_class_accuracy"]
    assert list(per_class) == [str(i) for i in range(10)]
    assert per_class["3"] == round(matrix[3][3] / sum(matrix[3]), 4)


def test_the_per_class_example_tabulates_what_evaluate_measures(trained, capsys, monkeypatch):
    import runpy
    import sys
    from pathlib import Path

    _, _, run = trained
    per_class = export.evaluate(run, "digits")["per_class_accuracy"]
    script = Path(__file__).resolve().parents[1] / "examples" / "per_class.py"
    monkeypatch.setattr(sys, "argv", ["per_class.py", str(run)])
    runpy.run_path(str(script), run_name="__main__")
    header, _, row = capsys.readouterr().out.strip().splitlines()
    assert header == "| method | runs | " + " | ".join(per_class) + " |"
    assert row == "| mixmatch | 1 | " + " | ".join(f"{100 * a:.1f}" for a in per_class.values()) + " |"
    monkeypatch.setattr(sys, "argv", ["per_class.py", str(run.parent / "no-such-run")])
    with pytest.raises(SystemExit, match=r"^per_class.py: error: .*no-such-run is not a finished run folder"):
        runpy.run_path(str(script), run_name="__main__")


def test_predict_reads_files_and_folders(trained, digits, capsys, tmp_path):
    trainer, _, run = trained
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    images = digits.test_images[:6]
    paths = []
    for i, image in enumerate(images):
        path = folder / ("nested" if i % 2 else "") / f"digit{i}.png"
        Image.fromarray(image[0].numpy(), mode="L").save(path)
        paths.append(path)
    (folder / "notes.txt").write_text("not an image, and skipped inside a folder")
    # An RGB image of another size is converted to the model's one channel and resized to 8x8.
    big = tmp_path / "big.jpg"
    Image.fromarray(images[0, 0].numpy(), mode="L").resize((32, 32)).convert("RGB").save(big)

    assert main(["predict", "--model", str(run), str(folder), str(big)]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [line[0] for line in lines] == sorted(map(str, paths)) + [str(big)]

    model = trainer.eval_model.eval()
    with torch.no_grad():
        expected = torch.softmax(model(trainer.augment.plain(images)), -1).max(-1)
    by_path = {line[0]: (line[1], float(line[2])) for line in lines}
    for path, label, confidence in zip(paths, expected.indices.tolist(), expected.values.tolist(), strict=True):
        assert by_path[str(path)][0] == str(label)
        assert by_path[str(path)][1] == pytest.approx(confidence, abs=1e-4)
    assert 0 < by_path[str(big)][1] <= 1

    out = tmp_path / "predictions.csv"
    assert main(["predict", "--model", str(run / "model.safetensors"), *map(str, paths), "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == list(map(str, paths))
    assert [r["class"] for r in rows] == [by_path[str(p)][0] for p in paths]


def test_predict_scales_16_bit_images_like_training(trained, digits, capsys, tmp_path):
    """A 16-bit copy of an image (values x 257) is predicted exactly as the 8-bit image; it used to clip to 255."""
    _, _, run = trained
    paths = []
    for i, image in enumerate(digits.test_images[:4, 0].numpy()):
        Image.fromarray(image).save(tmp_path / f"{i}-8bit.png")
        Image.fromarray(image.astype("uint16") * 257).save(tmp_path / f"{i}-16bit.png")
        assert Image.open(tmp_path / f"{i}-16bit.png").mode == "I;16"
        paths += [tmp_path / f"{i}-8bit.png", tmp_path / f"{i}-16bit.png"]
    assert torch.equal(export.read_image(paths[1], 1, 8), export.read_image(paths[0], 1, 8))
    rows = export.predict(run, paths)
    for eight, sixteen in zip(rows[::2], rows[1::2], strict=True):
        assert (eight["class"], eight["confidence"]) == (sixteen["class"], sixteen["confidence"])


def test_unreadable_images_are_image_errors_not_checkpoint_errors(tmp_path):
    (tmp_path / "scan.png").write_text("this is not a picture")
    with pytest.raises(ImageError, match="scan.png is not an image file that PIL can read") as caught:
        export.read_image(tmp_path / "scan.png", 1, 8)
    assert not isinstance(caught.value, checkpoint.CheckpointError)
    with pytest.raises(DataError, match="does not exist"):
        export.image_files([tmp_path / "nope.png"])
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "labels.csv").write_text("file,label\n")
    with pytest.raises(DataError, match="no image files in"):
        export.image_files([tmp_path / "notes"])


def test_bad_inputs_are_one_line(trained, cli_error, tmp_path):
    _, _, run = trained
    model = str(run / "model.safetensors")
    missing = cli_error("predict", "--model", str(tmp_path / "none.safetensors"), str(tmp_path))
    assert "none.safetensors does not exist (write one with `mixmatch export RUN_DIR`)" in missing
    text = tmp_path / "scan.png"
    text.write_text("this is not a picture")
    assert f"{text} is not an image file that PIL can read" in cli_error("predict", "--model", model, str(text)
    )
    assert "does not exist" in cli_error("predict", "--model", model, str(tmp_path / "nope.png"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no image files in" in cli_error("predict", "--model", model, str(empty))
    assert "has no checkpoint" in cli_error("export", str(tmp_path))


def test_damaged_model_files_are_one_line(trained, cli_error, tmp_path):
    _, _, run = trained
    broken = tmp_path / "model.safetensors"
    data = (run / "model.safetensors").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    assert "model.json is missing or not JSON" in cli_error("evaluate", "--model", str(broken), "--dataset", "digits"
    )
    meta = json.loads((run / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps(meta))
    assert "is truncated or not safetensors" in cli_error("predict", "--model", str(broken), str(broken))
    broken.write_bytes(data)
    (tmp_path / "model.json").write_text(json.dumps({**meta, "image_size": 16}))
    message = cli_error("predict", "--model", str(broken), str(broken))
    assert "does not fit a cnn for 10 classes of 1x16x16 images" in message
    (tmp_path / "model.json").write_text(json.dumps({**meta, "num_classes": 3}))
    with pytest.raises(checkpoint.CheckpointError, match="does not fit a cnn for 3 classes"):
        export.load_model(broken)


def test_predict_skips_an_unreadable_file_in_a_folder_as_training_does(trained, digits, capsys, caplog, tmp_path):
    _, _, run = trained
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(digits.test_images[i, 0].numpy()).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    (folder / "run").mkdir()  # a run folder inside: its figures are not photos
    (folder / "run" / "config.json").write_text("{}")
    (folder / "run" / "split.json").write_text("{}")
    Image.fromarray(digits.test_images[3, 0].numpy()).save(folder / "run" / "curves.png")
    with caplog.at_level(logging.WARNING):
        assert main(["predict", "--model", str(run), str(folder), "--csv", str(tmp_path / "p.csv")]) == 0
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "path,class,confidence" and [r.split(",")[0] for r in rows[1:]] == [
        str(folder / f"{i}.png") for i in range(3)
    ]
    assert f"skipped 1 file(s) that are not readable images: {folder / 'broken.png'} (" in caplog.text
    assert "wrote 3 predictions" in capsys.readouterr().err
