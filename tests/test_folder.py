"""Image folders: both layouts, bad files, the cache, splits by file name, and training through the CLI."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mixmatch.cli import main
from mixmatch.config import TrainConfig
from mixmatch.data import folder as folder_module
from mixmatch.data.dataset import DataError
from mixmatch.data.folder import load_image_folder
from mixmatch.data.loaders import load_dataset
from mixmatch.data.splits import choose_split, load_for_config, read_split, save_split


def digit_images(count: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as uint8 images, needing no file."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.round(digits.images[:count] * (255 / 16)).astype(np.uint8), digits.target[:count]


def save_png(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def class_folders(root, images, labels, classes, n_labeled: int, n_test: int) -> None:
    """ROOT/labeled/<class>/, ROOT/test/<class>/ and ROOT/unlabeled/ (nested) from image arrays."""
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        if i < n_labeled:
            path = root / "labeled" / classes[label] / f"{i}.png"
        elif i < n_labeled + n_test:
            path = root / "test" / classes[label] / f"{i}.png"
        else:
            path = root / "unlabeled" / f"part{i % 3}" / "deeper" / f"{i}.png"
        save_png(path, image)


def flat_folder_with_csv(root, images, labels, classes, n_labeled: int, n_test: int) -> None:
    """ROOT/images/*.png, ROOT/labels.csv (with a header) and, for n_test > 0, ROOT/test.csv (without)."""
    rows = ["file,label"]
    test_rows = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        save_png(root / "images" / f"{i:04d}.png", image)
        if i < n_labeled:
            rows.append(f"images/{i:04d}.png,{classes[label]}")
        elif i < n_labeled + n_test:
            test_rows.append(f"images/{i:04d}.png,{classes[label]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    if test_rows:
        (root / "test.csv").write_text("\n".join(test_rows) + "\n")


@pytest.fixture
def digit_folder(tmp_path):
    images, labels = digit_images(120)
    class_folders(tmp_path, images, labels, [f"digit{c}" for c in range(10)], n_labeled=50, n_test=30)
    return tmp_path


# ---- layout 1: class folders ----------------------------------------------------------------------------------


def test_class_folders_load_as_uint8_tensors(digit_folder):
    data = load_image_folder(digit_folder, image_size=16)
    assert data.name == "folder" and data.classes == [f"digit{c}" for c in range(10)]
    assert data.train_images.shape == (50, 1, 16, 16) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (30, 1, 16, 16) and data.extra_unlabeled.shape == (40, 1, 16, 16)
    _, labels = digit_images(50)
    assert sorted(data.train_labels.tolist()) == sorted(labels.tolist())
    assert data.files[0] == "labeled/digit0/0.png" and len(data.files) == 50
    # The image of a file is that file, scaled: 8x8 upscaled to 16x16 keeps its mean brightness.
    first = np.asarray(Image.open(digit_folder / data.files[0]), dtype=np.float64)
    assert abs(data.train_images[0].double().mean().item() - first.mean()) < 3


def test_corrupt_and_non_image_files_are_reported_and_skipped(digit_folder, caplog):
    (digit_folder / "labeled" / "digit3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (digit_folder / "unlabeled" / "notes.jpg").write_text("not an image, though named like one")
    (digit_folder / "labeled" / "stray.png").write_bytes(b"")
    # Files without an image suffix are not images of the folder: passed over without a word.
    (digit_folder / "unlabeled" / "notes.txt").write_text("not an image")
    (digit_folder / "labeled" / "digit3" / "predictions.csv").write_text("file,label\n")
    (digit_folder / "labeled" / "README.md").write_text("the labelled images")
    with caplog.at_level(logging.WARNING):
        data = load_image_folder(digit_folder, image_size=8)
    assert data.train_images.shape[0] == 50 and data.extra_unlabeled.shape[0] == 40
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "skipped 3 file(s)" in message and "labeled/digit3/broken.png" in message
    assert "labeled/stray.png (not inside a class folder)" in message and "unlabeled/notes.jpg" in message
    assert "notes.txt" not in message and "predictions.csv" not in message and "README" not in message
    with pytest.raises(DataError, match=r"3 file\(s\) in .* are not readable images: .*digit3/broken.png \(not an"):
        load_image_folder(digit_folder, image_size=8, strict=True)


def test_empty_class_folder_is_left_out(digit_folder, caplog):
    (digit_folder / "labeled" / "aaa-empty").mkdir()
    (digit_folder / "labeled" / "zzz-only-broken").mkdir()
    (digit_folder / "labeled" / "zzz-only-broken" / "x.jpg").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        data = load_image_folder(digit_folder, image_size=8)
    assert data.classes == [f"digit{c}" for c in range(10)]
    assert "left out: aaa-empty, zzz-only-broken" in caplog.text


def test_grey_and_colour_images_of_any_size_become_one_rgb_tensor(tmp_path):
    images, labels = digit_images(20)
    class_folders(tmp_path, images, labels, [str(c) for c in range(10)], n_labeled=20, n_test=0)
    red = np.zeros((30, 50, 3), dtype=np.uint8)
    red[..., 0] = 200
    save_png(tmp_path / "labeled" / "3" / "wide-red.png", red)
    Image.fromarray(images[0]).convert("P").save(tmp_path / "labeled" / "4" / "palette.gif")
    Image.fromarray(np.stack([images[1]] * 3, -1)).save(tmp_path / "labeled" / "5" / "photo.jpg", quality=95)
    data = load_image_folder(tmp_path, image_size=12)
    assert data.train_images.shape == (23, 3, 12, 12)
    grey = data.train_images[data.files.index("labeled/0/0.png")]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])  # grey repeated over R, G, B
    wide = data.train_images[data.files.index("labeled/3/wide-red.png")]
    assert wide[0].float().mean() == pytest.approx(200, abs=1) and wide[1:].max() == 0


def test_test_folder_with_an_unknown_class_is_refused(digit_folder):
    save_png(digit_folder / "test" / "cat" / "0.png", np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(DataError, match="test images of .* have classes the labelled images lack: cat"):
        load_image_folder(digit_folder, image_size=8)


def test_missing_labeled_folder_is_one_line(tmp_path):
    with pytest.raises(DataError, match="has no labeled/ folder: put images in ROOT/labeled/<class>/"):
        load_image_folder(tmp_path)
    with pytest.raises(DataError, match="needs --data-dir"):
        load_dataset("folder")


# ---- layout 2: a flat folder and a CSV -----------------------------------------------------------------------


def test_csv_layout_every_unnamed_image_is_unlabelled(tmp_path):
    images, labels = digit_images(100)
    flat_folder_with_csv(tmp_path, images, labels, [f"n{c}" for c in range(10)], n_labeled=40, n_test=20)
    data = load_image_folder(tmp_path, labels_csv=tmp_path / "labels.csv", test_csv=tmp_path / "test.csv")
    assert (data.train_images.shape[0], data.test_images.shape[0], data.extra_unlabeled.shape[0]) == (40, 20, 40)
    assert data.classes == [f"n{c}" for c in range(10)] and data.shape == (1, 32, 32)
    assert data.files[:2] == ["images/0000.png", "images/0001.png"]
    assert data.train_labels[:3].tolist() == labels[:3].tolist()


def test_numeric_labels_keep_numeric_order(tmp_path):
    images, _ = digit_images(12)
    for i, image in enumerate(images):
        save_png(tmp_path / f"{i}.png", image)
    (tmp_path / "labels.csv").write_text("".join(f"{i}.png,{[2, 10, 1][i % 3]}\n" for i in range(12)))
    assert load_image_folder(tmp_path, labels_csv=tmp_path / "labels.csv").classes == ["1", "2", "10"]


def test_csv_naming_missing_files_skips_them_or_refuses(tmp_path, caplog):
    images, labels = digit_images(30)
    flat_folder_with_csv(tmp_path, images, labels, [str(c) for c in range(10)], n_labeled=20, n_test=0)
    with (tmp_path / "labels.csv").open("a") as csv:
        csv.write("images/gone.png,3\nimages/also-gone.png,ghost\n")
    with caplog.at_level(logging.WARNING):
        data = load_image_folder(tmp_path, labels_csv=tmp_path / "labels.csv")
    assert data.train_images.shape[0] == 20 and "ghost" not in data.classes
    assert "images/also-gone.png (named in the CSV, not found)" in caplog.text and "left out: ghost" in caplog.text
    with pytest.raises(DataError, match="2 file"):
        load_image_folder(tmp_path, labels_csv=tmp_path / "labels.csv", strict=True)


@pytest.mark.parametrize(
    ("labels_rows", "test_rows", "message"),
    [
        ("a.png,1\nb.png\n", None, r"labels.csv line 2 is 'b.png', not `file,label`"),
        ("a.png,1\na.png,2\n", None, r"gives a.png two labels, '1' and '2' \(lines 1 and 2\)"),
        ("file,label\n", None, "names no images"),
        ("a.png,1\nb.png,2\n", "a.png,1\n", "1 images are both labelled and test images: a.png"),
        ("a.png,1\nb.png,2\n", "c.png,7\n", "have classes the labelled images lack: 7"),
    ],
)
def test_bad_csvs_are_refused_in_one_line(tmp_path, labels_rows, test_rows, message):
    for name in ("a.png", "b.png", "c.png"):
        save_png(tmp_path / name, np.zeros((4, 4), dtype=np.uint8))
    (tmp_path / "labels.csv").write_text(labels_rows)
    test_csv = None
    if test_rows is not None:
        test_csv = tmp_path / "test.csv"
        test_csv.write_text(test_rows)
    with pytest.raises(DataError, match=message):
        load_image_folder(tmp_path, labels_csv=tmp_path / "labels.csv", test_csv=test_csv)


def spreadsheet_csv(rows: list[str], how: str) -> bytes:
    """`file,label` rows as people save them: `how` is one way a spreadsheet or editor writes a CSV."""
    if how == "quoted, spaces around values":
        rows = [" , ".join(f'"{cell}"' for cell in row.split(",")) for row in rows]
    if how == "blank and empty rows":
        rows = ["", *rows[:2], ",", "", *rows[2:], ",,", "   "]
    if how == "trailing empty column":
        rows = [f"{row}," for row in rows]
    if how == "windows paths":
        rows = [row.replace("/", "\\") for row in rows]
    text = ("\r\n" if how in ("CRLF", "excel") else "\n").join(rows) + "\n\n\n"
    return ("\ufeff" if how in ("byte-order mark", "excel") else "").encode() + text.encode()


@pytest.mark.parametrize(
    "how",
    [
        "byte-order mark",
        "CRLF",
        "excel",
        "quoted, spaces around values",
        "blank and empty rows",
        "trailing empty column",
        "windows paths",
    ],
)
@pytest.mark.parametrize("header", [True, False])
def test_csvs_as_spreadsheets_save_them_give_the_same_split(tmp_path, caplog, how, header):
    images, labels = digit_images(60)
    classes = [f"n{c}" for c in range(10)]
    flat_folder_with_csv(tmp_path, images, labels, classes, n_labeled=30, n_test=20)
    plain = load_image_folder(
        tmp_path, labels_csv=tmp_path / "labels.csv", test_csv=tmp_path / "test.csv", image_size=8
    )
    rows = (tmp_path / "labels.csv").read_text().splitlines()[1:]
    test_rows = (tmp_path / "test.csv").read_text().splitlines()
    head = ["file,label"] if header else []
    (tmp_path / "saved-labels.csv").write_bytes(spreadsheet_csv(head + rows, how))
    (tmp_path / "saved-test.csv").write_bytes(spreadsheet_csv(head + test_rows, how))
    with caplog.at_level(logging.WARNING):
        for test_csv in (tmp_path / "saved-test.csv", tmp_path / "test.csv"):
            saved = load_image_folder(
                tmp_path, labels_csv=tmp_path / "saved-labels.csv", test_csv=test_csv, image_size=8
            )
            assert saved.files == plain.files and saved.classes == plain.classes
            assert torch.equal(saved.train_labels, plain.train_labels)
            assert torch.equal(saved.test_images, plain.test_images) and torch.equal(
                saved.test_labels, plain.test_labels
            )
            assert torch.equal(saved.extra_unlabeled, plain.extra_unlabeled)
        # --labels-csv alone: the same labelled images, the test images unlabelled
        alone = load_image_folder(tmp_path, labels_csv=tmp_path / "saved-labels.csv", image_size=8)
        assert alone.files == plain.files and alone.classes == plain.classes
    assert not caplog.records, caplog.text  # no phantom file, no class named `label`, no CSV as an image


def test_bom_csvs_give_the_same_split_through_the_cli(tmp_path, capsys):
    images, labels = digit_images(60)
    flat_folder_with_csv(tmp_path, images, labels, [f"n{c}" for c in range(10)], n_labeled=30, n_test=20)
    for name in ("labels.csv", "test.csv"):
        (tmp_path / f"bom-{name}").write_bytes(b"\xef\xbb\xbf" + (tmp_path / name).read_bytes().replace(b"\n", b"\r\n"))
    outputs = []
    for prefix in ("", "bom-"):
        args = ["data", "info", "folder", "--data-dir", str(tmp_path), "--image-size", "8", "--num-labels", "10"]
        args += [
            "--labels-csv",
            str(tmp_path / f"{prefix}labels.csv"),
            "--test-csv",
            str(tmp_path / f"{prefix}test.csv"),
        ]
        assert main(args) == 0
        captured = capsys.readouterr()
        assert captured.err == ""
        outputs.append(captured.out)
    assert outputs[0] == outputs[1] and "folder: 30 train and 20 test images" in outputs[0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"a.png,1\n\nb.png\n", r"bad.csv line 3 is 'b.png', not `file,label`"),
        (b"\xef\xbb\xbffile,label\r\na.png,1\r\nb.png,1,extra\r\n", r"line 3 is 'b.png,1,extra', not `file,label`"),
        (b"a.png,\n", r"line 1 is 'a.png', not `file,label`"),
        (b"a.png,1\n,2\n", r"line 2 is ',2', not `file,label`"),
        (b"a.png;1\nb.png;2\n", r"line 1 is 'a.png;1', not `file,label` \(separated by semicolons or tabs\?"),
        (b"a.png\t1\n", r"line 1 is 'a.png\\t1', not `file,label` \(separated by semicolons or tabs\?"),
        (b"filename,class\na.png,1\n", r"line 1 is 'filename,class': a header must be `file,label`, or none"),
        (b"a.png,1\nc\xe9.png,2\n", r"bad.csv line 2 is not UTF-8 text; save the CSV as \"CSV UTF-8\""),
        (
            b'a.png,1\n"b.png,2\nc.png,3\n',
            r"line 2 is 'b.png,2\\nc.png,3', not `file,label` \(a quote that is not closed\?\)",
        ),
        (b"a.png,1\nb.png,2\r\na.png, 2\r\n", r"gives a.png two labels, '1' and '2' \(lines 1 and 3\)"),
    ],
)
def test_malformed_csvs_name_their_line(tmp_path, cli_error, content, message):
    for name in ("a.png", "b.png", "c.png"):
        save_png(tmp_path / name, np.zeros((4, 4), dtype=np.uint8))
    (tmp_path / "bad.csv").write_bytes(content)
    (tmp_path / "good.csv").write_text("c.png,1\n")
    with pytest.raises(DataError, match=message):
        load_image_folder(tmp_path, labels_csv=tmp_path / "bad.csv")
    with pytest.raises(DataError, match=message):
        load_image_folder(tmp_path, labels_csv=tmp_path / "good.csv", test_csv=tmp_path / "bad.csv")
    folder = ["data", "info", "folder", "--data-dir", str(tmp_path)]
    assert str(tmp_path / "bad.csv") in cli_error(*folder, "--labels-csv", str(tmp_path / "bad.csv"))
    line = cli_error(*folder, "--labels-csv", str(tmp_path / "good.csv"), "--test-csv", str(tmp_path / "bad.csv"))
    assert str(tmp_path / "bad.csv") in line


# ---- the cache --------------------------------------------------------------------------------------------------


def test_cache_is_reused_until_the_folder_changes(digit_folder, monkeypatch):
    first = load_image_folder(digit_folder, image_size=8)
    assert len(list((digit_folder / ".mixmatch-cache").glob("*.pt"))) == 1

    def no_pil(*args):
        raise AssertionError("decoded again although the folder did not change")

    monkeypatch.setattr(folder_module, "_decode", no_pil)
    again = load_image_folder(digit_folder, image_size=8)
    assert torch.equal(first.train_images, again.train_images) and again.files == first.files
    monkeypatch.undo()

    save_png(digit_folder / "unlabeled" / "new.png", np.full((8, 8), 7, dtype=np.uint8))
    changed = load_image_folder(digit_folder, image_size=8)
    assert changed.extra_unlabeled.shape[0] == first.extra_unlabeled.shape[0] + 1
    assert len(list((digit_folder / ".mixmatch-cache").glob("*.pt"))) == 1  # the stale cache is gone
    assert torch.equal(load_image_folder(digit_folder, image_size=8).extra_unlabeled, changed.extra_unlabeled)


def test_cache_goes_to_the_user_cache_when_the_folder_is_not_writable(digit_folder, tmp_path, monkeypatch):
    (digit_folder / ".mixmatch-cache").write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    load_image_folder(digit_folder, image_size=8)
    assert len(list((tmp_path / "xdg" / "mixmatch").glob("images-*-8px-*.pt"))) == 1


def test_a_cache_of_the_old_decoder_is_not_reused(tmp_path, monkeypatch):
    """Caches written before 16-bit images were scaled hold their clipped pixels: they must be decoded again."""
    dark = np.full((8, 8), 16_448, dtype=np.uint16)  # 64 * 257
    for i in range(4):
        save_png(tmp_path / "labeled" / ("a" if i % 2 else "b") / f"{i}.png", dark)

    def clipping_decoder(path, size):  # the decoder of version 1: PIL's convert("L") clips I;16 to 255
        with Image.open(path) as image:
            return np.asarray(image.convert("L").resize((size, size))), path.name

    monkeypatch.setattr(folder_module, "DECODER_VERSION", 1)
    monkeypatch.setattr(folder_module, "_decode", clipping_decoder)
    assert load_image_folder(tmp_path, image_size=8).train_images.min() == 255
    monkeypatch.undo()
    data = load_image_folder(tmp_path, image_size=8)
    assert (data.train_images == 64).all()
    assert len(list((tmp_path / ".mixmatch-cache").glob("*.pt"))) == 1  # the old cache is gone


def two_class_folder(root, bits: int) -> None:
    """Dark and bright textured 8x8 images (dark around 16,000 of 65,535, bright around 48,000), saved as
    16-bit PNGs or as their 8-bit copies; 12 labelled, 12 unlabelled and 10 test images per class."""
    rng = np.random.default_rng(0)
    for c, (name, level) in enumerate([("dark", 16_000), ("bright", 48_000)]):
        for i in range(34):
            values = np.clip(level + rng.normal(0, 3_000, (8, 8)), 0, 65535)
            image = values.astype(np.uint16) if bits == 16 else np.round(values / 257).astype(np.uint8)
            where = ["labeled", name] if i < 12 else ["unlabeled"] if i < 24 else ["test", name]
            save_png(root.joinpath(*where, f"{c}-{i}.png"), image)


def test_16_bit_images_train_like_their_8_bit_copies(tmp_path, capsys):
    for bits in (16, 8):
        two_class_folder(tmp_path / f"{bits}bit", bits)
    sixteen = load_image_folder(tmp_path / "16bit", image_size=8)
    eight = load_image_folder(tmp_path / "8bit", image_size=8)
    assert sixteen.shape == (1, 8, 8) and sixteen.files == [f.replace("16bit", "8bit") for f in eight.files]
    assert (sixteen.train_images.int() - eight.train_images.int()).abs().max() <= 1
    dark = sixteen.train_labels == sixteen.classes.index("dark")
    assert abs(sixteen.train_images[dark].float().mean().item() - 16_000 / 257) < 3
    accuracy = {}
    for bits in (16, 8):
        args = ["train", "--dataset", "folder", "--data-dir", str(tmp_path / f"{bits}bit"), "--image-size", "8"]
        args += ["--arch", "cnn", "--steps", "50", "--batch-size", "8", "--ema-decay", "0.9", "--no-progress"]
        assert main([*args, "--out", str(tmp_path / f"run{bits}")]) == 0
        accuracy[bits] = json.loads(capsys.readouterr().out)["test_accuracy"]
    assert accuracy[16] >= 0.95 and accuracy[8] >= 0.95 and abs(accuracy[16] - accuracy[8]) <= 0.05, accuracy


# ---- splits, hold-out and `data info` ----------------------------------------------------------------------


def test_folder_split_file_names_images_and_survives_new_images(digit_folder, tmp_path):
    data = load_image_folder(digit_folder, image_size=8)
    split = choose_split(data, 20, seed=1)
    assert split.shape == (20,)  # 20 of 50 labelled images need not divide into the classes' sizes
    save_split(tmp_path / "split.json", "folder", split, 1, data)
    names = json.loads((tmp_path / "split.json").read_text())["files"]
    assert names == [data.files[i] for i in split.tolist()]
    save_png(digit_folder / "labeled" / "digit0" / "000-first.png", np.zeros((8, 8), dtype=np.uint8))
    grown = load_image_folder(digit_folder, image_size=8)
    assert [grown.files[i] for i in read_split(tmp_path / "split.json", grown).tolist()] == names
    (digit_folder / names[0]).unlink()
    message = r"names 1 image that is not a labelled training image here \(moved, deleted or unreadable\), e.g. "
    with pytest.raises(DataError, match=message + names[0]):
        read_split(tmp_path / "split.json", load_image_folder(digit_folder, image_size=8))


def test_folder_without_test_split_holds_out_a_tenth(tmp_path):
    images, labels = digit_images(100)
    class_folders(tmp_path, images, labels, [str(c) for c in range(10)], n_labeled=100, n_test=0)
    data = load_for_config(TrainConfig(dataset="folder", data_dir=str(tmp_path), image_size=8))
    assert data.test_labels.shape[0] == 10 and data.train_labels.shape[0] == 90
    assert len(data.files) == 90
    with pytest.raises(DataError, match="has no test images"):
        load_for_config(TrainConfig(dataset="folder", data_dir=str(tmp_path), val_fraction=0.0))
    with pytest.raises(DataError, match="for --dataset folder only"):
        load_for_config(TrainConfig(dataset="digits", labels_csv="x.csv"))


def test_data_info_prints_counts_and_the_chosen_subset(digit_folder, capsys, tmp_path):
    split = tmp_path / "split.json"
    args = ["data", "info", "folder", "--data-dir", str(digit_folder), "--image-size", "8", "--num-labels", "10"]
    assert main([*args, "--seed", "3", "--save-split", str(split)]) == 0
    out = capsys.readouterr().out
    assert "folder: 50 train and 30 test images of 1x8x8" in out and "40 extra unlabelled images" in out
    assert "labelled subset (seed 3, 10 labels): files labeled/" in out
    totals = next(line.split() for line in out.splitlines() if line.startswith("all "))
    assert totals == ["all", "50", "30", "10"]
    assert main(["data", "info", "folder", "--data-dir", str(digit_folder), "--labeled-split", str(split)]) == 0
    assert f"labelled subset (from {split})" in capsys.readouterr().out
    assert main(["data", "info", "digits", "--labeled-split", str(split)]) == 2
    assert "is a split of 'folder', not of 'digits'" in capsys.readouterr().err


def test_data_info_of_a_registered_data_set(capsys):
    assert main(["data", "info", "digits", "--num-labels", "20", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("digits: 1297 train and 500 test images of 1x8x8")
    assert "labelled subset (seed 1, 20 labels): indices " in out
    assert sum(int(line.split()[-1]) for line in out.splitlines()[2:12]) == 20


# ---- training on a folder through the CLI -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["class-folders", "csv"])
def test_train_a_few_steps_on_a_folder_of_fashion_mnist_pngs(shared_data, tmp_path, layout):
    fashion = load_dataset("fashion-mnist", str(shared_data))
    wanted = [0, 1, 8]  # T-shirt/top, Trouser, Bag
    rows = torch.cat([torch.nonzero(fashion.train_labels == c)[:30, 0] for c in wanted])
    images = fashion.train_images[rows, 0].numpy()
    labels = np.array([wanted.index(c) for c in fashion.train_labels[rows].tolist()])
    order = np.random.default_rng(0).permutation(len(rows))  # mix the classes over labelled/test/unlabelled
    images, labels = images[order], labels[order]
    classes = ["T-shirt", "Trouser", "Bag"]
    root = tmp_path / "images"
    if layout == "class-folders":
        class_folders(root, images, labels, classes, n_labeled=30, n_test=15)
        (root / "labeled" / "Sneaker").mkdir()  # an empty class
        (root / "unlabeled" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        extra = []
    else:
        flat_folder_with_csv(root, images, labels, classes, n_labeled=30, n_test=15)
        (root / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        with (root / "labels.csv").open("a") as csv:
            csv.write("images/missing.png,Sneaker\n")  # a class whose only file is missing
        extra = ["--labels-csv", str(root / "labels.csv"), "--test-csv", str(root / "test.csv")]
    out = tmp_path / "run"
    command = [sys.executable, "-m", "mixmatch", "train", "--dataset", "folder", "--data-dir", str(root), *extra]
    command += ["--steps", "5", "--eval-every", "5", "--arch", "cnn", "--batch-size", "16", "--no-progress"]
    result = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stderr and "corrupt.png" in result.stderr and "Sneaker" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["dataset"] == "folder" and summary["num_labels"] == 30 and summary["steps"] == 5
    split = json.loads((out / "split.json").read_text())
    assert len(split["files"]) == 30 and split["num_train"] == 30
    assert json.loads((out / "config.json").read_text())["image_size"] == 32
    assert list((root / ".mixmatch-cache").glob("*.pt"))

    # The same labelled images, by name, for a second method: in process, from the cache.
    again = tmp_path / "supervised"
    args = ["train", "--dataset", "folder", "--data-dir", str(root), *extra, "--method", "supervised", "--steps", "2"]
    args += ["--arch", "cnn", "--no-progress", "--labeled-split", str(out / "split.json"), "--out", str(again)]
    assert main(args) == 0
    assert json.loads((again / "split.json").read_text())["files"] == split["files"]


def test_train_on_a_digits_folder_without_shared_data(digit_folder, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--dataset", "folder", "--data-dir", str(digit_folder), "--image-size", "8", "--arch", "cnn"]
    args += ["--steps", "3", "--batch-size", "8", "--num-labels", "15", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_labels"] == 15 and 0 <= summary["test_accuracy"] <= 1
    assert len(json.loads((out / "split.json").read_text())["files"]) == 15


# ---- a resumed run labels what its split.json names; nothing the product writes is data ---------------------


def stopped_folder_run(root, out, capsys) -> list[str]:
    """A folder run stopped at step 4 of 8 (its last checkpoint and summary removed); the files its split.json names."""
    args = ["train", "--dataset", "folder", "--data-dir", str(root), "--image-size", "8", "--arch", "cnn"]
    args += ["--steps", "8", "--checkpoint-every", "4", "--batch-size", "8", "--num-labels", "20", "--amp", "off"]
    assert main([*args, "--no-progress", "--out", str(out)]) == 0
    capsys.readouterr()
    (out / "summary.json").unlink()
    (out / "checkpoints" / "step-00000008.pt").unlink()
    return json.loads((out / "split.json").read_text())["files"]


def test_a_resumed_folder_run_labels_the_files_of_its_split_json(digit_folder, tmp_path, capsys, caplog):
    from mixmatch.training.checkpoint import run_config
    from mixmatch.training.trainer import Trainer

    out = tmp_path / "run"
    named = stopped_folder_run(digit_folder, out, capsys)
    for i in range(6):  # six new photos of one class: a fresh draw of 20 labels picks other files
        save_png(digit_folder / "labeled" / "digit0" / f"000-new{i}.png", np.full((8, 8), 40 * i, dtype=np.uint8))
    cfg = run_config(out)
    grown = load_for_config(cfg)
    drawn = [grown.files[i] for i in choose_split(grown, 20, cfg.seed).tolist()]
    assert drawn != named, "the grown folder must draw another subset, or this test shows nothing"

    trainer = Trainer(cfg)
    with caplog.at_level(logging.WARNING):
        trainer.resume()
    assert [trainer.data.files[i] for i in trainer.split.tolist()] == named
    expected = torch.stack([trainer.data.train_images[trainer.data.files.index(name)] for name in named])
    assert torch.equal(trainer.labeled_x.cpu(), expected)
    assert "the data of" in caplog.text and "changed since the run started" in caplog.text
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert f"continuing {out} from step 4 of 8" in capsys.readouterr().err


def test_a_resumed_folder_run_whose_labelled_image_is_gone_or_changed_is_one_line(digit_folder, tmp_path, capsys,
                                                                                   cli_error):
    out = tmp_path / "run"
    named = stopped_folder_run(digit_folder, out, capsys)
    image = digit_folder / named[0]
    original = image.read_bytes()
    save_png(image, 255 - np.asarray(Image.open(image)))
    line = cli_error("train", "--resume", str(out), "--no-progress")
    assert f"names 1 labelled image that changed since: {named[0]} (its pixels changed)" in line
    image.unlink()
    line = cli_error("train", "--resume", str(out), "--no-progress")
    assert "split.json names 1 image that is not a labelled training image here" in line and named[0] in line
    image.write_bytes(original)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0


def test_a_labels_csv_that_moves_a_named_image_to_another_class_is_one_line(tmp_path, cli_error, capsys):
    images, labels = digit_images(60)
    flat_folder_with_csv(tmp_path, images, labels, [str(c) for c in range(10)], n_labeled=40, n_test=20)
    split = tmp_path / "split.json"
    args = ["data", "info", "folder", "--data-dir", str(tmp_path), "--labels-csv", str(tmp_path / "labels.csv")]
    args += ["--test-csv", str(tmp_path / "test.csv"), "--image-size", "8", "--num-labels", "10"]
    assert main([*args, "--save-split", str(split)]) == 0
    first = json.loads(split.read_text())["files"][0]
    rows = (tmp_path / "labels.csv").read_text().splitlines()
    moved = [f"{first},{'1' if row.split(',')[1] == '0' else '0'}" if row.startswith(first) else row for row in rows]
    (tmp_path / "labels.csv").write_text("\n".join(moved) + "\n")
    line = cli_error(*args[:-2], "--labeled-split", str(split))
    assert f"names 1 labelled image that changed since: {first} (class" in line


def test_run_folders_and_figures_inside_the_data_are_never_read_as_images(tmp_path, capsys):
    images, labels = digit_images(60)
    flat_folder_with_csv(tmp_path, images, labels, [str(c) for c in range(10)], n_labeled=40, n_test=0)
    csv = str(tmp_path / "labels.csv")
    before = load_image_folder(tmp_path, labels_csv=csv, image_size=8)
    run = tmp_path / "runs" / "r"  # the default runs/... of a command started inside the image folder
    args = ["train", "--dataset", "folder", "--data-dir", str(tmp_path), "--labels-csv", csv, "--image-size", "8"]
    assert main([*args, "--arch", "cnn", "--steps", "2", "--batch-size", "8", "--no-progress", "--out", str(run)]) == 0
    assert main(["export", str(run)]) == 0
    assert main(["evaluate", "--model", str(run), "--data-dir", str(tmp_path), "--labels-csv", csv,
                 "--out", str(tmp_path / "images" / "confusion.png")]) == 0  # a figure among the images themselves
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert main(["figures", "--out", str(tmp_path / "figures")]) == 0
    capsys.readouterr()
    written = sorted(p.name for p in tmp_path.rglob("*.png") if "images" not in p.parts or p.name == "confusion.png")
    assert written == ["beta.png", "confusion.png", "curves.png", "sharpening.png"]
    after = load_image_folder(tmp_path, labels_csv=csv, image_size=8)
    assert after.extra_unlabeled.shape == before.extra_unlabeled.shape and after.shape == before.shape == (1, 8, 8)
    assert torch.equal(after.extra_unlabeled, before.extra_unlabeled)


def test_labels_that_leave_a_class_bare_are_one_line_and_a_named_split_a_warning(digit_folder, cli_error, caplog):
    line = cli_error("train", "--dataset", "folder", "--data-dir", str(digit_folder), "--image-size", "8",
                     "--num-labels", "4", "--steps", "1", "--no-progress")
    assert "--num-labels 4 leaves 6 of the 10 classes without a labelled image (digit4, digit5, digit6" in line
    assert "give at least 10" in line
    data = load_image_folder(digit_folder, image_size=8)
    split = torch.nonzero(data.train_labels < 9)[:, 0]
    save_split(digit_folder.parent / "split.json", "folder", split, 0, data)
    with caplog.at_level(logging.WARNING):
        assert torch.equal(choose_split(data, None, 0, str(digit_folder.parent / "split.json")), split)
    assert "labels no image of 1 of the 10 classes (digit9)" in caplog.text


def test_byte_identical_copies_across_the_splits_are_one_warning_line(digit_folder, caplog):
    labelled = sorted((digit_folder / "labeled" / "digit3").glob("*.png"))
    (digit_folder / "test" / "digit3" / "copy-a.png").write_bytes(labelled[0].read_bytes())
    (digit_folder / "test" / "digit3" / "copy-b.png").write_bytes(labelled[1].read_bytes())
    (digit_folder / "unlabeled" / "copy-c.png").write_bytes(labelled[0].read_bytes())
    with caplog.at_level(logging.WARNING):
        load_image_folder(digit_folder, image_size=8)
    lines = [r.getMessage() for r in caplog.records if "byte-identical" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "2 test images copying labelled ones (test/digit3/copy-a.png = labeled/digit3/" in lines[0]
    assert "1 unlabelled image copying labelled ones (unlabeled/copy-c.png = labeled/digit3/" in lines[0]
    caplog.clear()
    for copy in ("test/digit3/copy-a.png", "test/digit3/copy-b.png", "unlabeled/copy-c.png"):
        (digit_folder / copy).unlink()
    with caplog.at_level(logging.WARNING):
        load_image_folder(digit_folder, image_size=8)
    assert "byte-identical" not in caplog.text
