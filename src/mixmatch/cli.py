"""The `mixmatch` command: parse the flags, call the function each sub-command is bound to, print errors in one line.

Every flag of `train`, `compare` and `ablate` is a field of TrainConfig, shown in the field's help group; the
commands that load data (`train`, `compare`, `ablate`, `evaluate`, `demo`, `data info`) take the same data flags
from add_data_flags. The parser is built inside main(), never at import time.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import re
import sys
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from . import runfolder
from .config import (
    DATASET_METHOD_DEFAULTS,
    FINETUNE,
    FINETUNE_RAMPUP_SHARE,
    GROUPS,
    METHOD_DEFAULTS,
    METHOD_NAMES,
    METHOD_RAMPUP_SHARE,
    PRESETS,
    ConfigError,
    TrainConfig,
    default_out,
    field_types,
    flag,
    read_settings,
)
from .experiments.grid import WorkerDied, run_grid

# The data flags that say which labelled subset a run takes; the rest of the data group says which images load.
SPLIT_FIELDS = ("labeled_split", "num_labels")


def add_config_flags(
    parser: argparse.ArgumentParser,
    names: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    defaults: dict[str, tuple[Any, str]] | None = None,
) -> None:
    """One flag per TrainConfig field (all, or those in `names`; none in `skip`), in the field's help group.

    Type and choices come from the field's annotation (a Literal gives the choices), help from its metadata.
    `defaults` maps a field to this command's own (default value, how --help shows it).
    """
    defaults = defaults or {}
    types = field_types()
    chosen = [f for f in dataclasses.fields(TrainConfig) if (names is None or f.name in names) and f.name not in skip]
    for title in GROUPS:
        members = [f for f in chosen if f.metadata["group"] == title]
        if not members:
            continue
        group = parser.add_argument_group(title)
        for f in members:
            default, shown = defaults.get(f.name, (f.default, None))
            if shown is None and default is None:
                shown = preset_default(f.name)
            help_text = f.metadata["help"].replace("%", "%%")
            if shown is not None:
                help_text += f" (default: {shown})".replace("%", "%%")
            elif default is not None:
                help_text += " (default: %(default)s)"
            kind = types[f.name]
            if kind is bool:
                group.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=default, help=help_text)
            elif get_origin(kind) is Literal:
                group.add_argument(flag(f.name), default=default, choices=get_args(kind), help=help_text)
            elif f.name == "threads":  # None is auto
                group.add_argument(flag(f.name), type=int_or_auto, default=default, help=help_text)
            else:
                group.add_argument(flag(f.name), type=kind, default=default, help=help_text)


def preset_default(name: str) -> str | None:
    """How --help shows the default of a field that the data set's preset, the methods' official settings
    (config.METHOD_DEFAULTS, METHOD_RAMPUP_SHARE) or fine-tuning (config.FINETUNE) fill: each with its value;
    None where none of them does."""
    parts = ["data set preset"] if name in PRESETS["default"] else []
    values: dict[str, list[str]] = {}
    if name == "rampup_steps":
        for method, share in METHOD_RAMPUP_SHARE.items():
            values.setdefault(_share_of_steps(share), []).append(method)
    for method, settings in METHOD_DEFAULTS.items():
        if name in settings:
            values.setdefault(str(settings[name]), []).append(method)
    parts += [f"{', '.join(methods)}: {value}" for value, methods in values.items()]
    if any(name in settings for methods in DATASET_METHOD_DEFAULTS.values() for settings in methods.values()):
        parts.append("SVHN: see docs/methods.md")
    if name in FINETUNE:
        parts.append(f"fine-tuning: {FINETUNE[name]}")
    elif name == "rampup_steps":
        parts.append(f"fine-tuning: {_share_of_steps(FINETUNE_RAMPUP_SHARE)}")
    return "; ".join(parts) or None


def _share_of_steps(share: float) -> str:
    return "none" if share == 0 else "all the steps" if share == 1 else f"{share:.0%} of the steps"


def data_fields(split: bool = False) -> list[str]:
    """The data group's fields: those that decide which images load, and with `split` the labelled subset."""
    group = [f.name for f in dataclasses.fields(TrainConfig) if f.metadata["group"] == "data"]
    return [name for name in group if split or name not in SPLIT_FIELDS]


def add_data_flags(
    parser: argparse.ArgumentParser,
    split: bool = False,
    skip: Iterable[str] = (),
    defaults: dict[str, tuple[Any, str]] | None = None,
) -> None:
    """The data group, the same for every command that loads data (see add_config_flags for the arguments)."""
    add_config_flags(parser, data_fields(split), skip, defaults)


