"""Which training images a run labels: class-balanced labelled subsets chosen by seed, the validation
hold-out, split.json files, and the table of a split that `mixmatch data info` prints.

`load_for_config` puts loading and hold-out together: the data set a run trains and evaluates on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .. import runfolder
from .dataset import DataError, ImageDataset
from .loaders import load_dataset

if TYPE_CHECKING:
    from ..config import TrainConfig

log = logging.getLogger(__name__)


def hold_out(data: ImageDataset, fraction: float) -> ImageDataset:
    """Move `fraction` of every class's training images to the test split, which they replace.

    The held-out images are drawn with a fixed seed, not the run's, so every method and seed is measured
    on the same validation images; they leave the unlabelled pool as well (it is built from the train split).
    """
    if not 0 < fraction < 1:
        raise DataError(f"--val-fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(0)
    labels = data.train_labels.numpy()
    held = []
    for c in range(data.num_classes):
        members = np.flatnonzero(labels == c)
        # At least one image of every class that has two, and never a class's last training image.
        count = min(max(round(fraction * len(members)), 1), len(members) - 1) if len(members) > 1 else 0
        held.append(rng.choice(members, count, replace=False))
    held_idx = np.sort(np.concatenate(held))
    keep = np.setdiff1d(np.arange(len(labels)), held_idx)
    held_t, keep_t = torch.as_tensor(held_idx), torch.as_tensor(keep)
    return dataclasses.replace(
        data,
        train_images=data.train_images[keep_t],
        train_labels=data.train_labels[keep_t],
        test_images=data.train_images[held_t],
        test_labels=data.train_labels[held_t],
        files=[data.files[i] for i in keep] if data.files is not None else None,
        evaluation="validation",
    )


def load_for_config(cfg: TrainConfig) -> ImageDataset:
    """The data set a run trains and evaluates on: loaded, with its validation images held out if asked."""
    options = {}
    if cfg.dataset == "folder":
        options = dict(
            labels_csv=cfg.labels_csv,
            test_csv=cfg.test_csv,
            image_size=cfg.image_size if cfg.image_size is not None else cfg.resolved().image_size,
            strict=cfg.strict_images,
        )
    elif cfg.labels_csv or cfg.test_csv:
        raise DataError("--labels-csv and --test-csv are for --dataset folder only")
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, **options)
    fraction = cfg.val_fraction
    if fraction is None:
        fraction = 0.1 if data.test_labels.numel() == 0 else 0.0
    if fraction:
        data = hold_out(data, fraction)
        if cfg.val_fraction is None:
            n = data.test_labels.numel()
            log.warning(
                f"mixmatch: {cfg.dataset} has no test split, so {n} labelled images ({fraction:.0%}) are held out as "
                f"one; --val-fraction sets the share"
                + (f" (on {n} images, accuracy moves in steps of {100 / n:.1f} points)" if 0 < n < 100 else "")
            )
    if data.test_labels.numel() == 0:
        raise DataError(f"{cfg.dataset} has no test images: give it a test split or a --val-fraction above 0")
    return data


def _quotas(counts: np.ndarray, num_labels: int, even: bool) -> np.ndarray:
    """Labels to draw from each class: exactly equal (even), or as equal as the class sizes allow."""
    num_classes = len(counts)
    if even:
        if num_labels % num_classes:
            lower = num_labels // num_classes * num_classes
            raise DataError(
                f"--num-labels {num_labels} is not a multiple of the {num_classes} classes "
                f"(a balanced split needs e.g. {lower or num_classes} or {lower + num_classes})"
            )
        per_class = num_labels // num_classes
        for c, count in enumerate(counts):
            if count < per_class:
                raise DataError(
                    f"--num-labels {num_labels} asks for {per_class} labels per class, but class {c} has only "
                    f"{count} training images"
                )
        return np.full(num_classes, per_class)
    if num_labels > counts.sum():
        raise DataError(f"--num-labels {num_labels} is more than the {counts.sum()} labelled training images")
    # Water-filling: an equal share for every class that still has images; what a small class cannot
    # take goes to the others; the last few labels go to the lowest class indices.
    quota = np.zeros(num_classes, dtype=np.int64)
    remaining = num_labels
    while remaining:
        open_classes = np.flatnonzero(quota < counts)
        share = max(remaining // len(open_classes), 1)
        for c in open_classes:
            take = min(share, counts[c] - quota[c], remaining)
            quota[c] += take
            remaining -= take
            if not remaining:
                break
    return quota


def labeled_split(
    labels: Tensor,
    num_labels: int,
    num_classes: int,
    seed: int,
    even: bool = True,
    classes: Sequence[str] | None = None,
) -> Tensor:
    """Indices of a class-balanced labelled subset, sorted.

    even: exactly num_labels / num_classes per class (the paper's protocol); refuses a num_labels that is
    not a multiple of the class count, and a class with fewer examples than asked for.
    not even: as balanced as the class sizes allow, any num_labels up to the number of labelled images (for
    image folders, whose classes need not be balanced); refuses a num_labels that would leave a class that has
    images without a labelled one (`classes` names them in the message).
    The same arguments always give the same indices.
    """
    if num_labels <= 0:
        raise DataError(f"--num-labels must be positive, got {num_labels}")
    labels_np = labels.numpy()
    counts = np.bincount(labels_np, minlength=num_classes)
    quota = _quotas(counts, num_labels, even)
    bare = [c for c in range(num_classes) if counts[c] and not quota[c]]
    if bare:
        names = [classes[c] if classes is not None else str(c) for c in bare]
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise DataError(
            f"--num-labels {num_labels} leaves {len(bare)} of the {num_classes} classes without a labelled image "
            f"({shown}), so nothing could teach them: give at least {int((counts > 0).sum())}"
        )
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels_np == c), quota[c], replace=False) for c in range(num_classes)]
    return torch.as_tensor(np.sort(np.concatenate(chosen)), dtype=torch.int64)


def choose_split(data: ImageDataset, num_labels: int | None, seed: int, split_file: str | None = None) -> Tensor:
    """The labelled subset of a run: read from a split file, every labelled image (num_labels None), or drawn."""
    if split_file is not None:
        split = read_split(split_file, data)
        missing = sorted(set(range(data.num_classes)) - set(data.train_labels[split].tolist()))
        if missing:  # the user named this subset: said, not refused
            names = ", ".join(data.classes[c] for c in missing[:5]) + (", ..." if len(missing) > 5 else "")
            log.warning(f"mixmatch: warning: --labeled-split {split_file} labels no image of {len(missing)} of the "
                        f"{data.num_classes} classes ({names}): nothing teaches them")
        return split
    if num_labels is None:
        return torch.arange(data.train_labels.shape[0])
    return labeled_split(
        data.train_labels, num_labels, data.num_classes, seed, even=data.files is None, classes=data.classes
    )


def _digest(*tensors: Tensor | None) -> str:
    """A short hash of the bytes of `tensors` (None is skipped): images and labels as a run sees them."""
    h = hashlib.blake2b(digest_size=8)
    for tensor in tensors:
        if tensor is not None:
            h.update(str(tuple(tensor.shape)).encode())
            h.update(tensor.contiguous().numpy().tobytes())
    return h.hexdigest()


def data_digest(data: ImageDataset) -> str:
    """A hash of every image and label a run trains and evaluates on (train, test and the extra unlabelled pool)."""
    return _digest(data.train_images, data.train_labels, data.test_images, data.test_labels, data.extra_unlabeled)


def save_split(path: Path, dataset: str, indices: Tensor, seed: int, data: ImageDataset | None = None) -> None:
    """Write split.json: the labelled indices and, with `data`, what checks that a later run labels the same images:
    a hash of the labelled images and labels, a hash of the whole data set, and for image folders the labelled
    files by name with each one's class and pixel hash."""
    record: dict[str, Any] = {"dataset": dataset, "seed": seed, "indices": indices.tolist()}
    if data is not None:
        record["num_train"] = int(data.train_labels.shape[0])
        record["labelled_digest"] = _digest(data.train_images[indices], data.train_labels[indices])
        record["data_digest"] = data_digest(data)
        record["image_shape"] = list(data.shape)
        if data.files is not None:
            chosen = indices.tolist()
            record["files"] = [data.files[i] for i in chosen]
            record["labels"] = [data.classes[int(data.train_labels[i])] for i in chosen]
            record["file_digests"] = [_digest(data.train_images[i]) for i in chosen]
    runfolder.write_text(path, json.dumps(record))


# Data sets that share a training split, so that a split of one is a split of the other.
_SAME_TRAIN_SET = {"svhn-extra": "svhn"}


def read_split(path: str | Path, data: ImageDataset, what: str | None = None) -> Tensor:
    """The labelled indices of a split.json written by an earlier run, checked against `data`.

    For image folders the file names are matched (indices would change when images are added); for the
    registered data sets the indices are used as they are. Where the file records them (runs since split.json
    held hashes), the labelled images must be those it names, with the same pixels and classes. `what` names
    the file in messages (default `--labeled-split PATH`). Raises DataError naming the images that are gone or
    changed.
    """
    path = Path(path)
    what = what or f"--labeled-split {path}"
    try:
        record = json.loads(path.read_text())
        dataset, indices = record["dataset"], record["indices"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{what} is not a readable split.json ({type(error).__name__}: {error})") from None
    if _SAME_TRAIN_SET.get(dataset, dataset) != _SAME_TRAIN_SET.get(data.name, data.name):
        raise DataError(f"{what} is a split of {dataset!r}, not of {data.name!r}")
    num_train = data.train_labels.shape[0]
    if data.files is not None and "files" in record:
        return _named_files(record, data, what)
    if record.get("num_train", num_train) != num_train:
        raise DataError(
            f"{what} splits {record['num_train']} training images, this {data.name} has {num_train} "
            f"(another --val-fraction?)"
        )
    if not indices or len(set(indices)) != len(indices) or not all(0 <= i < num_train for i in indices):
        raise DataError(f"{what} holds no indices, repeated ones, or some outside 0..{num_train - 1}")
    split = torch.as_tensor(sorted(indices), dtype=torch.int64)
    saved = record.get("labelled_digest")
    if saved is not None and saved != _digest(data.train_images[split], data.train_labels[split]):
        raise DataError(
            f"{what} names {len(split)} labelled images of {data.name} whose pixels or labels differ from those it was "
            f"made on: are these the data set's own files?"
        )
    return split


def _named_files(record: dict[str, Any], data: ImageDataset, what: str) -> Tensor:
    """The positions in `data` of the files a folder's split.json names, each checked to be there, unchanged."""
    assert data.files is not None
    position = {name: i for i, name in enumerate(data.files)}
    files = record["files"]
    absent = [name for name in files if name not in position]
    if absent:
        these = "1 image that is not a labelled training image" if len(absent) == 1 else (
            f"{len(absent)} images that are not labelled training images"
        )
        raise DataError(f"{what} names {these} here (moved, deleted or unreadable), e.g. {', '.join(absent[:3])}")
    rows = [position[name] for name in files]
    problems = []
    for name, label in zip(files, record.get("labels", []), strict=False):
        now = data.classes[int(data.train_labels[position[name]])]
        if now != label:
            problems.append(f"{name} (class {label!r}, now {now!r})")
    # Pixels compare only at the size they were hashed at (a split may be reused at another --image-size).
    same_size = record.get("image_shape") == list(data.shape)
    for name, digest in zip(files, record.get("file_digests", []) if same_size else [], strict=False):
        if _digest(data.train_images[position[name]]) != digest:
            problems.append(f"{name} (its pixels changed)")
    if problems:
        raise DataError(
            f"{what} names {len(problems)} labelled image{'' if len(problems) == 1 else 's'} that changed since: "
            f"{', '.join(problems[:3])}"
            f"{', ...' if len(problems) > 3 else ''}; put them back as they were, or train afresh"
        )
    return torch.as_tensor(sorted(rows), dtype=torch.int64)


def recorded_data_digest(path: str | Path) -> str | None:
    """The hash of the whole data set a split.json records (None for one written before it did, or unreadable)."""
    try:
        return json.loads(Path(path).read_text()).get("data_digest")
    except (OSError, ValueError, AttributeError):
        return None


def describe_split(data: ImageDataset, split: Tensor, how: str) -> str:
    """A table of images per class in train, test and the labelled subset, and which images that subset holds.

    `how` says where the subset came from (e.g. "seed 0, 250 labels"), for the table's heading.
    """
    channels, height, width = data.shape
    pool = 0 if data.extra_unlabeled is None else data.extra_unlabeled.shape[0]
    lines = [
        f"{data.name}: {data.train_labels.shape[0]} train and {data.test_labels.shape[0]} test images of "
        f"{channels}x{height}x{width} (channels x height x width), {data.num_classes} classes, "
        f"{pool} extra unlabelled images"
    ]
    counts = [
        torch.bincount(labels, minlength=data.num_classes).tolist()
        for labels in (data.train_labels, data.test_labels, data.train_labels[split])
    ]
    width_name = max(5, *(len(c) for c in data.classes))
    lines.append(f"{'class':<{width_name}}  {'train':>7}  {'test':>7}  {'labelled':>8}")
    for c, name in enumerate(data.classes):
        lines.append(f"{name:<{width_name}}  {counts[0][c]:>7}  {counts[1][c]:>7}  {counts[2][c]:>8}")
    lines.append(f"{'all':<{width_name}}  {sum(counts[0]):>7}  {sum(counts[1]):>7}  {sum(counts[2]):>8}")
    chosen = [data.files[i] for i in split.tolist()] if data.files is not None else split.tolist()
    shown = ", ".join(map(str, chosen[:10])) + (f", ... ({len(chosen) - 10} more)" if len(chosen) > 10 else "")
    lines.append(f"labelled subset ({how}): {'files' if data.files is not None else 'indices'} {shown}")
    return "\n".join(lines)
