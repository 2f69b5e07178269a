"""One dataclass holds every setting of a run, with its presets and the range of every field.

Fields left as None take the data set's preset (PRESETS), which cite where each constant comes from. Each
field's metadata holds its help text and the group (data, model, MixMatch, optimisation, run) that the CLI
shows it in; the CLI derives its flags, types and choices from the fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# The methods' names, in the order tables and --methods list them (mixmatch.methods.METHODS holds the methods).
MethodName = Literal[
    "mixmatch", "supervised", "fully-supervised", "pi-model", "pseudo-label", "mixup", "vat", "mean-teacher", "ict",
    "fixmatch",
]
METHOD_NAMES: tuple[str, ...] = typing.get_args(MethodName)
# What MixUp mixes (the paper's "all", or an ablation of its table 4) and how X' and U' meet BatchNorm.
MixMode = Literal["all", "labeled", "unlabeled", "separate"]
BnMode = Literal["concat", "interleave"]

# The CLI's help groups, in the order --help shows them.
GROUPS = ("data", "model", "method", "MixMatch", "other methods", "augmentation", "optimisation", "run")

# Paper (arXiv:1905.02249) section 4 and the official run scripts (google-research/mixmatch runs/*.sh):
# CIFAR-10 alpha 0.75, lambda_u 75; SVHN alpha 0.75 (0.25 with its extra images), lambda_u 250 (runs/table6.sh,
# table7.sh); CIFAR-100 lambda_u 150 on the large WRN at weight decay 0.04 (runs/table1.sh);
# STL-10 lambda_u 50 (runs/table2.sh). Ramp-up 1024 kimg = 16384 steps of 64 (mixmatch.py warmup_kimg),
# full schedule 1 << 16 kimg = 1048576 steps (mixmatch.py train_kimg). Augmentation: flip + reflect-pad-4 crop,
# no flip on SVHN (libml/data.py). The CPU-scale presets (digits, MNIST, Fashion-MNIST) are ours, tuned so a
# run fits in minutes on two cores; results/ records what they reach.
PAPER_STEPS = 1 << 20
PAPER_RAMPUP_STEPS = 16384
# The smallest --image-size: the small CNN pools twice, so a smaller side leaves no pixel.
MIN_IMAGE_SIZE = 4


def _opt(default: Any, help: str, group: str) -> Any:
    assert group in GROUPS, group
    return field(default=default, metadata={"help": help, "group": group})


def default_out(values: Mapping[str, Any]) -> str:
    """A run's folder where --out is not given: runs/<dataset>-<method>-<labels>-<seed> of its settings."""
    return f"runs/{values['dataset']}-{values['method']}-{values['num_labels'] or 'all'}-{values['seed']}"


