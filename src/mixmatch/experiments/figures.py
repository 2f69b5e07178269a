"""The explanatory figures: MixUp's folded Beta(alpha, alpha), and sharpening at several temperatures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .. import runfolder
from ..algorithm import sharpen


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def beta_pdf(x: np.ndarray, alpha: float) -> np.ndarray:
    """Density of Beta(alpha, alpha) at x in (0, 1): x^(a-1) (1-x)^(a-1) / B(a, a), B(a, a) = G(a)^2 / G(2a)."""
    log_norm = 2 * math.lgamma(alpha) - math.lgamma(2 * alpha)
    return np.exp((alpha - 1) * (np.log(x) + np.log1p(-x)) - log_norm)


def beta_figure(path: str | Path, alphas: tuple[float, ...] = (0.1, 0.75, 2.0, 10.0)) -> None:
    """Density of lambda ~ Beta(alpha, alpha) and of lambda' = max(lambda, 1 - lambda), one panel per alpha."""
    plt = _pyplot()
    grid = np.linspace(0.001, 0.999, 999)
    fig, axes = plt.subplots(1, len(alphas), figsize=(4 * len(alphas), 3.4), sharey=False)
    for ax, alpha in zip(axes, alphas, strict=True):
        density = beta_pdf(grid, alpha)
        # Folding at 1/2 doubles the density on [0.5, 1]: p'(l) = p(l) + p(1 - l) = 2 p(l) by symmetry.
        folded = np.where(grid >= 0.5, 2 * density, 0.0)
        ax.plot(grid, density, label="lambda ~ Beta(a, a)")
        ax.fill_between(grid, folded, alpha=0.3, color="C1", label="lambda' = max(lambda, 1-lambda)")
        ax.axvline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_title(f"alpha = {alpha}")
        ax.set_xlabel("mixing weight")
        ax.set_ylim(0, min(8.0, 1.15 * float(folded.max())))
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=8, loc="upper center")
    fig.suptitle("MixUp weights: lambda' >= 0.5 keeps each mixed example closer to its first input")
    fig.tight_layout()
    runfolder.save_figure(fig, path, dpi=110)
    plt.close(fig)


def sharpening_figure(path: str | Path, temperatures: tuple[float, ...] = (2.0, 1.0, 0.5, 0.25, 0.1),
                      classes: int = 10, seed: int = 0) -> None:
    """One random class distribution sharpened at several temperatures (the paper's eq. 7)."""
    plt = _pyplot()
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(1, classes, generator=g), dim=-1)
    fig, axes = plt.subplots(1, len(temperatures), figsize=(3.2 * len(temperatures), 3.0), sharey=True)
    for ax, T in zip(axes, temperatures, strict=True):
        q = sharpen(p, T)[0].numpy()
        entropy = float(-(q * np.log(np.clip(q, 1e-12, 1))).sum())
        ax.bar(range(classes), q, color="C2" if T < 1 else ("C0" if T == 1 else "C3"))
        ax.set_title(f"T = {T}  (entropy {entropy:.2f})")
        ax.set_xlabel("class")
        ax.set_xticks(range(classes))
    axes[0].set_ylabel("probability")
    fig.suptitle("Sharpen(p, T) = p^(1/T) / sum p^(1/T): T = 1 keeps p, T -> 0 tends to one-hot")
    fig.tight_layout()
    runfolder.save_figure(fig, path, dpi=110)
    plt.close(fig)


def all_figures(out: str | Path) -> list[Path]:
    out = runfolder.make_folder(out)
    paths = [out / "beta.png", out / "sharpening.png"]
    beta_figure(paths[0])
    sharpening_figure(paths[1])
    return paths
