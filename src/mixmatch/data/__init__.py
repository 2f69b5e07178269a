"""The data layer's public names in one import: `from mixmatch.data import load_dataset, labeled_split`.

They live in `dataset` (ImageDataset, DataError), `loaders` (the registered data sets) and `splits`
(labelled subsets, validation hold-out, split.json); image folders are read by `folder`.
"""

from .dataset import DataError, ImageDataset
from .loaders import (
    DATASETS,
    STL10_CLASSES,
    load_dataset,
    load_digits_dataset,
    load_folder,
    load_stl10,
    load_svhn,
    load_train_test,
)
from .splits import choose_split, describe_split, hold_out, labeled_split, load_for_config, read_split, save_split

__all__ = [
    "DATASETS",
    "STL10_CLASSES",
    "DataError",
    "ImageDataset",
    "choose_split",
    "describe_split",
    "hold_out",
    "labeled_split",
    "load_dataset",
    "load_digits_dataset",
    "load_folder",
    "load_for_config",
    "load_stl10",
    "load_svhn",
    "load_train_test",
    "read_split",
    "save_split",
]
