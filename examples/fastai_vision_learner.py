"""The fastai notebook flow on a folder of your own photos: `vision_learner(dls, resnet34)`, `aug_transforms()`,
and MixMatch as one more callback.

ROOT/labeled/<class>/*.jpg are the labelled photos, ROOT/unlabeled/ the unlabelled ones, ROOT/test/<class>/ the
photos it is measured on (mixmatch's folder layout). fastai reads the labelled and test photos as it always does;
the unlabelled ones are decoded once by mixmatch's folder reader at the same size and handed to MixMatchCallback as
a uint8 tensor, so they go through the same `aug_transforms()` and normalisation as the labelled batches.

    python examples/fastai_vision_learner.py --data-dir ~/photos --arch resnet34 --size 128 --epochs 5
    python examples/fastai_vision_learner.py --data-dir /tmp/photos --arch resnet18 --no-pretrained --size 32 \\
        --epochs 1 --bs 8     # offline, a minute on a CPU

Prints the test accuracy of the MixMatch Learner after `fine_tune` (fastai's own schedule, no EMA).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fastai.callback.core import Callback
from fastai.vision.all import ImageDataLoaders, Resize, accuracy, aug_transforms, models, vision_learner

from mixmatch.data.folder import load_image_folder
from mixmatch.fastai import MixMatchCallback


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="ROOT with labeled/<class>/, unlabeled/ and test/<class>/")
    p.add_argument("--arch", default="resnet34", help="a torchvision ResNet fastai knows (resnet18, resnet34, ...)")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                   help="ImageNet weights (the network, or torch's cache, must have them)")
    p.add_argument("--size", type=int, default=128, help="photos are resized to this square side")
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--epochs", type=int, default=5, help="fine_tune's epochs after the frozen one")
    p.add_argument("--lambda-u", type=float, default=75.0)
    p.add_argument("--rampup-steps", type=int, default=200)
    p.add_argument("--out", default=None, help="write the result as JSON here")
    return p


def mixmatch_vision_learner(root: Path, arch: str, pretrained: bool, size: int, bs: int, lambda_u: float,
                            rampup_steps: int, cbs: list[Callback] | None = None):
    """The notebook's Learner with MixMatchCallback over the folder's unlabelled photos."""
    dls = ImageDataLoaders.from_folder(root, train="labeled", valid="test", item_tfms=Resize(size), bs=bs,
                                       batch_tfms=aug_transforms(), num_workers=0)
    pool = load_image_folder(root, image_size=size).extra_unlabeled
    if pool is None:
        raise SystemExit(f"{root} has no unlabeled/ photos")
    if pool.shape[1] == 1:  # fastai opens every photo as RGB
        pool = pool.repeat(1, 3, 1, 1)
    mixmatch = MixMatchCallback(pool, lambda_u=lambda_u, rampup_steps=rampup_steps)
    return vision_learner(dls, getattr(models, arch), pretrained=pretrained, metrics=accuracy,
                          cbs=[mixmatch, *(cbs or [])])


def main() -> None:
    args = build_parser().parse_args()
    try:
        learn = mixmatch_vision_learner(Path(args.data_dir).expanduser(), args.arch, args.pretrained, args.size,
                                        args.bs, args.lambda_u, args.rampup_steps)
    except OSError as error:  # urllib's URLError where there is no network and the weights are not cached
        import torch

        raise SystemExit(
            f"{args.arch}'s ImageNet weights are not in torch's cache ({torch.hub.get_dir()}/checkpoints) and cannot "
            f"be downloaded here ({getattr(error, 'reason', error)}): fetch them on a machine with a network, or "
            "pass --no-pretrained"
        ) from None
    learn.fine_tune(args.epochs)
    loss, accuracy = learn.validate()
    result = dict(arch=args.arch, pretrained=args.pretrained, size=args.size, epochs=args.epochs,
                  valid_loss=float(loss), test_accuracy=float(accuracy))
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
