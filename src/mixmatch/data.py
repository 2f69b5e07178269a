"""Data sets as uint8 image tensors, and class-balanced labelled subsets chosen by seed.

Every loader returns an `ImageDataset`: images (N, C, H, W) uint8, labels (N,) int64, class names,
and optionally an extra unlabelled pool. Real data sets go through torchvision's classes (their
file checks and download code); scikit-learn's digits is embedded and needs no file; your own image
folders are read by `mixmatch.folder`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from .config import TrainConfig


class DataError(ValueError):
    """A problem with the data or the split that the user can fix; its message is one line."""


@dataclass
class ImageDataset:
    name: str
    train_images: Tensor  # (N, C, H, W) uint8
    train_labels: Tensor  # (N,) int64
    test_images: Tensor
    test_labels: Tensor
    classes: list[str]
    extra_unlabeled: Tensor | None = None  # (M, C, H, W) uint8 images that have no label at all
    # Image folders only: each training image's path relative to the folder, so that split files can name
    # images rather than indices; their labels need not be balanced over the classes.
    files: list[str] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    def channel_stats(self) -> tuple[Tensor, Tensor]:
        """Per-channel mean and std of the training images, in [0, 1] units: (C,), (C,)."""
        n_pixels = self.train_images.shape[0] * self.train_images.shape[2] * self.train_images.shape[3]
        means, stds = [], []
        for c in range(self.train_images.shape[1]):
            channel = self.train_images[:, c]
            total = channel.sum(dtype=torch.float64)
            squares = (channel.to(torch.float64) ** 2).sum()
            mean = total / n_pixels
            means.append(mean / 255)
            stds.append(((squares / n_pixels - mean**2).clamp_min(1e-12)).sqrt() / 255)
        return torch.stack(means).float(), torch.stack(stds).float()


def _to_nchw(array: np.ndarray | Tensor, layout: str) -> Tensor:
    images = torch.as_tensor(np.asarray(array))
    if layout == "NHW":
        images = images.unsqueeze(1)
    elif layout == "NHWC":
        images = images.permute(0, 3, 1, 2)
    return images.to(torch.uint8).contiguous()


def load_digits_dataset(data_dir: str | None = None, download: bool = False) -> ImageDataset:
    """scikit-learn's 8x8 digits (1797 images), split 1297 train / 500 test, stratified, fixed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    train_idx, test_idx = train_test_split(
        np.arange(len(images)), test_size=500, random_state=0, stratify=digits.target
    )
    tensor = _to_nchw(images, "NHW")
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    return ImageDataset(
        "digits",
        tensor[train_idx],
        labels[train_idx],
        tensor[test_idx],
        labels[test_idx],
        [str(i) for i in range(10)],
    )


def _expected_files(name: str, root: Path) -> tuple[list[Path], str]:
    """The files torchvision reads for a data set under `root`, and where to get them by hand."""
    import torchvision.datasets as tvd

    if name in ("mnist", "fashion-mnist"):
        cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
        raw = root / cls.__name__ / "raw"
        return [raw / Path(f).stem for f, _ in cls.resources], f"the four .gz files of {cls.mirrors[0]} (gunzipped)"
    if name in ("cifar10", "cifar100"):
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        names = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return [root / cls.base_folder / f for f in names], f"{cls.url} (unpacked)"
    if name in ("svhn", "svhn-extra"):
        splits = ("train", "test", "extra") if name == "svhn-extra" else ("train", "test")
        files = [root / tvd.SVHN.split_list[s][1] for s in splits]
        return files, "the .mat files of http://ufldl.stanford.edu/housenumbers/"
    names = [f for f, _ in tvd.STL10.train_list + tvd.STL10.test_list]
    return [root / tvd.STL10.base_folder / f for f in names], f"{tvd.STL10.url} (unpacked)"


def _missing_message(name: str, root: Path, error: Exception) -> str:
    files, source = _expected_files(name, root)
    missing = [str(f.relative_to(root)) for f in files if not f.is_file()]
    if not missing:
        return (
            f"{name} in {root} fails torchvision's checksum test ({error}); replace the damaged files with those "
            f"of {source}, or delete them and add --download"
        )
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    return (
        f"{name} is not in {root}: missing {', '.join(missing[:3])}{more} there; add --download to fetch it "
        f"(needs the internet), or get {source} and place the files as listed"
    )


