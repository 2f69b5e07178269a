"""One dataclass holds every setting of a run; the CLI maps its flags onto these fields.

Fields left as None take the data set's preset (PRESETS), which cite where each constant comes from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

METHODS = ("mixmatch", "supervised", "fully-supervised")


def _opt(default: Any, help: str, **metadata: Any) -> Any:
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class TrainConfig:
    dataset: str = _opt("digits", "data set name (see `mixmatch data list`)")
    data_dir: str | None = _opt(None, "folder holding the data set in torchvision's layout, or your image folder")
    download: bool = _opt(False, "let torchvision download a missing data set into --data-dir")
    labels_csv: str | None = _opt(None, "--dataset folder: CSV of `file,label` rows naming the labelled images")
    test_csv: str | None = _opt(None, "--dataset folder: CSV of `file,label` rows naming the test images")
    image_size: int = _opt(32, "--dataset folder: images are scaled and centre-cropped to this square size")
    strict_images: bool = _opt(False, "--dataset folder: refuse unreadable image files instead of skipping them")
    val_fraction: float | None = _opt(
        None, "hold out this share of every class's labelled images as the test split (0.1 for a folder without one)"
    )
    labeled_split: str | None = _opt(None, "reuse the labelled subset of an earlier run's split.json")
    method: str = _opt(
        "mixmatch", "mixmatch, supervised (labelled subset only) or fully-supervised (all labels)", choices=METHODS
    )
    num_labels: int | None = _opt(
        None, "labelled examples, split evenly over the classes (image folders: as evenly as they allow; default all)"
    )
    seed: int = _opt(0, "seed of the labelled split and of training")
    arch: str | None = _opt(None, "model: wrn28_2 or cnn")
    steps: int | None = _opt(None, "training steps (the official full schedule is 1048576)")
    batch_size: int = _opt(64, "labelled batch size B; the unlabelled batch is also B, times K views")
    k: int = _opt(2, "augmented views K of each unlabelled image (official nu=2)")
    temperature: float = _opt(0.5, "sharpening temperature T")
    alpha: float | None = _opt(None, "Beta(alpha, alpha) of MixUp; 0 disables mixing")
    lambda_u: float | None = _opt(None, "weight of the unlabelled L2 loss after ramp-up")
    rampup_steps: int | None = _opt(None, "steps of the linear ramp-up of lambda_u from 0")
    lr: float = _opt(0.002, "learning rate (official Adam 0.002)")
    optimizer: str = _opt("adam", "adam or sgd (Nesterov momentum 0.9)", choices=("adam", "sgd"))
    weight_decay: float = _opt(0.02, "decoupled decay of conv/linear weights, w *= 1 - wd*lr each step")
    ema_decay: float = _opt(0.999, "EMA decay of the evaluated weights; 0 evaluates the raw model")
    ema_warmup: bool = _opt(
        True,
        "warm the EMA decay up as min(decay, (1 + t) / (10 + t)) at update t (TensorFlow's num_updates, timm's "
        "model EMA), so short runs evaluate trained weights; --no-ema-warmup: the paper's plain EMA",
    )
    schedule: str = _opt("constant", "learning rate schedule: constant or onecycle", choices=("constant", "onecycle"))
    bn_mode: str = _opt(
        "concat",
        "concat: one forward pass over X' and U'; interleave: the official code's "
        "three passes with BatchNorm statistics from the first",
        choices=("concat", "interleave"),
    )
    mix: str = _opt(
        "all",
        "what MixUp mixes: all (paper), labeled, unlabeled, separate (X with X, U with U)",
        choices=("all", "labeled", "unlabeled", "separate"),
    )
    distribution_alignment: bool = _opt(
        False,
        "scale guessed labels so their running class marginal matches the labelled one (ReMixMatch's "
        "distribution alignment, not in MixMatch; it stops a class vanishing from the guesses)",
    )
    eval_every: int | None = _opt(None, "evaluate the test split every N steps")
    log_every: int = _opt(50, "write training losses to metrics.jsonl every N steps")
    tensorboard: bool = _opt(False, "also write TensorBoard event files to RUN_DIR/tensorboard")
    checkpoint_every: int = _opt(1000, "save a checkpoint every N steps (0: only at the end and on SIGINT/SIGTERM)")
    keep_checkpoints: int = _opt(3, "how many of the newest checkpoints to keep")
    deterministic: bool = _opt(False, "deterministic algorithms only (bit-exact resume on GPU; slower)")
    sync_bn: bool = _opt(False, "under torchrun on GPUs: BatchNorm statistics of the global batch, not per process")
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N")
    amp: str = _opt(
        "auto", "bf16 autocast: auto (where the hardware has bf16 units), bf16 or off", choices=("auto", "bf16", "off")
    )
    channels_last: str = _opt(
        "auto", "channels_last memory format: auto (with bf16), on or off", choices=("auto", "on", "off")
    )
    compile: str = _opt(
        "auto",
        "torch.compile the model: auto (runs of 20000+ steps, where a C++ compiler is present), on or off",
        choices=("auto", "on", "off"),
    )
    out: str | None = _opt(None, "run folder (default runs/<dataset>-<method>-<labels>-<seed>)")
    progress: bool = _opt(True, "show a progress bar")
    tag: str | None = _opt(None, "a name for this run's variant, by which `mixmatch report --by tag` groups runs")

    def resolved(self) -> TrainConfig:
        """A copy whose None fields are filled from the data set's preset."""
        preset = PRESETS.get(self.dataset, PRESETS["default"])
        values = {k: (preset.get(k) if v is None and k in preset else v) for k, v in dataclasses.asdict(self).items()}
        cfg = TrainConfig(**values)
        if cfg.out is None:
            cfg.out = f"runs/{cfg.dataset}-{cfg.method}-{cfg.num_labels or 'all'}-{cfg.seed}"
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Paper (arXiv:1905.02249) section 4 and the official run scripts (google-research/mixmatch runs/*.sh):
# CIFAR-10 alpha 0.75, lambda_u 75; SVHN alpha 0.25, lambda_u 250; CIFAR-100 lambda_u 150 (runs/table1.sh);
# STL-10 lambda_u 50 (runs/table2.sh). Ramp-up 1024 kimg = 16384 steps of 64 (mixmatch.py warmup_kimg),
# full schedule 1 << 16 kimg = 1048576 steps (mixmatch.py train_kimg). Augmentation: flip + reflect-pad-4 crop,
# no flip on SVHN (libml/data.py). The CPU-scale presets (digits, MNIST, Fashion-MNIST) are ours, tuned so a
# run fits in minutes on two cores; results/ records what they reach.
PAPER_STEPS = 1 << 20
PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(
        arch="wrn28_2",
        num_labels=250,
        steps=PAPER_STEPS,
        alpha=0.75,
        lambda_u=75,
        rampup_steps=16384,
        eval_every=1024,
        pad=4,
        flip=True,
    ),
    "cifar10": dict(
        arch="wrn28_2",
        num_labels=250,
        steps=PAPER_STEPS,
        alpha=0.75,
        lambda_u=75,
        rampup_steps=16384,
        eval_every=1024,
        pad=4,
        flip=True,
    ),
    "cifar100": dict(
        arch="wrn28_2",
        num_labels=10000,
        steps=PAPER_STEPS,
        alpha=0.75,
        lambda_u=150,
        rampup_steps=16384,
        eval_every=1024,
        pad=4,
        flip=True,
    ),
    "svhn": dict(
        arch="wrn28_2",
        num_labels=250,
        steps=PAPER_STEPS,
        alpha=0.25,
        lambda_u=250,
        rampup_steps=16384,
        eval_every=1024,
        pad=4,
        flip=False,
    ),
    "stl10": dict(
        arch="wrn28_2",
        num_labels=1000,
        steps=PAPER_STEPS,
        alpha=0.75,
        lambda_u=50,
        rampup_steps=16384,
        eval_every=1024,
        pad=12,
        flip=True,
    ),
    "digits": dict(
        arch="cnn",
        num_labels=50,
        steps=5000,
        alpha=0.75,
        lambda_u=75,
        rampup_steps=2000,
        eval_every=250,
        pad=1,
        flip=False,
    ),
    "mnist": dict(
        arch="cnn",
        num_labels=100,
        steps=3000,
        alpha=0.75,
        lambda_u=75,
        rampup_steps=1000,
        eval_every=250,
        pad=2,
        flip=False,
    ),
    "fashion-mnist": dict(
        arch="cnn",
        num_labels=100,
        steps=3000,
        alpha=0.75,
        lambda_u=75,
        rampup_steps=1000,
        eval_every=250,
        pad=2,
        flip=True,
    ),
}
# SVHN with its 'extra' split as the unlabelled pool trains as SVHN does. Image folders take the settings of
# CIFAR-10 (the paper's main benchmark, natural 32x32 images) and by default every labelled image.
PRESETS["svhn-extra"] = PRESETS["svhn"]
PRESETS["folder"] = dict(PRESETS["cifar10"], num_labels=None)


def augmentation_of(dataset: str) -> tuple[int, bool]:
    """(reflect padding of the random crop, whether to flip horizontally) for a data set."""
    preset = PRESETS.get(dataset, PRESETS["default"])
    return preset["pad"], preset["flip"]
