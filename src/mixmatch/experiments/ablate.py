"""Ablations of MixMatch as config overrides of one run, set against the paper's table 4."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import TrainConfig

# name -> (TrainConfig overrides, the paper's table 4 row, its error (%) on CIFAR-10 with 250 labels or None)
ABLATIONS: dict[str, tuple[dict, str, float | None]] = {
    "mixmatch": ({}, "MixMatch", 11.80),
    "k1": (dict(k=1), "without distribution averaging (K=1)", 17.09),
    "t1": (dict(temperature=1.0), "without temperature sharpening (T=1)", 27.83),
    "no-mixup": (dict(alpha=0.0), "without MixUp", 39.11),
    "mixup-labeled": (dict(mix="labeled"), "with MixUp on labeled only", 32.16),
    "mixup-unlabeled": (dict(mix="unlabeled"), "with MixUp on unlabeled only", 12.35),
    "mixup-separate": (dict(mix="separate"), "with MixUp on separate labeled and unlabeled", 12.26),
    "no-ema": (dict(ema_decay=0.0), "(not in the paper: evaluate the raw weights)", None),
    "lambda-u-0": (dict(lambda_u=0.0), "(not in the paper: no unlabelled loss)", None),
}


def ablation_configs(base: TrainConfig, names: list[str], seeds: list[int], out: Path) -> list[TrainConfig]:
    """One config per (ablation, seed), each with its own run folder and `tag` = the ablation's name."""
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablation {unknown[0]!r}; choose from {', '.join(ABLATIONS)}")
    return [
        dataclasses.replace(base, method="mixmatch", seed=seed, tag=name, out=str(out / f"{name}-seed{seed}"),
                            **ABLATIONS[name][0])
        for name in names
        for seed in seeds
    ]


def paper_column(table: str) -> str:
    """Add the paper's CIFAR-10 / 250-label error of each row to a `mixmatch report --by tag` table."""
    lines = table.splitlines()
    out = [lines[0] + " paper's row (table 4) | paper error (%), CIFAR-10 250 labels |", lines[1] + "---|---:|"]
    for line in lines[2:]:
        name = line.split("|")[1].strip()
        _, row, error = ABLATIONS.get(name, ({}, "", None))
        out.append(line + f" {row} | {'' if error is None else f'{error:.2f}'} |")
    return "\n".join(out)