def _torchvision(name: str, data_dir: str | None, download: bool, build: Callable[[str, bool], ImageDataset]):
    if data_dir is None:
        raise DataError(f"data set {name!r} needs --data-dir (the folder that holds it, or where to download it)")
    root = Path(data_dir).expanduser()
    if not root.is_dir() and not download:
        raise DataError(f"--data-dir {root} does not exist (add --download to fetch {name} there)")
    try:
        return build(str(root), download)
    except (RuntimeError, OSError) as error:
        files, source = _expected_files(name, root)
        if download and not all(f.is_file() for f in files):
            # torchvision's download errors span lines (one per mirror tried); the first names the file.
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DataError(f"downloading {name} into {root} failed ({first_line}); get {source} by hand") from None
        if "not found" in str(error).lower() or "corrupted" in str(error).lower():
            raise DataError(_missing_message(name, root, error)) from None
        raise


def _mnist_like(cls_name: str, name: str) -> Callable[[str | None, bool], ImageDataset]:
    def load(data_dir: str | None = None, download: bool = False) -> ImageDataset:
        import torchvision.datasets as tvd

        def build(root: str, download: bool) -> ImageDataset:
            cls = getattr(tvd, cls_name)
            train, test = cls(root, train=True, download=download), cls(root, train=False, download=download)
            return ImageDataset(
                name,
                _to_nchw(train.data, "NHW"),
                train.targets.long(),
                _to_nchw(test.data, "NHW"),
                test.targets.long(),
                list(train.classes),
            )

        return _torchvision(name, data_dir, download, build)

    return load


def _cifar(cls_name: str, name: str) -> Callable[[str | None, bool], ImageDataset]:
    def load(data_dir: str | None = None, download: bool = False) -> ImageDataset:
        import torchvision.datasets as tvd

        def build(root: str, download: bool) -> ImageDataset:
            cls = getattr(tvd, cls_name)
            train, test = cls(root, train=True, download=download), cls(root, train=False, download=download)
            return ImageDataset(
                name,
                _to_nchw(train.data, "NHWC"),
                torch.as_tensor(train.targets),
                _to_nchw(test.data, "NHWC"),
                torch.as_tensor(test.targets),
                list(train.classes),
            )

        return _torchvision(name, data_dir, download, build)

    return load


def load_svhn(data_dir: str | None = None, download: bool = False, extra: bool = False) -> ImageDataset:
    """SVHN train/test; with `extra` (data set `svhn-extra`), the 531k 'extra' images become the unlabelled pool."""
    import torchvision.datasets as tvd

    name = "svhn-extra" if extra else "svhn"

    def build(root: str, download: bool) -> ImageDataset:
        train = tvd.SVHN(root, split="train", download=download)
        test = tvd.SVHN(root, split="test", download=download)
        pool = _to_nchw(tvd.SVHN(root, split="extra", download=download).data, "NCHW") if extra else None
        return ImageDataset(
            name,
            _to_nchw(train.data, "NCHW"),
            torch.as_tensor(train.labels).long(),
            _to_nchw(test.data, "NCHW"),
            torch.as_tensor(test.labels).long(),
            [str(i) for i in range(10)],
            pool,
        )

    return _torchvision(name, data_dir, download, build)


# torchvision takes STL-10's class names from class_names.txt and leaves them out when that file is absent.
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def load_stl10(data_dir: str | None = None, download: bool = False) -> ImageDataset:
    """STL-10: 5000 labelled train, 8000 test, and its 100k 'unlabeled' split as the unlabelled pool."""
    import torchvision.datasets as tvd

    def build(root: str, download: bool) -> ImageDataset:
        train = tvd.STL10(root, split="train", download=download)
        test = tvd.STL10(root, split="test", download=download)
        pool = tvd.STL10(root, split="unlabeled", download=download)
        return ImageDataset(
            "stl10",
            _to_nchw(train.data, "NCHW"),
            torch.as_tensor(train.labels).long(),
            _to_nchw(test.data, "NCHW"),
            torch.as_tensor(test.labels).long(),
            list(getattr(train, "classes", STL10_CLASSES)),
            _to_nchw(pool.data, "NCHW"),
        )

    return _torchvision("stl10", data_dir, download, build)


def load_folder(data_dir: str | None = None, download: bool = False, **options: Any) -> ImageDataset:
    """Your own images (see `mixmatch.folder.load_image_folder` for the layouts and options)."""
    from .folder import load_image_folder

    if data_dir is None:
        raise DataError("--dataset folder needs --data-dir ROOT, the folder that holds your images")
    return load_image_folder(data_dir, **options)


DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "digits": load_digits_dataset,
    "mnist": _mnist_like("MNIST", "mnist"),
    "fashion-mnist": _mnist_like("FashionMNIST", "fashion-mnist"),
    "cifar10": _cifar("CIFAR10", "cifar10"),
    "cifar100": _cifar("CIFAR100", "cifar100"),
    "svhn": load_svhn,
    "svhn-extra": functools.partial(load_svhn, extra=True),
    "stl10": load_stl10,
    "folder": load_folder,
}