@dataclass
class TrainConfig:
    dataset: str = _opt("digits", "data set name (see `mixmatch data list`)", "data")
    data_dir: str | None = _opt(
        None, "folder holding the data set in torchvision's layout, or your image folder", "data"
    )
    download: bool = _opt(False, "let torchvision download a missing data set into --data-dir", "data")
    labels_csv: str | None = _opt(None, "--dataset folder: CSV of `file,label` rows naming the labelled images", "data")
    test_csv: str | None = _opt(None, "--dataset folder: CSV of `file,label` rows naming the test images", "data")
    image_size: int | None = _opt(
        None, "--dataset folder: images are scaled and centre-cropped to this side (32; pretrained: theirs)", "data"
    )
    strict_images: bool = _opt(
        False, "--dataset folder: refuse unreadable image files instead of skipping them", "data"
    )
    val_fraction: float | None = _opt(
        None,
        "hold out this share of each class's training images as the test split (0.1 for a folder without one)",
        "data",
    )
    labeled_split: str | None = _opt(None, "reuse the labelled subset of an earlier run's split.json", "data")
    num_labels: int | None = _opt(
        None,
        "labelled images, split evenly over the classes (a folder: as evenly as they allow, all by default)",
        "data",
    )
    method: MethodName = _opt(
        "mixmatch", "mixmatch, a baseline of the paper's comparison, or fixmatch (docs/methods.md)", "method"
    )
    seed: int = _opt(0, "seed of the labelled split and of training", "run")
    arch: str | None = _opt(
        None,
        "model: wrn28_2, wrn28_large, wrn10_2, wrn10_1, cnn, a torchvision one (resnet18, ...) or timm/<name>",
        "model",
    )
    pretrained: bool = _opt(False, "start a torchvision or timm backbone from its library's pretrained weights",
                            "model")
    weights: str | None = _opt(
        None, "start a backbone from this state dict (.pt, .pth or .safetensors); the classifier is replaced", "model"
    )
    steps: int | None = _opt(None, f"training steps (the official full schedule is {PAPER_STEPS})", "optimisation")
    minutes: float | None = _opt(
        None,
        "train about this many minutes instead of --steps, at the speed measured on a few steps",
        "optimisation",
    )
    max_minutes: float | None = _opt(
        None,
        "train fewer steps where the steps would take longer than this here (CPU presets: 15)",
        "optimisation",
    )
    batch_size: int = _opt(
        64, "labelled batch size B; the unlabelled batch: B images (K views for mixmatch, mu*B for fixmatch)",
        "optimisation",
    )
    k: int = _opt(2, "augmented views K of each unlabelled image (official nu=2)", "MixMatch")
    temperature: float = _opt(0.5, "sharpening temperature T", "MixMatch")
    alpha: float | None = _opt(
        None, "Beta(alpha, alpha) of MixUp (MixMatch, MixUp, ICT); 0 disables mixing", "MixMatch"
    )
    lambda_u: float | None = _opt(None, "weight of the unlabelled loss after its ramp-up", "method")
    rampup_steps: int | None = _opt(None, "steps of the linear ramp-up of lambda_u from 0", "method")
    pad: int | None = _opt(
        None, "crop-flip: reflect-pad by this many pixels, then crop back at a random offset", "augmentation"
    )
    flip: bool | None = _opt(None, "flip images horizontally at random", "augmentation")
    lr: float | None = _opt(None, "learning rate (the paper's Adam: 0.002)", "optimisation")
    optimizer: Literal["adam", "sgd"] | None = _opt(None, "adam or sgd (Nesterov momentum 0.9)", "optimisation")
    weight_decay: float | None = _opt(
        None, "decoupled decay of conv/linear weights, w *= 1 - wd*lr each step", "optimisation"
    )
    ema_decay: float = _opt(0.999, "EMA decay of the evaluated weights; 0 evaluates the raw model", "model")
    ema_warmup: bool = _opt(
        True,
        "warm the EMA decay up as min(decay, (1 + t) / (10 + t)); off: the paper's plain EMA",
        "model",
    )
    schedule: Literal["constant", "cosine", "onecycle"] | None = _opt(
        None,
        "learning-rate schedule: constant (paper), cosine (FixMatch's, down to 0.2 lr) or onecycle",
        "optimisation"
    )
    warmup_steps: int | None = _opt(
        None, "steps over which the learning rate rises linearly from 0 (default none)", "optimisation"
    )
    backbone_lr_scale: float | None = _opt(
        None, "the pretrained layers' learning rate as a share of --lr (default 1)", "optimisation"
    )
    bn_mode: BnMode = _opt(
        "concat",
        "concat: one forward pass over X' and U'; interleave: the official code's three passes",
        "MixMatch",
    )
    mix: MixMode = _opt(
        "all", "what MixUp mixes: all (paper), labeled, unlabeled, separate (X with X, U with U)", "MixMatch"
    )
    distribution_alignment: bool | None = _opt(
        None,
        "align guesses to the labelled class distribution (ReMixMatch's, not MixMatch's)",
        "MixMatch",
    )
    augmentation_anchoring: bool = _opt(
        False,
        "train on strong views (RandAugment, Cutout) against the weak views' guess (ReMixMatch's)",
        "MixMatch",
    )
    threshold: float | None = _opt(None, "confidence from which a guess becomes a pseudo-label", "other methods")
    vat_epsilon: float | None = _opt(
        None, "VAT's perturbation size: its L2 norm in the official [-1, 1] pixel units", "other methods"
    )
    entropy_weight: float | None = _opt(
        None, "VAT's weight of entropy minimisation on unlabelled images", "other methods"
    )
    mu: int | None = _opt(None, "unlabelled images per labelled one in a step (FixMatch's mu)", "other methods")
    augment: Literal["crop-flip", "fastai"] | None = _opt(
        None, "crop-flip (the paper's) or fastai (the seed's: flip, rotate, zoom, warp, lighting)", "augmentation"
    )
    eval_every: int | None = _opt(None, "evaluate the test split every N steps", "run")
    log_every: int = _opt(50, "write training losses to metrics.jsonl every N steps", "run")
    tensorboard: bool = _opt(False, "also write TensorBoard event files to RUN_DIR/tensorboard", "run")
    checkpoint_every: int = _opt(
        1000, "save a checkpoint every N steps (0: only at the end and on SIGINT/SIGTERM)", "run"
    )
    keep_checkpoints: int = _opt(3, "how many of the newest checkpoints to keep", "run")
    deterministic: bool = _opt(False, "deterministic algorithms only (bit-exact resume on GPU; slower)", "run")
    sync_bn: bool = _opt(
        False, "under torchrun on GPUs: BatchNorm statistics of the global batch, not per process", "run"
    )
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N", "run")
    amp: Literal["auto", "bf16", "off"] = _opt(
        "auto", "bf16 autocast: auto (where the hardware has bf16 units), bf16 or off", "run"
    )
    channels_last: Literal["auto", "on", "off"] = _opt(
        "auto", "channels_last memory format: auto (on CPUs; on GPUs with bf16), on or off", "run"
    )
    threads: int | None = _opt(
        None,
        "CPU threads (default auto: the CPUs idle at the start; recorded, and --resume keeps it)",
        "run",
    )
    compile: Literal["auto", "on", "off"] = _opt(
        "auto",
        "torch.compile the model: auto (runs of 20000+ steps where a C++ compiler is present), on or off",
        "run",
    )
    out: str | None = _opt(None, "run folder (default runs/<dataset>-<method>-<labels>-<seed>)", "run")
    progress: bool = _opt(True, "show a progress bar", "run")
    tag: str | None = _opt(
        None, "a name for this run's variant, by which `mixmatch report --by tag` groups runs", "run"
    )

    def resolved(self) -> TrainConfig:
        """A copy with every field a run needs filled, the one place that fills them: from the data set's preset
        (PRESETS), then what the preset leaves to the device (DEVICE_DEFAULTS), then the ramp-up and evaluation
        interval that follow from the steps (`with_steps`). Only the steps of a time budget (`minutes`, or a
        preset without steps) stay None: mixmatch.training.budget picks them from the measured speed."""
        preset = PRESETS.get(self.dataset, PRESETS["default"])
        if self.minutes is not None:  # a time budget decides the steps, not the preset
            budgeted = ("steps", "rampup_steps", "eval_every", "max_minutes")
            preset = {k: v for k, v in preset.items() if k not in budgeted}
        if self.steps is not None:  # a step count the user chose is run whole: the preset's cap is for its own
            preset = {k: v for k, v in preset.items() if k != "max_minutes"}
        values = dataclasses.asdict(self)
        own = method_defaults(values["method"], values["dataset"])
        if self.fine_tunes:  # its optimiser settings, for every method
            own.update(FINETUNE)
        values.update({k: v for k, v in own.items() if values[k] is None})
        if values["method"] in METHOD_RAMPUP_SHARE or self.fine_tunes:  # a share of the run's steps, not the preset's
            preset = {k: v for k, v in preset.items() if k != "rampup_steps"}
        values = {k: (preset.get(k) if v is None and k in preset else v) for k, v in values.items()}
        device = DEVICE_DEFAULTS[device_type(values["device"])]
        values.update({k: device[k] for k in DEVICE_FIELDS if values[k] is None})
        if values["image_size"] is None:
            values["image_size"] = 32
            if values["dataset"] == "folder" and self.fine_tunes:  # at the weights' size
                from .models.backbones import is_backbone, spec

                if values["arch"] is not None and is_backbone(values["arch"]):
                    values["image_size"] = spec(values["arch"]).image_size
        if values["out"] is None:
            values["out"] = default_out(values)
        values.update({k: v for k, v in LR_DEFAULTS.items() if values[k] is None})
        cfg = TrainConfig(**values)
        return cfg if cfg.steps is None or cfg.minutes is not None else cfg.with_steps(cfg.steps)

    @property
    def fine_tunes(self) -> bool:
        """Whether the run starts a backbone from trained weights (--pretrained or --weights)."""
        return bool(self.pretrained or self.weights)

    def scaled_to(self, steps: int, eval_every: int) -> TrainConfig:
        """A copy of this config with steps (resolved) that trains `steps` instead, its ramp-up and warm-up scaled
        by the same share so that the run keeps its shape, evaluated every `eval_every` steps."""
        share = steps / self.steps
        return dataclasses.replace(
            self,
            steps=steps,
            rampup_steps=round(self.rampup_steps * share),
            warmup_steps=round(self.warmup_steps * share),
            eval_every=eval_every,
        )

    def with_steps(self, steps: int, eval_every: int | None = None) -> TrainConfig:
        """A copy that trains `steps` steps (a time budget's minutes are spent): lambda_u ramps up over the
        method's share of them (METHOD_RAMPUP_SHARE, else RAMPUP_SHARE; FINETUNE_RAMPUP_SHARE where it fine-tunes
        and has a ramp-up), and the test split is evaluated EVALUATIONS times, where the config does not
        say otherwise (its own ramp-up and warm-up, its own or the given `eval_every`)."""
        share = METHOD_RAMPUP_SHARE.get(self.method, RAMPUP_SHARE)
        if share and self.fine_tunes:  # a method without a ramp-up keeps none
            share = FINETUNE_RAMPUP_SHARE
        return dataclasses.replace(
            self,
            steps=steps,
            minutes=None,
            rampup_steps=self.rampup_steps if self.rampup_steps is not None else int(share * steps),
            warmup_steps=self.warmup_steps if self.warmup_steps is not None else 0,
            eval_every=eval_every or self.eval_every or max(1, steps // EVALUATIONS),
        )

    def validate(self) -> TrainConfig:
        """Check every field's type and range before anything loads; returns self.

        Fields still None (to be taken from a preset) pass. Raises ConfigError, whose message names the field
        (`lambda_u must be >= 0, got -3`) and whose `field` attribute says which one.
        """
        if self.steps is not None and self.minutes is not None:
            raise ConfigError(
                "minutes", "minutes (a time budget) and a step count both set the length of a run: give one of them"
            )
        if self.max_minutes is not None and self.minutes is not None:
            raise ConfigError(
                "max_minutes", "max_minutes caps a step count; minutes (a time budget) sets the length itself: give "
                "one of them"
            )
        for name, hint in field_types().items():
            value = getattr(self, name)
            if value is None:
                continue
            choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else ()
            if choices and value not in choices:
                raise ConfigError(name, f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
            kind = hint if hint in (bool, int, float) else None
            if kind is bool and not isinstance(value, bool):
                raise ConfigError(name, f"{name} must be True or False, got {value!r}")
            if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(name, f"{name} must be a number, got {value!r}")
            if kind is int and not isinstance(value, int):
                raise ConfigError(name, f"{name} must be a whole number, got {value!r}")
            if kind is float and not math.isfinite(value):
                raise ConfigError(name, f"{name} must be a finite number, got {value!r}")
            if name in RANGES:
                in_range, rule = RANGES[name]
                if not in_range(value):
                    shown = int(value) if isinstance(value, float) and value.is_integer() else value
                    raise ConfigError(name, f"{name} must be {rule}, got {shown}")
        if self.arch is not None:
            from .models import ARCHITECTURES, known
            from .models.backbones import timm_missing

            if missing := timm_missing(self.arch):
                raise ConfigError("arch", missing)
            if not known(self.arch):
                from .models.backbones import unknown_arch

                raise ConfigError("arch", unknown_arch(self.arch, ARCHITECTURES))
            if self.fine_tunes and self.arch in ARCHITECTURES:
                source = "weights" if self.weights else "pretrained"
                raise ConfigError(source, f"{source} is for torchvision and timm backbones, not {self.arch}")
            if self.pretrained and self.weights:
                raise ConfigError("weights", "weights and --pretrained are two sources of the same weights: give one")
            if self.backbone_lr_scale not in (None, 1) and self.arch in ARCHITECTURES:
                raise ConfigError(
                    "backbone_lr_scale", f"backbone_lr_scale is for torchvision and timm backbones, not {self.arch}"
                )
        if self.warmup_steps and self.schedule == "onecycle":
            raise ConfigError("warmup_steps", "warmup_steps: the onecycle schedule warms the learning rate up itself")
        if self.warmup_steps and self.steps is not None and self.warmup_steps >= self.steps:
            raise ConfigError(
                "warmup_steps",
                f"warmup_steps {self.warmup_steps} leaves none of the {self.steps} steps at the full --lr",
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """A TrainConfig field out of its range; `field` names it, the message speaks in field names."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field

    def __reduce__(self) -> tuple:  # whole across processes (a grid's worker raises it in the parent)
        return type(self), (self.field, str(self))


# What a run had before its config.json recorded these fields.
PREDATED: dict[str, Any] = dict(ema_warmup=False, augment="crop-flip")


def read_settings(path: str | Path) -> dict[str, Any]:
    """The TrainConfig fields a settings file holds: a run folder's config.json, or any JSON or YAML (.yaml,
    .yml) mapping of field names to values (flags' names with underscores: lambda_u, not --lambda-u).

    A run folder's config.json written before a field existed reads as what the run had then (PREDATED: the plain
    EMA, the paper's flip and crop), so that a preset changed since does not change the run it replays. Raises
    ValueError, one line, for a missing or unparsable file, one that is not a mapping, and unknown fields.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"the settings file {path} does not exist")
    kind = "YAML" if path.suffix.lower() in (".yaml", ".yml") else "JSON"
    try:
        text = path.read_text()
        if kind == "YAML":
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as error:  # OSError, UnicodeDecodeError, and json's and yaml's own errors
        raise ValueError(f"{path} is not readable {kind} ({' '.join(str(error).split())[:160]})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} holds {type(values).__name__}, not a mapping of settings (lambda_u: 75, ...)")
    if path.name == "config.json":
        for field, value in PREDATED.items():
            values.setdefault(field, value)
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ValueError(f"{path} has settings this mixmatch does not know: {', '.join(unknown)}")
    return values


def flag(name: str) -> str:
    """The CLI flag of a TrainConfig field: lambda_u -> --lambda-u."""
    return "--" + name.replace("_", "-")


def field_types() -> dict[str, Any]:
    """Each TrainConfig field's type, without the None that means 'take the preset'."""
    types = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        types[name] = args[0] if typing.get_origin(hint) is not Literal and len(args) == 1 else hint
    return types


# field -> (whether a value is in range, the range in words); every numeric field has one.
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "image_size": (lambda v: v >= MIN_IMAGE_SIZE, f"at least {MIN_IMAGE_SIZE}"),
    "val_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "num_labels": (lambda v: v > 0, "positive"),
    "seed": (lambda v: v >= 0, ">= 0"),
    "steps": (lambda v: v > 0, "positive"),
    "minutes": (lambda v: v > 0, "> 0"),
    "max_minutes": (lambda v: v > 0, "> 0"),
    "batch_size": (lambda v: v > 0, "positive"),
    "k": (lambda v: v > 0, "positive"),
    "temperature": (lambda v: v > 0, "> 0"),
    "alpha": (lambda v: v >= 0, ">= 0"),
    "lambda_u": (lambda v: v >= 0, ">= 0"),
    "rampup_steps": (lambda v: v >= 0, ">= 0"),
    "pad": (lambda v: v >= 0, ">= 0"),
    "lr": (lambda v: v > 0, "> 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "ema_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "eval_every": (lambda v: v > 0, "positive"),
    "log_every": (lambda v: v > 0, "positive"),
    "checkpoint_every": (lambda v: v >= 0, ">= 0"),
    "keep_checkpoints": (lambda v: v >= 1, ">= 1"),
    "threads": (lambda v: v >= 1, ">= 1"),
    "threshold": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "vat_epsilon": (lambda v: v > 0, "> 0"),
    "entropy_weight": (lambda v: v >= 0, ">= 0"),
    "mu": (lambda v: v >= 1, ">= 1"),
    "warmup_steps": (lambda v: v >= 0, ">= 0"),
    "backbone_lr_scale": (lambda v: 0 < v <= 1, "in (0, 1]"),
}

# The paper's CIFAR-10 settings (sources above): every preset is this base with what differs.
PAPER: dict[str, Any] = dict(
    arch="wrn28_2",
    num_labels=250,
    steps=PAPER_STEPS,
    alpha=0.75,
    lambda_u=75,
    rampup_steps=PAPER_RAMPUP_STEPS,
    eval_every=1024,
    pad=4,
    flip=True,
    schedule="constant",
    distribution_alignment=False,
    max_minutes=None,
    lr=0.002,
    optimizer="adam",
    weight_decay=0.02,
    augment="crop-flip",
    mu=7,
)
# Ours, for MNIST-size images on a CPU, tuned on Fashion-MNIST's validation split (--val-fraction 0.1, seed 0;
# results/tune-fashion-mnist-cpu). Departures from the paper, each one flag away from its setting:
# WRN-10-1 (--arch wrn28_2), 5000 steps with FixMatch's cosine learning rate (--schedule constant; the plain
# runs decayed after their peak, the cosine ones recover), lambda_u 150 (--lambda-u 75), and ReMixMatch's
# distribution alignment (--no-distribution-alignment), which keeps the Shirt class in the guesses.
# A run is capped at 15 minutes: a CPU slower than ours (half of them have no bf16 units) trains fewer steps
# and says so; --steps runs them all. FixMatch draws 2 unlabelled images per labelled one, not the paper's 7
# (--mu 7), so that its step costs under two MixMatch steps, not five or more (bench/methods.py; docs/methods.md).
CPU_SCALE = dict(
    PAPER,
    arch="wrn10_1",
    num_labels=100,
    steps=5000,
    rampup_steps=2000,
    eval_every=250,
    pad=2,
    schedule="cosine",
    lambda_u=150,
    distribution_alignment=True,
    max_minutes=15,
    mu=2,
)
PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(PAPER),
    "cifar10": dict(PAPER),
    # The paper's CIFAR-100 result trains its large model with twice the decay (runs/table1.sh).
    "cifar100": dict(PAPER, arch="wrn28_large", num_labels=10000, lambda_u=150, weight_decay=0.04),
    "svhn": dict(PAPER, lambda_u=250, flip=False),
    "stl10": dict(PAPER, num_labels=1000, lambda_u=50, pad=12),
    # Ours, for 8x8 digits on a CPU: the small CNN on a short schedule (README's main job).
    "digits": dict(PAPER, arch="cnn", num_labels=50, steps=5000, rampup_steps=2000, eval_every=250, pad=1, flip=False),
    "mnist": dict(CPU_SCALE, flip=False),
    # The seed's augmentation (--augment crop-flip for the paper's): every method ran once with each on the
    # validation split (results/tune-methods-fashion-mnist), and the one with the higher mean over the ten methods
    # is every method's, as a comparison needs one augmentation for all. MixMatch and FixMatch did better without.
    "fashion-mnist": dict(CPU_SCALE, augment="fastai"),
}
# SVHN with its 'extra' split as the unlabelled pool: runs/table7.sh's --beta=0.25 (table6.sh keeps 0.75 without it).
PRESETS["svhn-extra"] = dict(PRESETS["svhn"], alpha=0.25)
# Image folders: the paper's CIFAR-10 augmentation and alpha (natural 32x32 images) and by default every
# labelled image; no step count, since the paper's schedule is days on a CPU: the device picks the model,
# learning-rate schedule, lambda_u and remedy (CPU_SCALE on CPUs, the paper's on GPUs) and a time budget the
# steps (--minutes; mixmatch.budget).
PRESETS["folder"] = dict(
    PAPER,
    num_labels=None,
    arch=None,
    steps=None,
    rampup_steps=None,
    eval_every=None,
    schedule=None,
    lambda_u=None,
    distribution_alignment=None,
    mu=None,
)


# What the folder preset leaves to the device: on CPUs the CPU-scale settings tuned on Fashion-MNIST (WRN-10-1,
# cosine learning rate, lambda_u, distribution alignment and FixMatch's mu of CPU_SCALE; WRN-28-2's step is seconds
# there), on GPUs the paper's.
DEVICE_FIELDS = ("arch", "schedule", "lambda_u", "distribution_alignment", "mu")
DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {name: CPU_SCALE[name] for name in DEVICE_FIELDS},
    "cuda": {name: PAPER[name] for name in DEVICE_FIELDS},
}
RAMPUP_SHARE = 0.4  # of the steps, where a run's length is its own: the digits preset ramps over 2000 of 5000
EVALUATIONS = 20  # per run, where a run's length is its own: the paper's statistic is the median of the last 20


