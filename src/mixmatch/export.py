"""A trained model outside its run: export the EMA weights, predict image files, evaluate a labelled set.

`export` writes RUN_DIR/model.safetensors (weights only; safetensors holds no code) and beside it
model.json: architecture, class count and names, input channels and size, normalisation mean/std.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import runfolder
from .augment import normalize
from .data.dataset import DataError
from .data.images import ImageError, find_image_files, load_image
from .models import build_model
from .training import checkpoint

log = logging.getLogger(__name__)

MODEL_FORMAT = "mixmatch-model/1"


def export(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the newest readable checkpoint's EMA weights (the evaluated model) as safetensors plus its JSON.

    Newer checkpoints that are damaged are skipped with a warning (checkpoint.load_newest); CheckpointError
    if none loads.
    """
    from safetensors.torch import save_file

    out = Path(out) if out is not None else Path(run_dir) / runfolder.MODEL
    runfolder.writable_file(out, "exported model", hint="export --out FILE writes it elsewhere")
    _, state = checkpoint.load_newest(run_dir)
    if state["ema"] is not None:
        prefix = "module."
        weights = {k[len(prefix) :]: v for k, v in state["ema"].items() if k.startswith(prefix)}
    else:  # --ema-decay 0 evaluates the raw model
        weights = state["model"]
    runfolder.make_folder(out.parent)
    tensors = {k: v.contiguous() for k, v in weights.items()}  # channels_last weights are not contiguous
    runfolder.atomic_write(out, lambda tmp: save_file(tensors, str(tmp)))
    meta = dict(format=MODEL_FORMAT, **state["meta"], step=state["step"], weights=out.name)
    runfolder.write_json(runfolder.model_meta_path(out), meta)
    return out


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """An exported model in eval mode on the CPU, and its JSON; CheckpointError with one line if unusable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / runfolder.MODEL
    elif path.suffix == ".json":  # model.json names the model beside it
        path = path.with_suffix(Path(runfolder.MODEL).suffix)
    if not path.is_file():
        raise checkpoint.CheckpointError(f"model file {path} does not exist (write one with `mixmatch export RUN_DIR`)")
    if path.suffix == ".pt":
        raise checkpoint.CheckpointError(
            f"{path} is a training checkpoint; export its run first: mixmatch export RUN_DIR (then --model "
            "RUN_DIR/model.safetensors)"
        )
    meta_path = runfolder.model_meta_path(path)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        raise checkpoint.CheckpointError(
            f"{meta_path} is missing or not JSON; `mixmatch export` writes it beside the model"
        ) from None
    if meta.get("format") != MODEL_FORMAT:
        raise checkpoint.CheckpointError(f"{meta_path} does not describe a mixmatch model")
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise checkpoint.CheckpointError(f"model file {path} is truncated or not safetensors ({error})") from None
    model = build_model(meta["arch"], meta["num_classes"], meta["in_channels"], meta["image_size"])
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        reason = " ".join(str(error).split())[:300]
        raise checkpoint.CheckpointError(
            f"model file {path} does not fit {checkpoint.describe(meta)}: {reason}"
        ) from None
    return model.eval(), meta


def read_image(path: Path, channels: int, size: int) -> Tensor:
    """One image file as uint8 (C, size, size), prepared as `--dataset folder` prepares training images
    (`images.load_image`: upright, 8 bits, the model's channels, scaled and centre-cropped).
    Raises ImageError with one line for a file that is not a readable image."""
    array = load_image(path, size, channels)
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1)


def image_files(inputs: list[str | Path]) -> list[Path]:
    """Files named, and the image files (by suffix) anywhere under folders named, in order; hidden files and
    folders, and the folders the product writes (runs, grids), are passed over in a folder.

    Raises DataError for a name that does not exist and a folder without image files."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(find_image_files(item))
            if not found:
                raise DataError(f"no image files in {item}")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"{item} does not exist")
    return files


@torch.no_grad()
def classify(model: nn.Module, meta: dict[str, Any], images: Tensor, batch: int = 512) -> Tensor:
    """Softmax probabilities (N, L) of uint8 images (N, C, H, W), normalised as in training."""
    mean, std = torch.tensor(meta["mean"]), torch.tensor(meta["std"])
    probs = [
        torch.softmax(model(normalize(images[i : i + batch], mean, std)), -1) for i in range(0, len(images), batch)
    ]
    return torch.cat(probs) if probs else torch.zeros(0, meta["num_classes"])