def load_dataset(name: str, data_dir: str | None = None, download: bool = False, **options: Any) -> ImageDataset:
    """Load a registered data set by name; raises DataError with a one-line message on any problem.

    `options` go to the `folder` loader only (labels_csv, test_csv, image_size, strict).
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name](data_dir, download, **options)


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
    )


def load_for_config(cfg: TrainConfig) -> ImageDataset:
    """The data set a run trains and evaluates on: loaded, with its validation images held out if asked."""
    options = {}
    if cfg.dataset == "folder":
        options = dict(
            labels_csv=cfg.labels_csv, test_csv=cfg.test_csv, image_size=cfg.image_size, strict=cfg.strict_images
        )
    elif cfg.labels_csv or cfg.test_csv:
        raise DataError("--labels-csv and --test-csv are for --dataset folder only")
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, **options)
    fraction = cfg.val_fraction
    if fraction is None:
        fraction = 0.1 if data.test_labels.numel() == 0 else 0.0
    if fraction:
        data = hold_out(data, fraction)
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


def labeled_split(labels: Tensor, num_labels: int, num_classes: int, seed: int, even: bool = True) -> Tensor:
    """Indices of a class-balanced labelled subset, sorted.

    even: exactly num_labels / num_classes per class (the paper's protocol); refuses a num_labels that is
    not a multiple of the class count, and a class with fewer examples than asked for.
    not even: as balanced as the class sizes allow, any num_labels up to the number of labelled images (for
    image folders, whose classes need not be balanced).
    The same arguments always give the same indices.
    """
    if num_labels <= 0:
        raise DataError(f"--num-labels must be positive, got {num_labels}")
    labels_np = labels.numpy()
    quota = _quotas(np.bincount(labels_np, minlength=num_classes), num_labels, even)
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels_np == c), quota[c], replace=False) for c in range(num_classes)]
    return torch.as_tensor(np.sort(np.concatenate(chosen)), dtype=torch.int64)


def choose_split(data: ImageDataset, num_labels: int | None, seed: int, split_file: str | None = None) -> Tensor:
    """The labelled subset of a run: read from a split file, every labelled image (num_labels None), or drawn."""
    if split_file is not None:
        return read_split(split_file, data)
    if num_labels is None:
        return torch.arange(data.train_labels.shape[0])
    return labeled_split(data.train_labels, num_labels, data.num_classes, seed, even=data.files is None)


def save_split(path: Path, dataset: str, indices: Tensor, seed: int, data: ImageDataset | None = None) -> None:
    """Write split.json: the labelled indices, and for image folders the labelled files by name."""
    record: dict[str, Any] = {"dataset": dataset, "seed": seed, "indices": indices.tolist()}
    if data is not None:
        record["num_train"] = int(data.train_labels.shape[0])
        if data.files is not None:
            record["files"] = [data.files[i] for i in indices.tolist()]
    path.write_text(json.dumps(record))


# Data sets that share a training split, so that a split of one is a split of the other.
_SAME_TRAIN_SET = {"svhn-extra": "svhn"}


def read_split(path: str | Path, data: ImageDataset) -> Tensor:
    """The labelled indices of a split.json written by an earlier run, checked against `data`.

    For image folders the file names are matched (indices would change when images are added); for the
    registered data sets the indices are used as they are.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        dataset, indices = record["dataset"], record["indices"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(
            f"--labeled-split {path} is not a readable split.json ({type(error).__name__}: {error})"
        ) from None
    if _SAME_TRAIN_SET.get(dataset, dataset) != _SAME_TRAIN_SET.get(data.name, data.name):
        raise DataError(f"--labeled-split {path} is a split of {dataset!r}, not of {data.name!r}")
    num_train = data.train_labels.shape[0]
    if data.files is not None and "files" in record:
        position = {name: i for i, name in enumerate(data.files)}
        absent = [name for name in record["files"] if name not in position]
        if absent:
            raise DataError(
                f"--labeled-split {path} names {len(absent)} images that are not labelled training images here, "
                f"e.g. {', '.join(absent[:3])}"
            )
        return torch.as_tensor(sorted(position[name] for name in record["files"]), dtype=torch.int64)
    if record.get("num_train", num_train) != num_train:
        raise DataError(
            f"--labeled-split {path} splits {record['num_train']} training images, this {data.name} has {num_train} "
            f"(another --val-fraction?)"
        )
    if not indices or len(set(indices)) != len(indices) or not all(0 <= i < num_train for i in indices):
        raise DataError(f"--labeled-split {path} holds no indices, repeated ones, or some outside 0..{num_train - 1}")
    return torch.as_tensor(sorted(indices), dtype=torch.int64)


def describe(data: ImageDataset, split: Tensor, how: str) -> str:
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
