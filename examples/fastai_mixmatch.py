"""MixMatch through fastai: lr_find, fit_one_cycle, and the labelled-only Learner to compare with.

The flow of the seed's notebook: 500 labelled CIFAR-10 images, the rest of the training set unlabelled,
`lr_find` to pick the learning rate, `fit_one_cycle`, then the same Learner without MixMatch.

    # CIFAR-10 where you have it (torchvision layout; add --download to fetch it), WRN-28-2 -- GPU work:
    python examples/fastai_mixmatch.py --dataset cifar10 --data-dir ~/data --epochs 100
    # small configurations for a CPU: the embedded digits, and Fashion-MNIST (a few minutes on 2 cores):
    python examples/fastai_mixmatch.py --dataset digits --num-labels 50 --epochs 10 --iters-per-epoch 100 \\
        --ema-decay 0.99 --threads 1
    python examples/fastai_mixmatch.py --dataset fashion-mnist --data-dir ../shared/data --arch cnn \\
        --num-labels 100 --epochs 4 --iters-per-epoch 100 --max-unlabeled 20000 --ema-decay 0.99 --threads 1

Prints a table of both Learners' test accuracy (of the EMA weights unless --ema-decay 0); --out writes it
as JSON too.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from mixmatch.config import PRESETS, augmentation_of
from mixmatch.data import DATASETS, DataError, labeled_split, load_dataset
from mixmatch.methods.mixmatch import BN_MODES, MIX_MODES
from mixmatch.models import ARCHITECTURES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="cifar10", choices=list(DATASETS))
    p.add_argument("--data-dir", default=None, help="folder holding the data set in torchvision's layout")
    p.add_argument("--download", action="store_true", help="let torchvision fetch a missing data set")
    p.add_argument("--num-labels", type=int, default=500, help="labelled images, balanced over the classes")
    p.add_argument("--arch", default=None, choices=ARCHITECTURES, help="model (default: the data set's preset)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iters-per-epoch", type=int, default=200, help="training batches per epoch")
    p.add_argument("--bs", type=int, default=64, help="labelled batch size (the unlabelled batch is the same)")
    p.add_argument("--max-unlabeled", type=int, default=None, help="draw unlabelled images from this many only")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: lr_find's 'valley')")
    p.add_argument("--K", type=int, default=2, help="augmented views per unlabelled image")
    p.add_argument("--T", type=float, default=0.5, help="sharpening temperature")
    p.add_argument("--alpha", type=float, default=None, help="MixUp Beta(alpha, alpha) (default: preset)")
    p.add_argument("--lambda-u", type=float, default=None, help="weight of the unlabelled loss (default: preset)")
    p.add_argument(
        "--rampup-steps",
        type=int,
        default=None,
        help="ramp-up of lambda_u in steps (default: the preset's, at most 40%% of the run, as the digits preset)",
    )
    p.add_argument("--mix", default="all", choices=MIX_MODES, help="what MixUp mixes (the Trainer's --mix)")
    p.add_argument(
        "--bn-mode",
        default="concat",
        choices=BN_MODES,
        help="concat: one forward pass over X' and U'; interleave: the official code's K+1 passes",
    )
    p.add_argument(
        "--distribution-alignment", action="store_true", help="align guesses to the labelled class distribution"
    )
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA of the evaluated weights; 0: raw weights")
    p.add_argument("--seed", type=int, default=0, help="seed of the labelled split and of training")
    p.add_argument("--no-baseline", action="store_true", help="skip the labelled-only Learner")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: fastai's choice)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 is fastest on a busy CPU)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from mixmatch.fastai import image_dataloaders, mixmatch_learner
    except ImportError as error:  # FastaiMissingError says what to install
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        data = load_dataset(args.dataset, args.data_dir, args.download)
        split = labeled_split(data.train_labels, args.num_labels, data.num_classes, args.seed)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    preset = PRESETS.get(args.dataset, PRESETS["default"])
    arch = args.arch or preset["arch"]
    alpha = preset["alpha"] if args.alpha is None else args.alpha
    lambda_u = preset["lambda_u"] if args.lambda_u is None else args.lambda_u
    total_steps = args.epochs * args.iters_per_epoch
    rampup = args.rampup_steps if args.rampup_steps is not None else min(preset["rampup_steps"], total_steps * 2 // 5)
    pad, flip = augmentation_of(args.dataset)

    # As in the paper and the library's Trainer, every training image (labelled ones too) is unlabelled data.
    pool = data.train_images if data.extra_unlabeled is None else torch.cat([data.train_images, data.extra_unlabeled])
    if args.max_unlabeled is not None and args.max_unlabeled < pool.shape[0]:
        keep = torch.randperm(pool.shape[0], generator=torch.Generator().manual_seed(args.seed))
        pool = pool[keep[: args.max_unlabeled]]

    dls = image_dataloaders(data, split, args.bs, args.iters_per_epoch, pad, flip, device=args.device)
    print(
        f"{args.dataset}: {len(split)} labelled, {pool.shape[0]} unlabelled, {data.test_images.shape[0]} test; "
        f"{arch}, {args.epochs} epochs x {args.iters_per_epoch} steps, K {args.K}, T {args.T}, alpha {alpha}, "
        f"lambda_u {lambda_u} (ramp-up {rampup} steps), mix {args.mix}, BatchNorm {args.bn_mode}, "
        f"distribution alignment {'on' if args.distribution_alignment else 'off'}, EMA {args.ema_decay}"
    )
    runs = [("mixmatch", pool)] + ([] if args.no_baseline else [("labelled-only", None)])
    results = []
    # lr_find saves the weights under the Learner's path/models and loads them back: keep that out of the cwd.
    scratch = tempfile.TemporaryDirectory()
    for name, unlabeled in runs:
        torch.manual_seed(args.seed)
        learn = mixmatch_learner(
            dls,
            unlabeled,
            arch=arch,
            K=args.K,
            T=args.T,
            alpha=alpha,
            lambda_u=lambda_u,
            rampup_steps=rampup,
            mix=args.mix,
            bn_mode=args.bn_mode,
            distribution_alignment=args.distribution_alignment,
            ema_decay=args.ema_decay,
            path=scratch.name,
        )
        lr = args.lr
        if lr is None:
            lr = float(learn.lr_find(show_plot=False).valley)
            print(f"{name}: lr_find suggests {lr:.2e}")
        start = time.perf_counter()
        learn.fit_one_cycle(args.epochs, lr)
        seconds = time.perf_counter() - start
        loss, acc = learn.validate()
        results.append(dict(learner=name, lr=lr, test_accuracy=float(acc), test_loss=float(loss), seconds=seconds))
    scratch.cleanup()

    print("\n| learner | lr | test accuracy (%) | train time (s) |\n|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['learner']} | {r['lr']:.2e} | {100 * r['test_accuracy']:.2f} | {r['seconds']:.0f} |")
    if args.out:
        config = {k: v for k, v in vars(args).items() if k != "out"}
        record = dict(config=config, arch=arch, alpha=alpha, lambda_u=lambda_u, rampup_steps=rampup, results=results)
        Path(args.out).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
