"""The `mixmatch` command: train, compare methods, report run folders, list data sets.

Every flag of `train` and `compare` is a field of TrainConfig; the parser is built inside main(),
never at import time.
"""

from __future__ import annotations

import argparse
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
            default = "data set preset" if f.default is None else f.default
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

    compare = commands.add_parser("compare", help="MixMatch and both baselines on the same split: table + plot")
    add_config_flags(compare, skip=("method", "seed", "out"))
    compare.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    compare.add_argument("--seeds", nargs="+", type=int, default=[0])
    compare.add_argument("--out", default=None, help="folder for the runs and results (default runs/compare-...)")

    report = commands.add_parser("report", help="Markdown table and PNG curves of finished run folders")
    report.add_argument("runs", nargs="+", help="run folders")
    report.add_argument("--out", default=None, help="write results.md, results.json and curves.png here")

    data = commands.add_parser("data", help="data sets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    data_commands.add_parser("list", help="registered data sets and their presets")
    return parser


def run_compare(args: argparse.Namespace) -> None:
    from .report import report
    from .train import train

    base = config_from_args(args, out=None).resolved()
    out = Path(args.out or f"runs/compare-{base.dataset}-{base.num_labels}")
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


def main(argv: Sequence[str] | None = None) -> int:
    from .data import DataError
    from .train import TrainingDiverged

    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            from .train import train

            summary = train(config_from_args(args))
            print(json.dumps(summary, indent=2))
        elif args.command == "compare":
            run_compare(args)
        elif args.command == "report":
            from .report import report

            print(report(args.runs, args.out))
        elif args.command == "data":
            for name, preset in PRESETS.items():
                if name != "default":
                    print(
                        f"{name:>14}  model {preset['arch']}, {preset['num_labels']} labels, "
                        f"{preset['steps']} steps, alpha {preset['alpha']}, lambda_u {preset['lambda_u']}"
                    )
    except (DataError, TrainingDiverged, ValueError, FileNotFoundError) as error:
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