def predict(model_path: str | Path, inputs: list[str | Path]) -> list[dict[str, Any]]:
    """Class name and confidence of each image file (folders are searched for images).

    A file that is not a readable image is skipped with one warning line that names it, as training skips it;
    DataError where none is readable."""
    model, meta = load_model(model_path)
    files: list[Path] = []
    read: list[Tensor] = []
    skipped: list[tuple[Path, ImageError]] = []
    for f in image_files(inputs):
        try:
            read.append(read_image(f, meta["in_channels"], meta["image_size"]))
            files.append(f)
        except ImageError as error:
            skipped.append((f, error))
    if skipped:
        if not files and len(skipped) == 1:
            raise skipped[0][1]
        shown = ", ".join(f"{f} ({e.reason})" for f, e in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        if not files:
            raise DataError(f"none of the {len(skipped)} files is a readable image: {shown}")
        log.warning(f"mixmatch: warning: skipped {len(skipped)} file(s) that are not readable images: {shown}")
    images = torch.stack(read)
    confidence, index = classify(model, meta, images).max(-1)
    return [
        {"path": str(f), "class": meta["classes"][i], "confidence": round(c, 6)}
        for f, i, c in zip(files, index.tolist(), confidence.tolist(), strict=True)
    ]


def as_channels(images: Tensor, channels: int) -> Tensor:
    """uint8 images (N, C, H, W) with `channels` channels where grey and RGB meet, as predict reads a file: grey
    copied into R, G and B, or RGB to ITU-R 601 luma (torchvision's rgb_to_grayscale, Pillow's "L"); other
    counts as they are."""
    from torchvision.transforms.functional import rgb_to_grayscale

    if images.shape[1] == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1)
    if images.shape[1] == 3 and channels == 1:
        return rgb_to_grayscale(images)
    return images


def confusion_matrix(predicted: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(L, L) counts, row = true class, column = predicted class."""
    return torch.bincount(labels * num_classes + predicted, minlength=num_classes**2).view(num_classes, num_classes)


def plot_confusion(matrix: Tensor, classes: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    fig, ax = plt.subplots(figsize=(2 + 0.45 * n, 1.5 + 0.45 * n))
    ax.imshow(matrix.numpy(), cmap="Blues")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(classes, rotation=90)
    ax.set_yticklabels(classes)
    if n <= 20:
        peak = int(matrix.max())
        for (t, p), count in np.ndenumerate(matrix.numpy()):
            ax.text(p, t, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black")
    fig.tight_layout()
    runfolder.save_figure(fig, path, dpi=120)
    plt.close(fig)


def evaluate(
    model_path: str | Path,
    dataset: str | None = None,
    data_dir: str | None = None,
    out: str | Path | None = None,
    *,
    download: bool = False,
    labels_csv: str | None = None,
    test_csv: str | None = None,
    image_size: int | None = None,
    strict_images: bool = False,
    val_fraction: float | None = None,
) -> dict[str, Any]:
    """Accuracy of an exported model on a data set's evaluation split, per class too, and a confusion matrix PNG.

    The split is the one training measured: the test split, or for an image folder without one the validation
    images held out by `val_fraction` (0.1 by default, drawn as training drew them). `dataset` and
    `image_size` default to the model's own (model.json). The data options are TrainConfig's fields of the
    same names. Raises ConfigError for an option out of range, DataError for data that does not load or has
    no evaluation images, CheckpointError for a model that does not fit the data.
    """
    from .config import TrainConfig
    from .data.splits import load_for_config

    model, meta = load_model(model_path)
    model_path = Path(model_path)
    folder = model_path if model_path.is_dir() else model_path.parent
    dataset = dataset or meta.get("dataset")
    if dataset is None:
        raise checkpoint.CheckpointError(f"{model_path} does not say which data set it was trained on; name one")
    cfg = TrainConfig(
        dataset=dataset,
        data_dir=data_dir,
        download=download,
        labels_csv=labels_csv,
        test_csv=test_csv,
        image_size=meta["image_size"] if image_size is None else image_size,
        strict_images=strict_images,
        val_fraction=val_fraction,
    ).validate()
    png = Path(out) if out is not None else folder / f"confusion-{dataset}.png"
    runfolder.writable_file(png, "confusion matrix", hint="--out FILE writes it elsewhere")
    data = load_for_config(cfg)
    images = as_channels(data.test_images, meta["in_channels"])
    shape = (meta["in_channels"], meta["image_size"], meta["image_size"])
    if tuple(images.shape[1:]) != shape or data.num_classes != meta["num_classes"]:
        c, s, _ = data.shape
        raise checkpoint.CheckpointError(
            f"{dataset} has {data.num_classes} classes of {c}x{s}x{s} images; the model is {checkpoint.describe(meta)}"
        )
    differ = [(i, a, b) for i, (a, b) in enumerate(zip(data.classes, meta["classes"], strict=True)) if a != b]
    if differ:
        i, here, model_class = differ[0]
        raise checkpoint.CheckpointError(
            f"class {i} of {dataset} is {here!r}, the model's class {i} is {model_class!r}"
        )
    predicted = classify(model, meta, images).argmax(-1)
    matrix = confusion_matrix(predicted, data.test_labels, data.num_classes)
    accuracy = matrix.trace().item() / len(data.test_labels)
    runfolder.make_folder(png.parent)
    title = f"{dataset}, {len(data.test_labels)} evaluation images: {100 * accuracy:.2f}% accurate"
    plot_confusion(matrix, meta["classes"], png, title)
    # Where the errors sit: with a few labels per class, semi-supervised learning helps some classes and not others.
    per_class = matrix.diagonal() / matrix.sum(1).clamp(min=1)
    return dict(
        dataset=dataset,
        images=len(data.test_labels),
        accuracy=accuracy,
        per_class_accuracy={name: round(a, 4) for name, a in zip(meta["classes"], per_class.tolist(), strict=True)},
        confusion=matrix.tolist(),
        png=str(png),
    )
