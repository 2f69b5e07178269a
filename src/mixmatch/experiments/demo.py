"""The seed's sharpening demo: pseudo-labels with and without sharpening, on MNIST-size data.

500 labelled images, the rest unlabelled; the two-conv-layer CNN; the model's own predictions on
unlabelled images as targets (no augmentation, no MixUp); cross-entropy on labelled data plus mean
squared error on unlabelled data; ten epochs over the unlabelled set. At T = 1 the target is the
prediction itself, so the unlabelled term has no gradient and the run is labelled-only training;
at T < 1 the target is sharper than the prediction, which pulls predictions towards confident ones
(entropy minimisation).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import algorithm, runfolder
from ..augment import normalize
from ..data.dataset import ImageDataset
from ..data.splits import labeled_split
from ..models import SmallCNN


def train_pseudo_label(data: ImageDataset, T: float, seed: int, num_labels: int = 500, epochs: int = 10,
                       batch_size: int = 64, unlabeled_batch: int = 256, lambda_u: float = 10.0,
                       lr: float = 2e-3) -> tuple[SmallCNN, dict[str, Any]]:
    """Train the demo model once; returns it and a summary with the test accuracy."""
    torch.manual_seed(seed)
    mean, std = data.channel_stats()
    split = labeled_split(data.train_labels, num_labels, data.num_classes, seed)
    labeled_x = normalize(data.train_images[split], mean, std)
    labeled_y = data.train_labels[split]
    unlabeled = data.train_images[~torch.isin(torch.arange(len(data.train_images)), split)]
    model = SmallCNN(data.num_classes, data.shape[0], data.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    # At least one step: an image folder may hold fewer unlabelled images than one batch.
    steps_per_epoch = max(len(unlabeled) // unlabeled_batch, 1)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(unlabeled))
        for i in range(steps_per_epoch):
            idx = torch.randint(len(labeled_x), (batch_size,))
            u = normalize(unlabeled[order[i * unlabeled_batch : (i + 1) * unlabeled_batch]], mean, std)
            logits = model(torch.cat([labeled_x[idx], u]))
            probs_u = torch.softmax(logits[batch_size:], dim=-1)
            target = algorithm.sharpen(probs_u.detach(), T)
            loss = F.cross_entropy(logits[:batch_size], labeled_y[idx]) + lambda_u * (probs_u - target).square().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    probs = predict(model, data.test_images, mean, std)
    accuracy = (probs.argmax(-1) == data.test_labels).float().mean().item()
    summary = dict(dataset=data.name, T=T, seed=seed, num_labels=num_labels, epochs=epochs,
                   steps=epochs * steps_per_epoch, lambda_u=lambda_u, test_accuracy=accuracy,
                   mean_confidence=probs.max(-1).values.mean().item(),
                   wall_seconds=round(time.perf_counter() - start, 1))
    return model, summary


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([torch.softmax(model(normalize(images[i : i + 2048], mean, std)), -1)
                      for i in range(0, len(images), 2048)])


def tsne_figure(data: ImageDataset, predictions: dict[float, torch.Tensor], path: Path, points: int = 2000) -> None:
    """One t-SNE map of test images (pixels), one panel per T: colour = predicted class, size ~ 1/confidence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(0)
    idx = rng.choice(len(data.test_images), min(points, len(data.test_images)), replace=False)
    pixels = data.test_images[idx].flatten(1).float().numpy() / 255
    # A small image folder's test split may hold fewer images than PCA's 50 components or t-SNE's perplexity 30.
    reduced = PCA(min(50, *pixels.shape), random_state=0).fit_transform(pixels)
    xy = TSNE(2, init="pca", perplexity=min(30.0, len(idx) - 1), random_state=0).fit_transform(reduced)
    fig, axes = plt.subplots(1, len(predictions), figsize=(7 * len(predictions), 6.5))
    for ax, (T, probs) in zip(np.atleast_1d(axes), predictions.items(), strict=True):
        confidence, predicted = probs[idx].max(-1)
        accuracy = (predicted == data.test_labels[idx]).float().mean().item()
        ax.scatter(xy[:, 0], xy[:, 1], c=predicted.numpy(), cmap="tab10", vmin=-0.5, vmax=9.5,
                   s=4 / confidence.numpy() ** 2, alpha=0.6, linewidths=0)
        ax.set_title(f"T = {T}: accuracy {100 * accuracy:.1f}%, mean confidence {confidence.mean():.2f}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{data.name} test images (t-SNE of pixels), coloured by predicted class; "
                 "larger marker = less confident")
    fig.tight_layout()
    runfolder.save_figure(fig, path, dpi=100)
    plt.close(fig)


def demo_table(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """Per temperature: accuracy mean, spread and values over the seeds, and the Markdown table of them."""
    temperatures = list(dict.fromkeys(r["T"] for r in runs))
    table = ["| data set | T | runs | test accuracy (%) | mean confidence |", "|---|---:|---:|---:|---:|"]
    results = {}
    for T in temperatures:
        acc = [r["test_accuracy"] for r in runs if r["T"] == T]
        conf = [r["mean_confidence"] for r in runs if r["T"] == T]
        spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
        results[str(T)] = dict(accuracy_mean=statistics.fmean(acc), accuracy_std=spread, accuracies=acc)
        dataset = next(r["dataset"] for r in runs if r["T"] == T)
        table.append(f"| {dataset} | {T} | {len(acc)} | {100 * statistics.fmean(acc):.2f} ± {100 * spread:.2f} | "
                     f"{statistics.fmean(conf):.3f} |")
    return results, "\n".join(table)


def sharpening_demo(data: ImageDataset, out: str | Path, seeds: tuple[int, ...] = (0, 1, 2),
                    temperatures: tuple[float, ...] = (1.0, 0.5), **kwargs: Any) -> dict[str, Any]:
    """Run the demo for every (T, seed); write runs.json, results.md and tsne.png under `out`."""
    out = runfolder.make_folder(out)
    runs, last_predictions = [], {}
    mean, std = data.channel_stats()
    for T in temperatures:
        for seed in seeds:
            model, summary = train_pseudo_label(data, T, seed, **kwargs)
            runs.append(summary)
            print(f"T={T} seed {seed}: test accuracy {100 * summary['test_accuracy']:.2f}% "
                  f"({summary['wall_seconds']:.0f} s)", flush=True)
            if seed == seeds[0]:
                last_predictions[T] = predict(model, data.test_images, mean, std)
    results, table = demo_table(runs)
    runfolder.write_json(out / runfolder.DEMO_RUNS, dict(runs=runs, results=results))
    runfolder.write_text(out / "results.md", table + "\n")
    tsne_figure(data, last_predictions, out / "tsne.png")
    return results