# Each method's official settings, which stand in for the MixMatch values of a data set's preset (a flag wins over
# both): google-research/mixmatch runs/table5.sh (the CIFAR-10 comparison) over each file's own flags, and
# google-research/fixmatch fixmatch.py. The baselines' files also pass --smoothing, which their losses never read.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "pi-model": dict(lambda_u=20),  # pi_model.py --consistency_weight=20
    "pseudo-label": dict(lambda_u=1, threshold=0.95),  # pseudo_label.py --consistency_weight=1, threshold 0.95
    "mixup": dict(alpha=0.75, lambda_u=1),  # mixup.py --beta=0.75; its unlabelled loss is added unweighted
    "vat": dict(lambda_u=0.3, vat_epsilon=6.0, entropy_weight=0.06),  # vat.py vat 0.3, vat_eps 6, entmin_weight
    "mean-teacher": dict(lambda_u=50, weight_decay=0.2),  # mean_teacher.py --consistency_weight=50 --wd=0.2
    "ict": dict(lambda_u=1000, alpha=0.75),  # ict.py --consistency_weight=1000 --beta=0.75
    # fixmatch.py: wu 1, confidence 0.95, uratio 7 (the preset's mu), SGD with Nesterov momentum 0.9 at lr 0.03 and
    # a cosine schedule; its L2 term of 5e-4 under momentum 0.9 decays the weights as a decoupled 0.005 does.
    "fixmatch": dict(lambda_u=1, threshold=0.95, optimizer="sgd", lr=0.03, weight_decay=0.005, schedule="cosine"),
}
# Where the official scripts set a method otherwise for a data set, over METHOD_DEFAULTS: runs/table6.sh (SVHN's
# train split) and table7.sh (with its extra split as the unlabelled pool).
_SVHN: dict[str, dict[str, Any]] = {
    "pi-model": dict(lambda_u=5, weight_decay=0.2),  # --consistency_weight=5 --wd=0.2
    "pseudo-label": dict(lambda_u=2),  # --consistency_weight=2
    "mixup": dict(alpha=0.25),  # --beta=0.25
    "mean-teacher": dict(lambda_u=150, weight_decay=0.02),  # --consistency_weight=150 --wd=0.02
    "ict": dict(lambda_u=20, alpha=0.5),  # --consistency_weight=20 --beta=0.5
}
DATASET_METHOD_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "svhn": _SVHN,
    "svhn-extra": dict(_SVHN, **{"mean-teacher": dict(_SVHN["mean-teacher"], lambda_u=180)}),
}


