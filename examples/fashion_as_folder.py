"""Write Fashion-MNIST out as a practitioner's image folder, to check `--dataset folder` against the real thing.

ROOT/labeled/<class>/*.png   the labelled images of `mixmatch train --dataset fashion-mnist --num-labels N
                             --seed S` (the same split, so the two runs share their labels)
ROOT/unlabeled/*.png         U other training images, drawn with the seed
ROOT/test/<class>/*.png      the 10,000 test images

    python examples/fashion_as_folder.py --data-dir ../shared/data --out /tmp/fashion-folder
    mixmatch train --dataset folder --data-dir /tmp/fashion-folder --out results/fashion-folder/folder-seed0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from mixmatch.data.loaders import load_dataset
from mixmatch.data.splits import labeled_split


def write(images: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(images).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="folder holding FashionMNIST/raw")
    parser.add_argument("--out", required=True)
    parser.add_argument("--num-labels", type=int, default=100)
    parser.add_argument("--unlabeled", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = load_dataset("fashion-mnist", args.data_dir)
    classes = [name.replace("/", "-") for name in data.classes]
    split = labeled_split(data.train_labels, args.num_labels, data.num_classes, args.seed).numpy()
    rest = np.setdiff1d(np.arange(len(data.train_labels)), split)
    unlabeled = np.random.default_rng(args.seed).choice(rest, args.unlabeled, replace=False)
    images, labels = data.train_images[:, 0].numpy(), data.train_labels.numpy()
    out = Path(args.out)
    for i in split:
        write(images[i], out / "labeled" / classes[labels[i]] / f"train-{i:05d}.png")
    for i in unlabeled:
        write(images[i], out / "unlabeled" / f"train-{i:05d}.png")
    test_images, test_labels = data.test_images[:, 0].numpy(), data.test_labels.numpy()
    for i, (image, label) in enumerate(zip(test_images, test_labels, strict=True)):
        write(image, out / "test" / classes[label] / f"test-{i:05d}.png")
    print(f"{len(split)} labelled, {len(unlabeled)} unlabelled, {len(test_labels)} test images in {out}")


if __name__ == "__main__":
    main()
