"""Image folders for the fine-tuning experiment (docs/backbones.md), written from Fashion-MNIST in ../shared/data.

    source/  classes 0-4 (T-shirt/top, Trouser, Pullover, Dress, Coat): the task a ResNet-18 is pretrained on
    target/  classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot): the task it is fine-tuned on with few labels
    photos96/  200 training and 100 test images of each target class, grey, scaled to 96x96 (the pipeline at a
               photo's size under a time budget)

Each is a folder of labeled/<class>/*.png and test/<class>/*.png, the layout of a user's photos.

    python results/backbones-fashion/make_folders.py --data-dir ../shared/data --out /tmp/fashion-folders
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torchvision
from PIL import Image


def write(images, labels, classes, root: Path, names: list[str], per_class: int | None, size: int | None) -> None:
    counts = {c: 0 for c in classes}
    for i, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        if label not in counts or (per_class is not None and counts[label] >= per_class):
            continue
        counts[label] += 1
        folder = root / names[label].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(image.numpy())
        if size is not None:
            picture = picture.resize((size, size), Image.Resampling.BICUBIC)
        picture.save(folder / f"{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--out", default="/tmp/fashion-folders")
    args = parser.parse_args()
    out = Path(args.out)
    for train, split in ((True, "labeled"), (False, "test")):
        data = torchvision.datasets.FashionMNIST(args.data_dir, train=train, download=False)
        names = data.classes
        write(data.data, data.targets, range(5), out / "source" / split, names, None, None)
        write(data.data, data.targets, range(5, 10), out / "target" / split, names, None, None)
        write(data.data, data.targets, range(5, 10), out / "photos96" / split, names, 200 if train else 100, 96)


if __name__ == "__main__":
    main()