def config_from_args(args: argparse.Namespace, **overrides: object) -> TrainConfig:
    """The TrainConfig of the flags this command has (and `overrides`), its ranges checked."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    values.update(overrides)
    return TrainConfig(**values).validate()


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag ends in one line (`mixmatch: error: ...`, status 2) instead of the usage block,
    like every other bad input; `--help` still shows the usage. `commands` holds the sub-commands' parsers."""

    commands: dict[str, argparse.ArgumentParser]

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"mixmatch: error: {message} (see `{self.prog} --help`)\n")


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """--config and --print-config, for the commands whose flags are TrainConfig's."""
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="start from the settings in FILE (a run's config.json, or YAML); flags override them")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")


def with_settings_file(parser: argparse.ArgumentParser, argv: Sequence[str] | None, args: argparse.Namespace
                       ) -> argparse.Namespace:
    """The command's flags parsed again over the settings of `--config FILE`: a flag given on the command line
    wins over the file. The file's --out is dropped where it is its own folder (a new run there would replace
    the one it came from) or the default of its settings (so `--seed 1` beside it gets its own default folder),
    and so is its progress bar (this terminal's). `args.settings_file` names the file and the fields it set,
    for error lines."""
    if args.command == "train" and args.resume is not None:
        raise ValueError("--resume continues a run with its own config.json; drop --config")
    path = Path(args.config)
    command = parser.commands[args.command]
    flags = {action.dest for action in command._actions}
    settings = {k: v for k, v in read_settings(path).items() if k in flags and k != "progress"}
    out = settings.get("out")
    if out is not None and (
        Path(out).resolve() == path.parent.resolve()
        or ({"dataset", "method", "num_labels", "seed"} <= settings.keys() and out == default_out(settings))
    ):
        del settings["out"]
    command.set_defaults(**settings)
    args = parser.parse_args(argv)
    given = {token.split("=")[0] for token in argv if token.startswith("--")}
    args.settings_file = (path, {k for k in settings if flag(k) not in given and flag(f"no_{k}") not in given})
    return args


def int_or_auto(text: str) -> int | None:
    """A flag's whole number, or None for `auto` (--threads, whose range TrainConfig.validate checks)."""
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or auto, got {text!r}") from None


def count_or_auto(text: str) -> int | None:
    """--jobs: a whole number >= 1, or None for `auto`."""
    try:
        value = int_or_auto(text)
    except argparse.ArgumentTypeError:
        value = 0
    if value is not None and value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1 or auto, got {text!r}")
    return value


