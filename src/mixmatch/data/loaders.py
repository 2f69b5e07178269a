"""The registered data sets by name (`load_dataset`): the embedded digits, torchvision's data sets read
from their own files, and your image folders (read by `mixmatch.folder`).

Real data sets go through torchvision's classes (their file checks and download code); a missing or
damaged data set, or a failed download, is a DataError whose one line names the files and where to get them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .dataset import DataError, ImageDataset


def _to_nchw(array: np.ndarray | Tensor, layout: str) -> Tensor:
    """uint8 (N, C, H, W) from images stored as (N, H, W), (N, H, W, C) or already (N, C, H, W)."""
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
    """build(root, download), with torchvision's missing-file, checksum and download errors as DataErrors."""
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


def load_train_test(
    data_dir: str | None = None, download: bool = False, *, name: str, cls_name: str, layout: str
) -> ImageDataset:
    """A torchvision data set with `train=True/False` splits: (Fashion-)MNIST and CIFAR-10/100.

    cls_name: its torchvision class; layout: how its `data` holds the images, "NHW" (grey, MNIST-like)
    or "NHWC" (colour, CIFAR-like). Raises DataError when the files are missing or damaged.
    """
    import torchvision.datasets as tvd

    def build(root: str, download: bool) -> ImageDataset:
        cls = getattr(tvd, cls_name)
        train, test = cls(root, train=True, download=download), cls(root, train=False, download=download)
        return ImageDataset(
            name,
            _to_nchw(train.data, layout),
            torch.as_tensor(train.targets).long(),
            _to_nchw(test.data, layout),
            torch.as_tensor(test.targets).long(),
            list(train.classes),
        )

    return _torchvision(name, data_dir, download, build)


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
    # Imported here: the folder loader (and PIL) is needed only by `--dataset folder`.
    from .folder import load_image_folder

    if data_dir is None:
        raise DataError("--dataset folder needs --data-dir ROOT, the folder that holds your images")
    return load_image_folder(data_dir, **options)


DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "digits": load_digits_dataset,
    "mnist": functools.partial(load_train_test, name="mnist", cls_name="MNIST", layout="NHW"),
    "fashion-mnist": functools.partial(load_train_test, name="fashion-mnist", cls_name="FashionMNIST", layout="NHW"),
    "cifar10": functools.partial(load_train_test, name="cifar10", cls_name="CIFAR10", layout="NHWC"),
    "cifar100": functools.partial(load_train_test, name="cifar100", cls_name="CIFAR100", layout="NHWC"),
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
