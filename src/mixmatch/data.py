"""Data sets as uint8 image tensors, and class-balanced labelled subsets chosen by seed.

Every loader returns an `ImageDataset`: images (N, C, H, W) uint8, labels (N,) int64, class names,
and optionally an extra unlabelled pool. Real data sets go through torchvision's classes (their
file checks and download code); scikit-learn's digits is embedded and needs no file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


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


def _torchvision(name: str, data_dir: str | None, download: bool, build: Callable[[str, bool], ImageDataset]):
    if data_dir is None:
        raise DataError(f"data set {name!r} needs --data-dir (the folder that holds it, or where to download it)")
    root = Path(data_dir).expanduser()
    if not root.is_dir() and not download:
        raise DataError(f"--data-dir {root} does not exist (add --download to fetch {name} there)")
    try:
        return build(str(root), download)
    except RuntimeError as error:
        if "not found" in str(error).lower() or "corrupted" in str(error).lower():
            raise DataError(
                f"{name} is not in {root} ({error}); add --download to fetch it, or point --data-dir at "
                f"the folder holding torchvision's copy"
            ) from None
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
    """SVHN train/test; with `extra`, the 531k 'extra' images become the unlabelled pool."""
    import torchvision.datasets as tvd

    def build(root: str, download: bool) -> ImageDataset:
        train = tvd.SVHN(root, split="train", download=download)
        test = tvd.SVHN(root, split="test", download=download)
        pool = _to_nchw(tvd.SVHN(root, split="extra", download=download).data, "NCHW") if extra else None
        return ImageDataset(
            "svhn",
            _to_nchw(train.data, "NCHW"),
            torch.as_tensor(train.labels).long(),
            _to_nchw(test.data, "NCHW"),
            torch.as_tensor(test.labels).long(),
            [str(i) for i in range(10)],
            pool,
        )

    return _torchvision("svhn", data_dir, download, build)


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
            list(train.classes),
            _to_nchw(pool.data, "NCHW"),
        )

    return _torchvision("stl10", data_dir, download, build)


DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "digits": load_digits_dataset,
    "mnist": _mnist_like("MNIST", "mnist"),
    "fashion-mnist": _mnist_like("FashionMNIST", "fashion-mnist"),
    "cifar10": _cifar("CIFAR10", "cifar10"),
    "cifar100": _cifar("CIFAR100", "cifar100"),
    "svhn": load_svhn,
    "stl10": load_stl10,
}


def load_dataset(name: str, data_dir: str | None = None, download: bool = False) -> ImageDataset:
    """Load a registered data set by name; raises DataError with a one-line message on any problem."""
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name](data_dir, download)


def labeled_split(labels: Tensor, num_labels: int, num_classes: int, seed: int) -> Tensor:
    """Indices of a class-balanced labelled subset: num_labels / num_classes per class, sorted.

    The same (labels, num_labels, seed) always give the same indices. Refuses a num_labels that is
    not a multiple of the class count, and a class with fewer examples than asked for.
    """
    if num_labels <= 0:
        raise DataError(f"--num-labels must be positive, got {num_labels}")
    if num_labels % num_classes:
        lower = num_labels // num_classes * num_classes
        raise DataError(
            f"--num-labels {num_labels} is not a multiple of the {num_classes} classes "
            f"(a balanced split needs e.g. {lower or num_classes} or {lower + num_classes})"
        )
    per_class = num_labels // num_classes
    rng = np.random.default_rng(seed)
    labels_np = labels.numpy()
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels_np == c)
        if len(members) < per_class:
            raise DataError(
                f"--num-labels {num_labels} asks for {per_class} labels per class, but class {c} has only "
                f"{len(members)} training images"
            )
        chosen.append(rng.choice(members, per_class, replace=False))
    return torch.as_tensor(np.sort(np.concatenate(chosen)), dtype=torch.int64)


def save_split(path: Path, dataset: str, indices: Tensor, seed: int) -> None:
    path.write_text(json.dumps({"dataset": dataset, "seed": seed, "indices": indices.tolist()}))