def add_grid_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--resume",
        action="store_true",
        help="finish a stopped grid in --out: keep its finished runs, continue the stopped ones, start the rest",
    )
    parser.add_argument(
        "--jobs",
        type=count_or_auto,
        default=None,
        help="runs trained at a time, each in its own process: a whole number, or auto (one per idle CPU)",
    )


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="mixmatch", description="MixMatch semi-supervised image classification")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one model and write a run folder")
    add_config_flags(train)
    add_settings_flags(train)
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue RUN_DIR from its newest checkpoint, with its own settings (its config.json)",
    )
    train.set_defaults(func=run_train)

    compare = commands.add_parser("compare", help="several methods on the same labelled split: table + plot")
    add_config_flags(compare, skip=("method", "seed", "out"))
    add_settings_flags(compare)
    compare.add_argument("--methods", nargs="+", default=["mixmatch", "supervised", "fully-supervised"],
                         choices=[*METHOD_NAMES, "all"], metavar="METHOD",
                         help="those of `mixmatch train --method`, or all (default: mixmatch and the two baselines)")
    compare.add_argument("--seeds", nargs="+", type=int, default=[0],
                         help="seeds: each picks the labelled split and the run's randomness (default: 0)")
    compare.add_argument("--out", default=None, help="folder for the runs and results (default runs/compare-...)")
    add_grid_flags(compare)
    compare.set_defaults(func=run_compare)

    from .experiments.ablate import ABLATIONS

    ablate = commands.add_parser("ablate", help="MixMatch ablations of the paper's table 4 on one setting")
    add_config_flags(ablate, skip=("method", "seed", "out", "tag"))
    add_settings_flags(ablate)
    ablate.add_argument("--ablations", nargs="+", default=list(ABLATIONS), help=f"of: {', '.join(ABLATIONS)}")
    ablate.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="seeds: each picks the labelled split and the run's randomness (default: 0)")
    ablate.add_argument("--out", default=None, help="folder for the runs and results (default runs/ablate-...)")
    add_grid_flags(ablate)
    ablate.set_defaults(func=run_ablate)

    report = commands.add_parser("report", help="Markdown table and PNG curves of finished run folders")
    report.add_argument("runs", nargs="+", help="run folders")
    report.add_argument(
        "--out", default=None, help="write results.md, results.json, runs.txt and curves or error-vs-labels PNG here"
    )
    report.add_argument(
        "--by", default="method", help="the config field that groups runs (method, tag, ...), or run: a row per run"
    )
    report.set_defaults(func=run_report)

    add_model_commands(commands)

    figures = commands.add_parser("figures", help="the explanatory figures: Beta(alpha, alpha) and sharpening")
    figures.add_argument("--out", default="results/figures")
    figures.set_defaults(func=run_figures)

    demo = commands.add_parser("demo", help="the seed's sharpening demo: pseudo-labels at T=1 and T=0.5, t-SNE")
    add_data_flags(demo, defaults={"dataset": ("mnist", "mnist")})
    demo.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one run per seed and T")
    demo.add_argument("--epochs", type=int, default=10, help="passes over the unlabelled images (default: 10)")
    demo.add_argument("--num-labels", type=int, default=500, help="labelled images (default: 500)")
    demo.add_argument("--out", default=None, help="default runs/demo-<dataset>")
    demo.set_defaults(func=run_demo)

    data = commands.add_parser("data", help="data sets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    data_commands.add_parser("list", help="registered data sets and their presets").set_defaults(func=run_data_list)
    info = data_commands.add_parser(
        "info", help="images per class and split, image shape, and the labelled subset that a seed picks"
    )
    info.add_argument("dataset", help="a data set of `mixmatch data list`")
    add_data_flags(info, split=True, skip=("dataset",))
    add_config_flags(info, names=("seed",))
    info.add_argument("--save-split", default=None, help="write the labelled subset here, for --labeled-split")
    info.set_defaults(func=run_data_info)
    parser.commands = dict(commands.choices)
    return parser


def add_model_commands(commands: argparse._SubParsersAction) -> None:
    """export, predict and evaluate: a trained model outside its run."""
    export = commands.add_parser("export", help="write a run's EMA weights as model.safetensors + model.json")
    export.add_argument("run", metavar="RUN_DIR", help="a run folder with checkpoints")
    export.add_argument("--out", default=None, help="model file (default RUN_DIR/model.safetensors)")
    export.set_defaults(func=run_export)

    model_help = "an exported model.safetensors (model.json beside it), or the folder holding it"
    predict = commands.add_parser("predict", help="class and confidence of each image file")
    predict.add_argument("--model", required=True, help=model_help)
    predict.add_argument("images", nargs="+", metavar="IMAGES_OR_FOLDER", help="image files, or folders of them")
    predict.add_argument("--csv", default=None, help="write path,class,confidence rows here instead of printing")
    predict.set_defaults(func=run_predict)

    evaluate = commands.add_parser(
        "evaluate",
        help="accuracy and confusion matrix PNG on a data set's test split (an image folder without test/: "
        "the validation images its training held out)",
    )
    evaluate.add_argument("--model", required=True, help=model_help)
    add_data_flags(evaluate, defaults={"dataset": (None, "the model's"), "image_size": (None, "the model's")})
    evaluate.add_argument("--out", default=None, help="confusion matrix PNG (default confusion-DATASET.png beside it)")
    evaluate.set_defaults(func=run_evaluate)


# ---- the commands ---------------------------------------------------------------------------------


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The flags' config, or with --resume the run folder's own config.json."""
    if args.resume is None:
        return config_from_args(args)
    from .training.checkpoint import RESUME_OVERRIDES, resume_config

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    changed = [name for name, default in defaults.items() if getattr(args, name) != default]
    refused = [name for name in changed if name not in RESUME_OVERRIDES]
    if refused:
        raise ValueError(
            f"--resume continues {args.resume} with its own config.json; drop {', '.join(map(flag, refused))}"
        )
    overrides = {name: getattr(args, name) for name in changed}
    # A progress bar is this terminal's, not the run's: a grid's worker saved progress=False.
    overrides["progress"] = args.progress
    return resume_config(args.resume, overrides)


def run_train(args: argparse.Namespace) -> None:
    from .training.distributed import ProcessGroup
    from .training.trainer import train

    config = train_config(args)
    if args.print_config:
        print(json.dumps(config.resolved().to_dict(), indent=2))
        return
    summary = train(config, resume=args.resume is not None)
    if ProcessGroup.from_env().is_main:
        print(json.dumps(summary, indent=2))


def run_compare(args: argparse.Namespace) -> None:
    base = config_from_args(args, out=None).resolved()
    out = Path(args.out or f"runs/compare-{base.dataset}-{base.num_labels or 'all'}")
    tag = f"-{base.tag}" if base.tag else ""  # a variant's runs sit beside the untagged ones in one folder
    configs = [
        config_from_args(args, method=method, seed=seed, out=str(out / f"{method}{tag}-seed{seed}"))
        for seed in args.seeds
        for method in run_methods(args)
    ]
    if args.print_config:
        print(json.dumps([cfg.resolved().to_dict() for cfg in configs], indent=2))
        return
    print(run_grid(configs, out, key="method", jobs=args.jobs, resume=args.resume))
    print(f"\nruns, results.md and curves.png in {out}")


def run_ablate(args: argparse.Namespace) -> None:
    from .experiments.ablate import ablation_configs, paper_column

    base = config_from_args(args, out=None).resolved()
    out = Path(args.out or f"runs/ablate-{base.dataset}-{base.num_labels}")
    configs = ablation_configs(base, args.ablations, args.seeds, out)
    if args.print_config:
        print(json.dumps([cfg.resolved().to_dict() for cfg in configs], indent=2))
        return
    table = paper_column(run_grid(configs, out, "tag", args.jobs, args.resume))
    runfolder.write_text(out / "results.md", table + "\n")
    print(table + f"\n\nruns, results.md and curves.png in {out}")


def run_report(args: argparse.Namespace) -> None:
    from .experiments.report import report

    print(report(args.runs, args.out, key=args.by))


def run_export(args: argparse.Namespace) -> None:
    from .export import export

    path = export(args.run, args.out)
    print(f"wrote {path} and {path.with_suffix('.json')}")


def run_predict(args: argparse.Namespace) -> None:
    from .export import predict

    if args.csv is not None:
        runfolder.writable_file(args.csv, "--csv file")
    rows = predict(args.model, args.images)
    if args.csv is None:
        for row in rows:
            print(f"{row['path']}\t{row['class']}\t{row['confidence']:.4f}")
        return

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "class", "confidence"])
            writer.writeheader()
            writer.writerows(rows)

    runfolder.atomic_write(Path(args.csv), write)
    print(f"wrote {len(rows)} predictions to {args.csv}", file=sys.stderr)


def run_evaluate(args: argparse.Namespace) -> None:
    from .export import evaluate

    options = {name: getattr(args, name) for name in data_fields() if name != "dataset"}
    result = evaluate(args.model, args.dataset, out=args.out, **options)
    print(json.dumps({k: v for k, v in result.items() if k != "confusion"}, indent=2))


def run_figures(args: argparse.Namespace) -> None:
    from .experiments.figures import all_figures

    for path in all_figures(args.out):
        print(path)


def run_demo(args: argparse.Namespace) -> None:
    from .data import load_for_config
    from .experiments.demo import sharpening_demo

    if args.epochs <= 0:
        raise ValueError(f"--epochs must be positive, got {args.epochs}")
    cfg = config_from_args(args)
    for seed in args.seeds:
        dataclasses.replace(cfg, seed=seed).validate()
    out = runfolder.writable(args.out or f"runs/demo-{args.dataset}", "demo folder")
    data = load_for_config(cfg)
    sharpening_demo(data, out, tuple(args.seeds), num_labels=args.num_labels, epochs=args.epochs)
    print((out / "results.md").read_text() + f"\nruns.json, results.md and tsne.png in {out}")


def run_data_list(args: argparse.Namespace) -> None:
    from .config import DEVICE_DEFAULTS

    cpu, gpu = DEVICE_DEFAULTS["cpu"], DEVICE_DEFAULTS["cuda"]
    for name, preset in PRESETS.items():
        if name != "default":
            model = preset["arch"] or f"{cpu['arch']} on a CPU, {gpu['arch']} on a GPU"
            steps = f"{preset['steps']} steps" if preset["steps"] else "as many steps as fit --minutes"
            if preset["max_minutes"]:
                steps += (
                    f" (fewer where they would take over {preset['max_minutes']} min on this machine: --max-minutes; "
                    "--steps runs them all)"
                )
            lambda_u = preset["lambda_u"] or f"{cpu['lambda_u']} on a CPU, {gpu['lambda_u']} on a GPU"
            schedule = preset["schedule"] or f"{cpu['schedule']} (CPU) or {gpu['schedule']} (GPU)"
            aligned = {True: ", distribution alignment", False: "", None: ", distribution alignment on a CPU"}
            print(
                f"{name:>14}  model {model}, {preset['num_labels'] or 'all'} labels, {steps}, {schedule} lr, "
                f"alpha {preset['alpha']}, lambda_u {lambda_u}{aligned[preset['distribution_alignment']]}"
            )


def run_data_info(args: argparse.Namespace) -> None:
    from .data.splits import choose_split, describe_split, load_for_config, save_split

    cfg = config_from_args(args).resolved()
    if args.save_split:
        runfolder.writable_file(args.save_split, "--save-split file")
    data = load_for_config(cfg)
    split = choose_split(data, cfg.num_labels, cfg.seed, cfg.labeled_split)
    if cfg.labeled_split:
        how = f"from {cfg.labeled_split}"
    elif cfg.num_labels is None:
        how = "every labelled image"
    else:
        how = f"seed {cfg.seed}, {cfg.num_labels} labels"
    print(describe_split(data, split, how))
    if args.save_split:
        save_split(Path(args.save_split), cfg.dataset, split, cfg.seed, data)
        print(f"split written to {args.save_split}")


def run_methods(args: argparse.Namespace) -> list[str]:
    """The methods a train, compare or ablate command trains (compare's `all` spelled out); [] for the others."""
    if args.command == "train":
        return [args.method]
    if args.command == "compare":
        return list(METHOD_NAMES) if "all" in args.methods else list(dict.fromkeys(args.methods))
    return ["mixmatch"] if args.command == "ablate" else []


def refuse_unread_flags(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """ValueError, one line, where a flag of one method's own settings is given and no method of the command
    reads it (`--threshold` beside `--method mixmatch`): it would change nothing, silently."""
    from .methods import METHODS

    runs = run_methods(args)
    given = {token.split("=")[0] for token in argv if token.startswith("--")}
    readers: dict[str, list[str]] = {}
    for name, cls in METHODS.items():
        for field in cls.reads:
            readers.setdefault(field, []).append(name)
    for field, names in readers.items():
        if runs and {flag(field), flag(f"no_{field}")} & given and not set(names) & set(runs):
            readers_text = " and ".join(names) if len(names) < 3 else ", ".join(names)
            verb = "reads" if len(names) == 1 else "read"
            raise ValueError(
                f"only {readers_text} {verb} {flag(field)}; this command trains {', '.join(runs)}: drop it, or "
                f"train one of them"
            )


def config_error_line(error: ConfigError, args: argparse.Namespace) -> str:
    """The error in the command's own flag names: `lambda_u must be ...` -> `--lambda-u must be ...`
    (`--seeds`, `--methods` where the command takes a list)."""
    name = error.field
    path, from_file = getattr(args, "settings_file", (None, set()))
    if name in from_file:
        return f"{path}: {error}"
    shown = flag(name + "s") if hasattr(args, name + "s") and not hasattr(args, name) else flag(name)
    return re.sub(rf"\b{name}\b", shown, str(error), count=1)


def main(argv: Sequence[str] | None = None) -> int:
    from .data.dataset import DataError
    from .training.checkpoint import CheckpointError
    from .training.distributed import ProcessGroup
    from .training.trainer import TrainingDiverged, TrainingInterrupted

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    # Under torchrun every process meets the same stop or error: rank 0 alone says it.
    say = ProcessGroup.from_env().is_main
    try:
        if getattr(args, "config", None) is not None:
            args = with_settings_file(parser, argv, args)
        refuse_unread_flags(args, argv)
        args.func(args)
    except TrainingInterrupted as stop:
        if say:
            print(f"mixmatch: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except BrokenPipeError:  # `mixmatch ... | head` closed the pipe: nothing went wrong here
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would say it again
        return 0
    except (DataError, CheckpointError, TrainingDiverged, WorkerDied, ValueError, OSError) as error:
        if os.environ.get("MIXMATCH_DEBUG"):
            raise
        if isinstance(error, ConfigError):
            message = config_error_line(error, args)
        elif isinstance(error, OSError) and error.errno is not None:  # one the library did not word itself
            message = f"{error.filename or error.strerror}: {runfolder.cause(error, error.filename or '.')}"
        else:
            message = str(error)
        if say:
            print(f"mixmatch: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if say:
            print("mixmatch: interrupted (what was saved before is kept: --resume continues a run or a grid from "
                  "its checkpoints)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
