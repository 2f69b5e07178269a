"""An ImageDataset as fastai DataLoaders: items, labels and the training augmentation as fastai transforms."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from fastai.data.core import DataLoaders, Datasets
from fastai.data.transforms import Categorize, IntToFloatTensor, ItemTransform, Normalize, Transform
from fastai.torch_core import TensorImage
from torch import Tensor

from ..augment import crop_flip
from ..data.dataset import ImageDataset


class ImageOf(ItemTransform):
    """Item -> TensorImage (C, H, W): the image of an (image, label) pair, or a bare image tensor as is.

    Bare images are what `learn.predict(TensorImage(img))` and `dls.test_dl([...])` pass in.
    """

    def encodes(self, item):  # no annotation: fastai dispatches on it, and items are tuples or tensors
        return TensorImage(item[0] if isinstance(item, tuple | list) else item)


class LabelOf(ItemTransform):
    """(image, label index) -> class name, which `Categorize(vocab=classes)` turns back into an index
    (and `predict` decodes to the name)."""

    def __init__(self, classes: Sequence[str]):
        super().__init__()
        self.classes = list(classes)

    def encodes(self, item):  # (image, label) pair
        return self.classes[int(item[1])]


class RandomCropFlip(Transform):
    """Training-only batch transform: `mixmatch.augment.crop_flip` (reflect-pad-`pad` random crop, random
    horizontal flip if `flip`) on a TensorImage batch of any dtype. Order 5 puts it before
    IntToFloatTensor (10), so it gathers uint8 pixels as the library's Augmenter does."""

    split_idx, order = 0, 5

    def __init__(self, pad: int, flip: bool):
        super().__init__()
        self.pad, self.flip = pad, flip

    def encodes(self, x: TensorImage) -> TensorImage:
        return TensorImage(crop_flip(x, self.pad, self.flip))


def image_dataloaders(
    data: ImageDataset,
    labeled: Tensor | None = None,
    bs: int = 64,
    iters_per_epoch: int | None = None,
    pad: int = 4,
    flip: bool = True,
    val_bs: int = 512,
    device: torch.device | str | None = None,
) -> DataLoaders:
    """fastai DataLoaders of an ImageDataset: training on the labelled subset, validation on the test split.

    labeled: indices (n,) into data.train_images of the labelled subset (`mixmatch.data.labeled_split`);
        None uses every training image.
    iters_per_epoch: batches per training epoch. A small labelled set (50 images, batch 64) would give no
        full batch at all, so the subset is repeated (each repetition shuffled with the others) until an
        epoch holds this many batches of `bs`. None: one pass, at least one batch.
    pad, flip: the training augmentation (`mixmatch.config.augmentation_of(name)` gives the paper's).
    Batches: x TensorImage float (B, C, H, W) normalised with the training images' channel statistics
    (`ImageDataset.channel_stats`), y TensorCategory (B,). Items are (uint8 image, label) pairs, vocab
    `data.classes`; `learn.predict(TensorImage(img))` takes a uint8 (C, H, W) image.
    """
    train_idx = torch.arange(data.train_images.shape[0]) if labeled is None else torch.as_tensor(labeled)
    n = int(train_idx.numel())
    if n == 0:
        raise ValueError("the labelled subset is empty")
    repeats = max(1, -(-(iters_per_epoch or 1) * bs // n))  # ceil(iters * bs / n)
    train_idx = train_idx.repeat(repeats)
    if iters_per_epoch is not None:
        train_idx = train_idx[: iters_per_epoch * bs]
    n_train = data.train_images.shape[0]
    images = torch.cat([data.train_images, data.test_images])
    labels = torch.cat([data.train_labels, data.test_labels])
    items = list(zip(images, labels.tolist(), strict=True))
    valid_idx = list(range(n_train, n_train + data.test_images.shape[0]))
    dsets = Datasets(
        items,
        tfms=[[ImageOf()], [LabelOf(data.classes), Categorize(vocab=data.classes)]],
        splits=[train_idx.tolist(), valid_idx],
    )
    mean, std = data.channel_stats()
    return dsets.dataloaders(
        bs=bs,
        val_bs=val_bs,
        after_batch=[RandomCropFlip(pad, flip), IntToFloatTensor(), Normalize.from_stats(mean, std, cuda=False)],
        num_workers=0,  # items are in-memory tensors: worker processes would only add start-up time
        device=device,
    )
