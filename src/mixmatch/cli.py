"""The `mixmatch` command: train, compare methods, report run folders, list data sets.

Every flag of `train` and `compare` is a field of TrainConfig; the parser is built inside main(),
never at import time.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import METHODS, PRESETS, TrainConfig


def _field_type(annotation: str) -> type:
    for name, kind in (("bool", bool), ("int", int), ("float", float)):
        if annotation.startswith(name):
            return kind
    return str


def add_config_flags(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One --flag per TrainConfig field, its help and choices from the field's metadata."""
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _field_type(str(f.type))
        help_text = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            default = "data set preset" if f.default is None and f.name in PRESETS["default"] else f.default
            parser.add_argument(
                flag,
                type=kind,
                default=f.default,
                choices=f.metadata.get("choices"),
                help=f"{help_text} (default: {default})",
            )


def config_from_args(args: argparse.Namespace, **overrides: object) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    values.update(overrides)
    return TrainConfig(**values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixmatch", description="MixMatch semi-supervised image classification")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train", help="train one model and write a run folder", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_config_flags(train)
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue RUN_DIR from its newest checkpoint, with its config.json (only --device, --progress, "
        "--data-dir, --download may change)",
    )

    compare = commands.add_parser("compare", help="MixMatch and both baselines on the same split: table + plot")
    add_config_flags(compare, skip=("method", "seed", "out"))
    compare.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    compare.add_argument("--seeds", nargs="+", type=int, default=[0])
    compare.add_argument("--out", default=None, help="folder for the runs and results (default runs/compare-...)")

    report = commands.add_parser("report", help="Markdown table and PNG curves of finished run folders")
    report.add_argument("runs", nargs="+", help="run folders")
    report.add_argument("--out", default=None, help="write results.md, results.json and curves.png here")
    report.add_argument("--by", default="method", help="the config field that groups runs: method, tag, ...")
    add_experiment_commands(commands)
    add_model_commands(commands)

    data = commands.add_parser("data", help="data sets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    data_commands.add_parser("list", help="registered data sets and their presets")
    info = data_commands.add_parser(
        "info", help="images per class and split, image shape, and the labelled subset that a seed picks"
    )
    info.add_argument("dataset", help="a data set of `mixmatch data list`")
    add_config_flags(info, skip=[f.name for f in dataclasses.fields(TrainConfig) if f.name not in DATA_INFO_FLAGS])
    info.add_argument("--save-split", default=None, help="write the labelled subset here, for --labeled-split")
    return parser


# The flags of `data info`: those that decide which images load and which of them are labelled.
DATA_INFO_FLAGS = (
    "data_dir",
    "download",
    "labels_csv",
    "test_csv",
    "image_size",
    "strict_images",
    "val_fraction",
    "labeled_split",
    "num_labels",
    "seed",
)


def run_data_info(args: argparse.Namespace) -> None:
    from .splits import choose_split, describe_split, load_for_config, save_split

    cfg = config_from_args(args).resolved()
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


# What --resume may change: where and how the run continues, not what it computes.
RESUME_OVERRIDES = ("device", "progress", "data_dir", "download")


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The flags' config, or with --resume the run folder's own config.json."""
    if args.resume is None:
        return config_from_args(args)
    from .checkpoint import run_config

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    changed = [name for name, default in defaults.items() if getattr(args, name) != default]
    refused = [name for name in changed if name not in RESUME_OVERRIDES]
    if refused:
        flags = ", ".join("--" + name.replace("_", "-") for name in refused)
        raise ValueError(f"--resume continues {args.resume} with its own config.json; drop {flags}")
    overrides = {name: getattr(args, name) for name in changed}
    return dataclasses.replace(run_config(args.resume), out=str(args.resume), **overrides)


def add_model_commands(commands: argparse._SubParsersAction) -> None:
    """export, predict and evaluate: a trained model outside its run."""
    export = commands.add_parser("export", help="write a run's EMA weights as model.safetensors + model.json")
    export.add_argument("run", metavar="RUN_DIR", help="a run folder with checkpoints")
    export.add_argument("--out", default=None, help="model file (default RUN_DIR/model.safetensors)")

    model_help = "an exported model.safetensors (model.json beside it), or the folder holding it"
    predict = commands.add_parser("predict", help="class and confidence of each image file")
    predict.add_argument("--model", required=True, help=model_help)
    predict.add_argument("images", nargs="+", metavar="IMAGES_OR_FOLDER", help="image files, or folders of them")
    predict.add_argument("--csv", default=None, help="write path,class,confidence rows here instead of printing")

    evaluate = commands.add_parser("evaluate", help="accuracy and confusion matrix PNG on a data set's test split")
    evaluate.add_argument("--model", required=True, help=model_help)
    evaluate.add_argument("--dataset", required=True, help="a data set of `mixmatch data list`")
    evaluate.add_argument("--data-dir", default=None, help="folder holding the data set")
    evaluate.add_argument("--out", default=None, help="confusion matrix PNG (default confusion-DATASET.png beside it)")


def run_model_command(args: argparse.Namespace) -> None:
    from . import export as E

    if args.command == "export":
        path = E.export(args.run, args.out)
        print(f"wrote {path} and {path.with_suffix('.json')}")
    elif args.command == "predict":
        rows = E.predict(args.model, args.images)
        if args.csv is None:
            for row in rows:
                print(f"{row['path']}\t{row['class']}\t{row['confidence']:.4f}")
            return
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "class", "confidence"])
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {len(rows)} predictions to {args.csv}", file=sys.stderr)
    else:
        result = E.evaluate(args.model, args.dataset, args.data_dir, args.out)
        print(json.dumps({k: v for k, v in result.items() if k != "confusion"}, indent=2))


def run_compare(args: argparse.Namespace) -> None:
    from .report import report
    from .train import train

    base = config_from_args(args, out=None).resolved()
    out = Path(args.out or f"runs/compare-{base.dataset}-{base.num_labels or 'all'}")
    run_dirs = []
    for seed in args.seeds:
        for method in args.methods:
            run_dir = out / f"{method}-seed{seed}"
            summary = train(config_from_args(args, method=method, seed=seed, out=str(run_dir)))
            print(
                f"{method:>16} seed {seed}: test accuracy {100 * summary['test_accuracy']:.2f}% "
                f"in {summary['wall_seconds']:.0f} s",
                file=sys.stderr,
            )
            run_dirs.append(run_dir)
    print(report(run_dirs, out))
    print(f"\nruns, results.md and curves.png in {out}")


def add_experiment_commands(commands: argparse._SubParsersAction) -> None:
    from .ablate import ABLATIONS

    ablate = commands.add_parser("ablate", help="MixMatch ablations of the paper's table 4 on one setting")
    add_config_flags(ablate, skip=("method", "seed", "out", "tag"))
    ablate.add_argument("--ablations", nargs="+", default=list(ABLATIONS), help=f"of: {', '.join(ABLATIONS)}")
    ablate.add_argument("--seeds", nargs="+", type=int, default=[0])
    ablate.add_argument("--out", default=None, help="folder for the runs and results (default runs/ablate-...)")

    figures = commands.add_parser("figures", help="the explanatory figures: Beta(alpha, alpha) and sharpening")
    figures.add_argument("--out", default="results/figures")

    demo = commands.add_parser("demo", help="the seed's sharpening demo: pseudo-labels at T=1 and T=0.5, t-SNE")
    demo.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist", "digits"))
    demo.add_argument("--data-dir", default=None)
    demo.add_argument("--download", action="store_true")
    demo.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    demo.add_argument("--epochs", type=int, default=10)
    demo.add_argument("--num-labels", type=int, default=500)
    demo.add_argument("--out", default=None, help="default runs/demo-<dataset>")


def run_experiment_command(args: argparse.Namespace) -> None:
    if args.command == "figures":
        from .figures import all_figures

        for path in all_figures(args.out):
            print(path)
    elif args.command == "demo":
        from .demo import sharpening_demo
        from .loaders import load_dataset

        data = load_dataset(args.dataset, args.data_dir, args.download)
        out = Path(args.out or f"runs/demo-{args.dataset}")
        sharpening_demo(data, out, tuple(args.seeds), num_labels=args.num_labels, epochs=args.epochs)
        print((out / "results.md").read_text() + f"\nruns.json, results.md and tsne.png in {out}")
    else:
        from .ablate import ablation_configs, paper_column
        from .report import report
        from .train import train

        base = config_from_args(args, out=None).resolved()
        out = Path(args.out or f"runs/ablate-{base.dataset}-{base.num_labels}")
        configs = ablation_configs(base, args.ablations, args.seeds, out)
        for cfg in configs:
            accuracy = train(cfg)["test_accuracy"]
            print(f"{cfg.tag:>16} seed {cfg.seed}: test accuracy {100 * accuracy:.2f}%", file=sys.stderr)
        table = paper_column(report([c.out for c in configs], out, key="tag"))
        (out / "results.md").write_text(table + "\n")
        print(table + f"\n\nruns, results.md and curves.png in {out}")


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .dataset import DataError
    from .distributed import ProcessGroup
    from .train import TrainingDiverged, TrainingInterrupted

    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            from .train import train

            summary = train(train_config(args), resume=args.resume is not None)
            if ProcessGroup.from_env().is_main:
                print(json.dumps(summary, indent=2))
        elif args.command == "compare":
            run_compare(args)
        elif args.command in ("export", "predict", "evaluate"):
            run_model_command(args)
        elif args.command == "report":
            from .report import report

            print(report(args.runs, args.out, key=args.by))
        elif args.command in ("ablate", "figures", "demo"):
            run_experiment_command(args)
        elif args.command == "data" and args.data_command == "info":
            run_data_info(args)
        elif args.command == "data":
            for name, preset in PRESETS.items():
                if name != "default":
                    print(
                        f"{name:>14}  model {preset['arch']}, {preset['num_labels'] or 'all'} labels, "
                        f"{preset['steps']} steps, alpha {preset['alpha']}, lambda_u {preset['lambda_u']}"
                    )
    except TrainingInterrupted as stop:
        print(f"mixmatch: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except (DataError, CheckpointError, TrainingDiverged, ValueError, FileNotFoundError) as error:
        if os.environ.get("MIXMATCH_DEBUG"):
            raise
        print(f"mixmatch: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mixmatch: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
