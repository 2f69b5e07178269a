"""The trainer: model, EMA, optimiser, schedule and data on one device, for three methods.

mixmatch          the paper's Algorithm 1 (label guessing, sharpening, MixUp, L_X + lambda_u L_U)
supervised        the same model and augmentation on the labelled subset only
fully-supervised  the same on every training label
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from . import algorithm as A
from .augment import Augmenter
from .config import TrainConfig, augmentation_of
from .data import ImageDataset, labeled_split, load_dataset, save_split
from .models import build_model


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for, but CUDA is not available here")
    return device


def cpu_has_bf16() -> bool:
    """True where the CPU has bf16 matrix units (AVX512-BF16 or AMX), which make bf16 autocast pay."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(amp: str, device: torch.device) -> bool:
    if amp == "off":
        return False
    if amp == "bf16":
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def decayed_parameters(model: nn.Module) -> list[Tensor]:
    """Conv and linear weights: the official code decays 'kernel' variables only, not biases or BatchNorm."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


class Trainer:
    """Holds everything that changes during a run; `fit()` runs it and writes the run folder."""

    def __init__(self, config: TrainConfig, dataset: ImageDataset | None = None):
        self.config = cfg = config.resolved()
        if cfg.method not in ("mixmatch", "supervised", "fully-supervised"):
            raise ValueError(f"unknown method {cfg.method!r}")
        for name in ("steps", "batch_size", "k", "eval_every", "log_every"):
            if getattr(cfg, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
        seed_everything(cfg.seed)
        self.device = pick_device(cfg.device)
        self.bf16 = use_bf16(cfg.amp, self.device)
        self.channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and self.bf16)

        self.data = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
        self.split = labeled_split(self.data.train_labels, cfg.num_labels, self.data.num_classes, cfg.seed)
        images, labels = self.data.train_images, self.data.train_labels
        if cfg.method == "fully-supervised":
            self.labeled_x, self.labeled_y = images, labels
        else:
            self.labeled_x, self.labeled_y = images[self.split], labels[self.split]
        # As in the official code, every training image (labelled ones included) is also unlabelled data.
        pool = images if self.data.extra_unlabeled is None else torch.cat([images, self.data.extra_unlabeled])
        self.labeled_x, self.labeled_y = self.labeled_x.to(self.device), self.labeled_y.to(self.device)
        self.unlabeled_x = pool.to(self.device) if cfg.method == "mixmatch" else None

        mean, std = self.data.channel_stats()
        pad, flip = augmentation_of(cfg.dataset)
        self.augment = Augmenter(mean.to(self.device), std.to(self.device), pad, flip, self.channels_last)

        channels, size = self.data.shape[0], self.data.shape[1]
        self.model = build_model(cfg.arch, self.data.num_classes, channels, size).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
            if cfg.ema_decay > 0
            else None
        )
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        if cfg.optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        else:
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True)
        self.scheduler = (
            torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=cfg.lr, total_steps=cfg.steps)
            if cfg.schedule == "onecycle"
            else None
        )
        self.decayed = decayed_parameters(self.model)
        self.step = 0

    # ---- one step -------------------------------------------------------------------------------

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _batch(self, images: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        idx = torch.randint(images.shape[0], (self.config.batch_size,), device=self.device)
        return images[idx], (labels[idx] if labels is not None else None)

    def lambda_u(self) -> float:
        return self.config.lambda_u * A.linear_rampup(self.step, self.config.rampup_steps)

    def mixmatch_loss(self) -> tuple[Tensor, Tensor, Tensor]:
        """(total, L_X, L_U) of one MixMatch batch, with the graph for backward."""
        cfg = self.config
        xb, yb = self._batch(self.labeled_x, self.labeled_y)
        ub, _ = self._batch(self.unlabeled_x)
        x = self.augment(xb)
        u_views = self.augment.views(ub, cfg.k)
        p = F.one_hot(yb, self.data.num_classes).float()
        with self._autocast(), A.frozen_batchnorm_stats(self.model):
            q = A.guess_labels(self.forward, u_views, cfg.temperature)
        x_mix, p_mix, u_mix, q_mix = self._mix(x, p, u_views, q)
        with self._autocast():
            logits_x, logits_u = self._forward_mixed(x_mix, u_mix)
        return A.mixmatch_loss(logits_x, p_mix, logits_u, q_mix, self.lambda_u())

    def _mix(self, x: Tensor, p: Tensor, u_views: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The paper's mixing, or one of the ablations of its table 4 (what MixUp is applied to)."""
        alpha, mode = self.config.alpha, self.config.mix
        if mode == "all":
            return A.mixmatch(x, p, u_views, q, alpha)
        u, qk = u_views.flatten(0, 1), q.repeat(u_views.shape[0], 1)
        mix_x, mix_u = mode in ("labeled", "separate"), mode in ("unlabeled", "separate")
        if mix_x:
            perm = torch.randperm(x.shape[0], device=x.device)
            x, p = A.mixup(x, p, x[perm], p[perm], alpha)
        if mix_u:
            perm = torch.randperm(u.shape[0], device=u.device)
            u, qk = A.mixup(u, qk, u[perm], qk[perm], alpha)
        return x, p, u, qk

    def _forward_mixed(self, x_mix: Tensor, u_mix: Tensor) -> tuple[Tensor, Tensor]:
        """Logits of X' and U'.

        concat: one pass over all of X' and U'. Every example of X' and U' is mixed with a partner drawn
        from the whole pool, so the batch statistics of the full batch are those of the mixture the
        official code's interleave aims at; the running statistics come from the full batch instead of one
        third of it. One pass is faster (results/ has the accuracy of both modes).
        interleave: the official code's three passes, each a share of every part, with running
        statistics updated by the first pass only.
        """
        n_x = x_mix.shape[0]
        if self.config.bn_mode == "concat":
            logits = self.forward(torch.cat([x_mix, u_mix]))
            return logits[:n_x], logits[n_x:]
        batches = A.interleave([x_mix, *u_mix.split(n_x)], n_x)
        logits = [self.forward(batches[0])]
        with A.frozen_batchnorm_stats(self.model):
            logits += [self.forward(b) for b in batches[1:]]
        logits = A.interleave(logits, n_x)
        return logits[0], torch.cat(logits[1:])

    def supervised_loss(self) -> tuple[Tensor, Tensor, Tensor]:
        xb, yb = self._batch(self.labeled_x, self.labeled_y)
        with self._autocast():
            logits = self.forward(self.augment(xb))
        loss = F.cross_entropy(logits.float(), yb)
        return loss, loss.detach(), torch.zeros((), device=self.device)

    def train_step(self) -> Tensor:
        """One optimisation step; returns the detached (total, L_X, L_U) as a (3,) tensor, without syncing."""
        self.model.train()
        loss, loss_x, loss_u = self.mixmatch_loss() if self.config.method == "mixmatch" else self.supervised_loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        lr = self.optimizer.param_groups[0]["lr"]
        if self.config.weight_decay:
            with torch.no_grad():
                torch._foreach_mul_(self.decayed, 1 - self.config.weight_decay * lr)
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        return torch.stack([loss.detach(), loss_x.detach(), loss_u.detach()])

    # ---- evaluation -----------------------------------------------------------------------------

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    @torch.no_grad()
    def evaluate(self, images: Tensor | None = None, labels: Tensor | None = None, batch: int = 1024) -> float:
        """Accuracy in [0, 1] of the evaluated (EMA) model on the test split, or on the given images."""
        images = self.data.test_images if images is None else images
        labels = self.data.test_labels if labels is None else labels
        model = self.eval_model
        model.eval()
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for start in range(0, images.shape[0], batch):
            x = self.augment.plain(images[start : start + batch].to(self.device))
            with self._autocast():
                pred = model(x).argmax(-1)
            correct += (pred == labels[start : start + batch].to(self.device)).sum()
        return correct.item() / images.shape[0]

    # ---- the run ----------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train for config.steps, evaluating and logging; writes and returns the run's summary."""
        from tqdm.auto import tqdm

        cfg = self.config
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        save_split(out / "split.json", cfg.dataset, self.split, cfg.seed)
        metrics = (out / "metrics.jsonl").open("w")
        losses: list[Tensor] = []
        start = time.perf_counter()
        train_seconds = 0.0
        accuracy = float("nan")
        bar = tqdm(total=cfg.steps, disable=not cfg.progress, desc=f"{cfg.method} {cfg.dataset}", leave=False)
        try:
            while self.step < cfg.steps:
                losses.append(self.train_step())
                bar.update()
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    # The only host sync of the loop: once per log interval, not per step.
                    mean = torch.stack(losses).mean(0).tolist()
                    losses.clear()
                    if not all(math.isfinite(v) for v in mean):
                        raise TrainingDiverged(f"loss became {mean[0]} at step {self.step}; lower --lr or --lambda-u")
                    record = dict(
                        step=self.step,
                        loss=mean[0],
                        loss_x=mean[1],
                        loss_u=mean[2],
                        lambda_u=self.lambda_u() if cfg.method == "mixmatch" else 0.0,
                        lr=self.optimizer.param_groups[0]["lr"],
                    )
                    metrics.write(json.dumps(record) + "\n")
                    bar.set_postfix(loss=f"{mean[0]:.3f}", acc=f"{accuracy:.3f}")
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    train_seconds = time.perf_counter() - start
                    accuracy = self.evaluate()
                    metrics.write(
                        json.dumps(dict(step=self.step, test_accuracy=accuracy, wall_seconds=round(train_seconds, 2)))
                        + "\n"
                    )
                    metrics.flush()
                    bar.set_postfix(acc=f"{accuracy:.3f}")
        finally:
            bar.close()
            metrics.close()
        summary = dict(
            dataset=cfg.dataset,
            method=cfg.method,
            num_labels=int(self.labeled_y.shape[0]),  # all of them for fully-supervised
            seed=cfg.seed,
            steps=self.step,
            arch=cfg.arch,
            test_accuracy=accuracy,
            wall_seconds=round(time.perf_counter() - start, 2),
            device=str(self.device),
            bf16=self.bf16,
            torch=torch.__version__,
        )
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def train(config: TrainConfig, dataset: ImageDataset | None = None) -> dict[str, Any]:
    """Build a Trainer for `config` and run it to the end; returns the summary."""
    return Trainer(config, dataset).fit()
