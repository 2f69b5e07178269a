"""How right are MixMatch's guessed labels during training, and which classes do they predict?

Trains one MixMatch run with the Trainer and, every --every steps, guesses labels (K views, averaged,
sharpened, BatchNorm statistics frozen, exactly as a training step does, without moving the running
marginal of distribution alignment, which only training batches feed) for a fixed sample of
unlabelled training images whose true labels the benchmark data sets know. Writes one JSON line per
check: guess accuracy, mean confidence and how many images each class is guessed for.

    python examples/guess_diagnostics.py --dataset fashion-mnist --data-dir ../shared/data \
        --out results/guesses-fashion-mnist [any flag of mixmatch train]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mixmatch.cli import add_config_flags, config_from_args
from mixmatch.training.trainer import Trainer


def guess_record(trainer: Trainer, images: torch.Tensor, labels: torch.Tensor) -> dict:
    trainer.model.train()
    with trainer.autocast():
        q = trainer.method.guess(trainer.model, trainer.augment.views(images, trainer.config.k), trainer.forward,
                                 update_alignment=False)
    confidence, guess = q.max(-1)
    return dict(step=trainer.step, guess_accuracy=(guess == labels).float().mean().item(),
                mean_confidence=confidence.mean().item(),
                guessed_per_class=torch.bincount(guess, minlength=trainer.data.num_classes).tolist(),
                true_per_class=torch.bincount(labels, minlength=trainer.data.num_classes).tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(parser, skip=("out", "method"))  # every flag of `mixmatch train`
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--sample", type=int, default=2048, help="unlabelled images whose guesses are checked")
    parser.add_argument("--out", default="runs/guesses")
    args = parser.parse_args()

    out = Path(args.out)
    cfg = config_from_args(args, out=str(out / "run"), progress=False, checkpoint_every=0).resolved()
    trainer = Trainer(cfg)
    pool_labels = trainer.data.train_labels.to(trainer.device)  # the pool is the training images
    sample = torch.randperm(len(pool_labels), generator=torch.Generator().manual_seed(0))[: args.sample]
    images, labels = trainer.unlabeled_x[sample.to(trainer.device)], pool_labels[sample.to(trainer.device)]
    records = []
    while True:
        if trainer.step % args.every == 0:
            records.append(guess_record(trainer, images, labels))
            print(json.dumps(records[-1]), flush=True)
        if trainer.step == cfg.steps:
            break
        trainer.train_step()
    out.mkdir(parents=True, exist_ok=True)
    (out / "guesses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "config.json").write_text(json.dumps(dict(vars(args), config=cfg.to_dict()), indent=2))
    print(f"test accuracy of the EMA model after {cfg.steps} steps: {trainer.evaluate():.4f}")


if __name__ == "__main__":
    main()