def method_defaults(method: str, dataset: str) -> dict[str, Any]:
    """A method's official settings on `dataset`, which stand in for the preset's (a flag wins over both)."""
    return dict(METHOD_DEFAULTS.get(method, {}), **DATASET_METHOD_DEFAULTS.get(dataset, {}).get(method, {}))


# The share of the steps over which each method ramps its unlabelled loss up, where its own schedule says so:
# warmup_pos 0.4 of the baselines' files; none in mixup.py and fixmatch.py. MixMatch and the supervised baselines
# take the preset's ramp-up (the paper's 16384 steps, or RAMPUP_SHARE of a budget's).
METHOD_RAMPUP_SHARE: dict[str, float] = {
    "pi-model": 0.4, "pseudo-label": 0.4, "vat": 0.4, "mean-teacher": 0.4, "ict": 0.4, "mixup": 0.0, "fixmatch": 0.0,
}


# Fine-tuning a pretrained backbone (--pretrained or --weights), over the preset and each method's own optimiser
# settings (a flag wins): Adam with decoupled weight decay as in the paper, every layer at --lr from the first step.
# A tenth of the rate for the backbone and a 5% warm-up, common practice, each scored 3-4 points lower on the
# validation runs of docs/backbones.md, which has how these were chosen; --backbone-lr-scale and --warmup-steps
# give them.
FINETUNE: dict[str, Any] = dict(optimizer="adam", lr=0.002, weight_decay=0.02)
# The unlabelled loss ramps up over all of a fine-tuning run's steps: its new classifier starts random, so its early
# guesses are noise, and at the preset's 40% the runs fell below fine-tuning on the labels alone (docs/backbones.md).
FINETUNE_RAMPUP_SHARE = 1.0
# No warm-up and one rate for every layer, unless a flag says otherwise.
LR_DEFAULTS: dict[str, Any] = dict(warmup_steps=0, backbone_lr_scale=1.0)


def device_type(device: str) -> str:
    """'cuda' or 'cpu': the kind of device a --device value (auto, cpu, cuda, cuda:N) names on this machine."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


def augmentation_of(dataset: str) -> tuple[int, bool]:
    """(reflect padding of the random crop, whether to flip horizontally) of a data set's preset."""
    cfg = TrainConfig(dataset=dataset).resolved()
    return cfg.pad, cfg.flip
