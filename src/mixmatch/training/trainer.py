"""The trainer: model, EMA, optimiser, schedule and data on one device, the same for every method.

Each step it draws a batch and asks the run's method (mixmatch.methods) for the loss; the rest is the loop:
backward, the optimiser with decoupled weight decay, the schedule, the EMA, evaluation, logs and checkpoints.
`train` runs a config to the end, fitting its steps to a time budget or a cap first where it has one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import runfolder
from ..augment import Augmenter
from ..config import ConfigError, TrainConfig
from ..data.dataset import ImageDataset
from ..data.splits import choose_split, data_digest, load_for_config, read_split, recorded_data_digest, save_split
from ..ema import EMA
from ..methods import METHODS, Batch, Losses, Method, build_method
from ..models import backbones, build_model
from . import budget, checkpoint
from .distributed import ProcessGroup
from .distributed import stop as stop_process_group
from .metrics import MetricsLog, median_of_last, require_tensorboard
from .runtime import (
    CompiledOrEager,
    compile_mode,
    pick_device,
    pick_threads,
    rng_state,
    seed_everything,
    set_rng_state,
    usable_cpus,
    use_bf16,
    use_channels_last,
    use_compile,
    use_deterministic_algorithms,
)

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite."""


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped the run after it saved a checkpoint; the message says where."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    def __reduce__(self) -> tuple:  # whole across processes (a grid's worker raises it in the parent)
        return type(self), (str(self), self.signum)


def decayed_parameters(model: nn.Module) -> list[Tensor]:
    """Conv and linear weights: the official code decays 'kernel' variables only, not biases or BatchNorm."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def cosine_factor(steps: int) -> Callable[[int], float]:
    """lr multiplier at step k: cos(7 pi k / (16 steps)), from 1 down to 0.2 at the end (FixMatch, Sohn et al.
    2020, arXiv:2001.07685 section 2.3 / appendix B.1): the late steps take small moves, so the weights settle
    where they are instead of drifting after guesses that have started to agree with themselves."""
    return lambda k: math.cos(7 * math.pi * min(k, steps) / (16 * steps))


def schedule_factor(schedule: str, steps: int, warmup_steps: int) -> Callable[[int], float] | None:
    """lr multiplier at step k of a constant or cosine schedule, warmed up linearly over the first `warmup_steps`
    ((k + 1) / warmup_steps, as timm's and fastai's warm-ups start above 0); None for a constant rate without
    warm-up, which needs no scheduler."""
    base = cosine_factor(steps) if schedule == "cosine" else None
    if not warmup_steps:
        return base
    return lambda k: min(1.0, (k + 1) / warmup_steps) * (base(k) if base is not None else 1.0)


def parameter_groups(model: nn.Module, lr: float, backbone_lr_scale: float) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: one at `lr`, or, for a backbone whose layers learn at `backbone_lr_scale`
    of it, those layers at the scaled rate and its new classifier (`backbones.classifier`) at `lr`."""
    if backbone_lr_scale == 1:
        return [{"params": list(model.parameters()), "lr": lr}]
    head = {id(p) for p in backbones.classifier(model).parameters()}
    return [
        {"params": [p for p in model.parameters() if id(p) not in head], "lr": lr * backbone_lr_scale},
        {"params": [p for p in model.parameters() if id(p) in head], "lr": lr},
    ]


class Trainer:
    """Holds everything that changes during a run; `fit()` runs it and writes the run folder. It is the Context
    that a method's `batch_loss` is lent (model, forward, teacher, augment, num_classes, step, autocast).

    Two parts can be replaced, for comparisons such as bench/step.py's reference path:
    `augment(default)` is given the default batched Augmenter (its mean, std, pad and flip) and returns
    the augmentation to use instead (anything with the Augmenter's __call__, views, batch_and_views and
    plain);
    `optimizer(parameters, config)` builds the optimiser instead of the fused Adam or SGD of the config.
    """

    def __init__(
        self,
        config: TrainConfig,
        dataset: ImageDataset | None = None,
        *,
        augment: Callable[[Augmenter], Any] | None = None,
        optimizer: Callable[[list[nn.Parameter], TrainConfig], torch.optim.Optimizer] | None = None,
    ):
        self.config = cfg = config.resolved()
        cfg.validate()
        if budget.needs_budget(cfg):
            raise ConfigError("steps", "steps must be set (mixmatch.train.train fits them to a time budget)")
        if cfg.tensorboard:
            require_tensorboard()
        seed_everything(cfg.seed)
        self._setup_runtime()
        self._setup_data(dataset)
        if augment is not None:
            self.augment = augment(self.augment)
        self._setup_model()
        self._record_runtime()
        self._setup_optimiser(optimizer)
        self.method = self._build_method()
        self._setup_progress()
        if self.dist.enabled:
            # The same initial weights on every process (seeded above), but different batches.
            seed_everything(cfg.seed + self.dist.rank)

    def _build_method(self) -> Method:
        """The run's method (mixmatch.methods), on the labelled subset as it stands."""
        if METHODS[self.config.method].needs_teacher and self.ema is None:
            raise ConfigError(
                "ema_decay", f"{self.config.method}'s teacher is the EMA of the weights: ema_decay must be above 0"
            )
        return build_method(
            self.config, labeled_y=self.labeled_y, num_classes=self.data.num_classes, average=self.dist.average
        )

    def _setup_runtime(self) -> None:
        """This process's share of a torchrun launch, its device, precision and memory format."""
        cfg = self.config
        self.dist = ProcessGroup.from_env()
        self.device = self.dist.device(pick_device(cfg.device))
        if cfg.batch_size % self.dist.world_size:
            raise ValueError(f"--batch-size {cfg.batch_size} does not split over {self.dist.world_size} processes")
        if cfg.sync_bn and self.device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm does not run on CPUs)")
        if cfg.deterministic:
            use_deterministic_algorithms(self.device)
        self.owns_process_group = self.dist.start(self.device)
        # Each process draws its share of the global batch.
        self.local_batch = cfg.batch_size // self.dist.world_size
        self.bf16 = use_bf16(cfg.amp, self.device)
        self.channels_last = use_channels_last(cfg.channels_last, self.bf16, self.device)

    def _setup_data(self, dataset: ImageDataset | None) -> None:
        """The data set, its labelled split and unlabelled pool on the device, and their augmentation."""
        cfg = self.config
        self.data = dataset if dataset is not None else load_for_config(cfg)
        self.split = choose_split(self.data, cfg.num_labels, cfg.seed, cfg.labeled_split)
        self._label(self.split)
        # As in the official code, every training image (labelled ones included) is also unlabelled data.
        images = self.data.train_images
        pool = images if self.data.extra_unlabeled is None else torch.cat([images, self.data.extra_unlabeled])
        self.unlabeled_x = pool.to(self.device) if METHODS[cfg.method].uses_unlabeled else None

        mean, std = self.data.channel_stats()
        if cfg.fine_tunes:  # pretrained weights expect the normalisation they were trained with
            channels = self.data.shape[0]
            mean, std = (torch.tensor(v) for v in backbones.spec(cfg.arch).for_channels(channels))
        self.augment = Augmenter(
            mean.to(self.device), std.to(self.device), cfg.pad, cfg.flip, self.channels_last, family=cfg.augment
        )

    def _label(self, split: Tensor) -> None:
        """Train on the labelled subset `split` (indices into the training images; all of them fully supervised)."""
        self.split = split
        images, labels = self.data.train_images, self.data.train_labels
        if not METHODS[self.config.method].all_labels:
            images, labels = images[split], labels[split]
        self.labeled_x, self.labeled_y = images.to(self.device), labels.to(self.device)

    def _setup_model(self) -> None:
        """The model (memory format, SyncBatchNorm), its EMA, and the forward pass (DDP, torch.compile)."""
        cfg = self.config
        channels, size = self.data.shape[0], self.data.shape[1]
        self.model = build_model(
            cfg.arch, self.data.num_classes, channels, size, pretrained=cfg.pretrained, weights_file=cfg.weights
        ).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.sync_bn and self.dist.enabled:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.ema = EMA(self.model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None
        wrapped = self.dist.wrap(self.model)
        self.torch_compile = use_compile(cfg.compile, cfg.steps)  # whether the forward pass is compiled
        mode = compile_mode(self.device, self.dist.enabled)
        self.forward = CompiledOrEager(wrapped, mode) if self.torch_compile else wrapped

    def _record_runtime(self) -> None:
        """Replace each `auto` of the runtime in the config by what it resolved to here (device, precision, memory
        format, compiling, CPU threads), so config.json records it and --resume computes as the run began."""
        cfg = self.config
        self.config = dataclasses.replace(
            cfg,
            device=self.device.type if cfg.device == "auto" else cfg.device,
            amp="bf16" if self.bf16 else "off",
            channels_last="on" if self.channels_last else "off",
            compile="on" if self.torch_compile else "off",
            threads=torch.get_num_threads(),
        )

    def _setup_optimiser(
        self, build: Callable[[list[nn.Parameter], TrainConfig], torch.optim.Optimizer] | None
    ) -> None:
        """The optimiser, the learning-rate schedule and the weights that decay."""
        cfg = self.config
        # One fused kernel for all parameters instead of a loop over them (PyTorch's CPU default).
        fused = self.device.type in ("cpu", "cuda")
        groups = parameter_groups(self.model, cfg.lr, cfg.backbone_lr_scale)
        if build is not None:
            self.optimizer: torch.optim.Optimizer = build(list(self.model.parameters()), cfg)
        elif cfg.optimizer == "adam":
            self.optimizer = torch.optim.Adam(groups, lr=cfg.lr, fused=fused)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True, fused=fused)
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        factor = schedule_factor(cfg.schedule, cfg.steps, cfg.warmup_steps)
        if cfg.schedule == "onecycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=[group["lr"] for group in self.optimizer.param_groups], total_steps=cfg.steps
            )
        elif factor is not None:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        # Decoupled decay at each group's own rate: w *= 1 - wd * lr.
        decayed = {id(w) for w in decayed_parameters(self.model)}
        self.decayed = [[p for p in group["params"] if id(p) in decayed] for group in self.optimizer.param_groups]

    def _setup_progress(self) -> None:
        """Where the run stands: step 0 of a fresh run (resume() moves it on)."""
        self.step = 0
        self.pending: list[Tensor] = []  # (3,) losses of the steps since the last metrics record
        self.wall_seconds = 0.0  # of training before this process, for a resumed run
        self.last_checkpoint: Path | None = None
        self.resumed = False

    # ---- one step: the Context a method's batch_loss is lent ------------------------------------------

    def autocast(self) -> torch.autocast:
        """The run's precision: bf16 autocast where it is on, else a no-op."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    @property
    def teacher(self) -> nn.Module | None:
        """The EMA of the weights (the evaluated model; the teacher of Mean Teacher and ICT), None without one."""
        return self.ema.module if self.ema is not None else None

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def draw_batch(self) -> Batch:
        """This process's share of a step's batch, drawn with replacement: B labelled images and their classes, and
        the method's unlabelled ratio times B unlabelled images where it uses them."""
        idx = torch.randint(self.labeled_x.shape[0], (self.local_batch,), device=self.device)
        batch = Batch(self.labeled_x[idx], self.labeled_y[idx])
        if self.unlabeled_x is not None:
            size = self.method.unlabeled_ratio * self.local_batch
            batch.u = self.unlabeled_x[torch.randint(self.unlabeled_x.shape[0], (size,), device=self.device)]
        return batch

    def step_loss(self) -> Losses:
        """The losses of a batch drawn now, as the next training step computes them (with the graph)."""
        return self.method.batch_loss(self, self.draw_batch())

    def train_step(self) -> Tensor:
        """One optimisation step; returns the detached (total, L_X, L_U) as a (3,) tensor, without syncing."""
        self.model.train()
        if isinstance(self.forward, CompiledOrEager):
            self.forward.step_begin()
        loss, loss_x, loss_u = self.step_loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.config.weight_decay:
            with torch.no_grad():
                for group, decayed in zip(self.optimizer.param_groups, self.decayed, strict=True):
                    torch._foreach_mul_(decayed, 1 - self.config.weight_decay * group["lr"])
        if self.scheduler is not None:
            self.scheduler.step()
        # Under torchrun the weights agree after the averaged gradients; this makes BatchNorm's running
        # statistics agree too, so the EMA model is the same on every process.
        self.dist.average_buffers(self.model)
        if self.ema is not None:
            self.ema.update(self.model)
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
            with self.autocast():
                pred = model(x).argmax(-1)
            correct += (pred == labels[start : start + batch].to(self.device)).sum()
        return correct.item() / images.shape[0]

    # ---- checkpoints ------------------------------------------------------------------------------

    def model_meta(self) -> dict[str, Any]:
        """What rebuilding the model and preparing its input takes (saved in checkpoints and exports)."""
        channels, size = self.data.shape[0], self.data.shape[1]
        return dict(
            arch=self.config.arch,
            num_classes=self.data.num_classes,
            in_channels=channels,
            image_size=size,
            classes=list(self.data.classes),
            mean=self.augment.mean.tolist(),
            std=self.augment.std.tolist(),
            dataset=self.config.dataset,
            weights_source=self._weights_source(),
        )

    def _weights_source(self) -> str:
        """Where the model's starting weights came from, for model.json: random, pretrained:ARCH, or the file."""
        if self.config.weights:
            return str(Path(self.config.weights).resolve())
        return f"pretrained:{self.config.arch}" if self.config.pretrained else "random"

    def state_dict(self) -> dict[str, Any]:
        """Everything that changes during a run, for an exact resume. Under torchrun every process calls it."""
        pending = torch.stack(self.pending) if self.pending else torch.zeros(0, 3, device=self.device)
        return dict(
            meta=self.model_meta(),
            step=self.step,
            model=self.model.state_dict(),
            ema=None if self.ema is None else self.ema.state_dict(),
            method=self.method.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=None if self.scheduler is None else self.scheduler.state_dict(),
            rng=self.dist.gather(rng_state()),  # one per process: each draws its own batches
            pending=self.dist.average(pending).cpu(),
            wall_seconds=self.wall_seconds,
        )

    def load_state_dict(self, state: dict[str, Any], source: str | Path = "checkpoint") -> None:
        """Restore a state_dict(); CheckpointError if it is of another model, class count or image shape."""
        checkpoint.check_compatible(state.get("meta", {}), self.model_meta(), source)
        try:
            self.model.load_state_dict(state["model"])
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, RuntimeError, TypeError, ValueError) as error:
            reason = " ".join(str(error).split())[:300]
            raise checkpoint.CheckpointError(f"checkpoint {source} does not fit this run: {reason}") from None
        # Checkpoints written before methods carried their own state held MixMatch's at the top.
        self.method.load_state_dict(state.get("method", {"guess_marginal": state.get("guess_marginal")}))
        self.step = state["step"]
        self.wall_seconds = state["wall_seconds"]
        self.pending = list(state["pending"].to(self.device).unbind(0))
        rng = state["rng"]
        if len(rng) == self.dist.world_size:
            set_rng_state(rng[self.dist.rank])
        else:
            warnings.warn(
                f"{source} was written by {len(rng)} processes, this run has {self.dist.world_size}: "
                "the run continues with fresh random streams, so not exactly as it would have",
                stacklevel=2,
            )
            seed_everything(self.config.seed + self.step + self.dist.rank)

    def resume(self) -> Path:
        """Continue from the newest checkpoint of the run folder (config.out) that loads; returns its path.

        Newer checkpoints that are damaged are skipped with a warning (checkpoint.load_newest).
        """
        path, state = checkpoint.load_newest(self.config.out)
        self._relabel_as_saved()
        self.load_state_dict(state, path)
        self.last_checkpoint, self.resumed = path, True
        return path

    def _relabel_as_saved(self) -> None:
        """Label the images the run folder's split.json names, not a subset drawn again from data that may have
        changed since (DataError where one is gone or changed); warn where the rest of the data changed."""
        saved = Path(self.config.out) / runfolder.SPLIT
        if not saved.is_file():
            return
        split = read_split(saved, self.data, what=f"the run's {saved}")
        if not torch.equal(split, self.split):
            self._label(split)
            self.method = self._build_method()  # on these labels: distribution alignment's target is theirs
        recorded = recorded_data_digest(saved)
        if recorded is not None and recorded != data_digest(self.data) and self.dist.is_main:
            log.warning(
                f"mixmatch: warning: the data of {self.config.out} changed since the run started (images added, "
                "removed or changed): it goes on with the labelled images of its split.json, but its unlabelled and "
                "test images are today's, so it will not end as the uninterrupted run would have"
            )

    def save_checkpoint(self) -> Path:
        """Checkpoint into RUN_DIR/checkpoints (rank 0 writes); refuses weights or losses that are not finite."""
        tensors = [*self.model.parameters(), *self.model.buffers(), *self.pending]
        if self.ema is not None:
            tensors += [*self.ema.parameters(), *self.ema.buffers()]
        if not checkpoint.all_finite(tensors):
            raise TrainingDiverged(
                f"weights or loss not finite at step {self.step}, no checkpoint saved; {self._last_checkpoint_text()}"
            )
        state = self.state_dict()
        path = runfolder.checkpoint_path(self.config.out, self.step)
        if self.dist.is_main:
            checkpoint.save_checkpoint(state, path, self.config.keep_checkpoints)
        self.last_checkpoint = path
        return path

    def _last_checkpoint_text(self) -> str:
        if self.last_checkpoint is None:
            return "no checkpoint was saved before"
        return f"the last checkpoint is {self.last_checkpoint}"

    # ---- the run ----------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train from self.step to config.steps, evaluating, logging and checkpointing; writes the summary.

        A NaN loss raises TrainingDiverged. SIGINT or SIGTERM save a checkpoint at the end of the current
        step (under torchrun, at the next log interval, where the processes agree to stop) and raise
        TrainingInterrupted. A file that cannot be written (read-only, no space) raises WriteError, which says
        which checkpoints are kept.
        """
        try:
            return self._fit()
        except runfolder.WriteError as error:  # a read-only or full disk: say where the run stands and what it kept
            raise runfolder.WriteError(f"{error}; {self._stopped_text()}") from None

    def _stopped_text(self) -> str:
        out = self.config.out
        kept = [int(path.stem.removeprefix("step-")) for path in runfolder.checkpoints(out)]
        if not kept:
            return f"the run stopped at step {self.step} with no checkpoint"
        return (
            f"the run stopped at step {self.step}; its checkpoints at step{'' if len(kept) == 1 else 's'} "
            f"{', '.join(map(str, kept))} are kept: once it can be written, continue with mixmatch train --resume {out}"
        )

    def _fit(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        cfg = self.config
        out = Path(cfg.out)
        main = self.dist.is_main
        if main:
            runfolder.make_folder(out)
        if main and not self.resumed:
            checkpoint.remove_checkpoints(out)
            runfolder.write_json(out / runfolder.CONFIG, cfg.to_dict())
            save_split(out / runfolder.SPLIT, cfg.dataset, self.split, cfg.seed, self.data)
        metrics = MetricsLog(out if main else None, self.step if self.resumed else None, cfg.tensorboard)
        start = time.perf_counter() - self.wall_seconds
        accuracy = float("nan")
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            # None: tqdm's own test, no bar where stderr is not a terminal (a redirected log keeps its lines).
            disable=True if not (cfg.progress and main) else None,
            desc=f"{cfg.method} {cfg.dataset}",
            leave=False,
        )
        try:
            with checkpoint.StopSignals() as signals:
                while self.step < cfg.steps:
                    self.pending.append(self.train_step())
                    bar.update()
                    last = self.step == cfg.steps
                    logged = self.step % cfg.log_every == 0 or last
                    if logged:
                        self._log(metrics, bar, accuracy)
                    if self.step % cfg.eval_every == 0 or last:
                        accuracy = self.evaluate()
                        seconds = round(time.perf_counter() - start, 2)
                        metrics.write(dict(step=self.step, test_accuracy=accuracy, wall_seconds=seconds))
                        metrics.flush()
                        bar.set_postfix(acc=f"{accuracy:.3f}")
                    signum = self._stop_signal(signals, logged)
                    if signum or last or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0):
                        self.wall_seconds = time.perf_counter() - start
                        metrics.flush()
                        path = self.save_checkpoint()
                    if signum:
                        raise TrainingInterrupted(
                            f"stopped by {signal.Signals(signum).name} at step {self.step}; checkpoint saved to "
                            f"{path}; continue with: mixmatch train --resume {out}",
                            signum,
                        )
        finally:
            bar.close()
            metrics.close()
        if math.isnan(accuracy):  # resumed a run that had already finished
            finished = out / runfolder.SUMMARY
            if finished.is_file():
                if main:
                    log.warning(f"mixmatch: {out} had already finished its {cfg.steps} steps; its summary stands")
                return json.loads(finished.read_text())
            if main:  # stopped between its last checkpoint and its summary
                log.warning(f"mixmatch: {out} had already finished its {cfg.steps} steps; evaluated it again")
            accuracy = self.evaluate()
        summary = dict(
            dataset=cfg.dataset,
            method=cfg.method,
            num_labels=int(self.labeled_y.shape[0]),  # all of them for fully-supervised
            seed=cfg.seed,
            steps=self.step,
            arch=cfg.arch,
            test_accuracy=accuracy,
            evaluated_on=self.data.evaluation,
            # The paper's statistic: the median over the last 20 evaluations (rank 0's record of them).
            median_test_accuracy_last_20=median_of_last(metrics.accuracies),
            wall_seconds=round(time.perf_counter() - start, 2),
            device=str(self.device),
            bf16=self.bf16,
            channels_last=self.channels_last,
            threads=torch.get_num_threads() if self.device.type == "cpu" else None,
            torch=torch.__version__,
        )
        if main:
            runfolder.write_json(out / runfolder.SUMMARY, summary)
        return summary

    def _log(self, metrics: MetricsLog, bar: Any, accuracy: float) -> None:
        """Write the mean losses since the last record; the loop's only host sync, once per log interval."""
        mean = self.dist.average(torch.stack(self.pending).mean(0)).tolist()
        self.pending.clear()
        if not all(math.isfinite(v) for v in mean):
            raise TrainingDiverged(
                f"loss became {mean[0]} at step {self.step}; {self._last_checkpoint_text()}; lower --lr or --lambda-u"
            )
        metrics.write(
            dict(
                step=self.step,
                loss=mean[0],
                loss_x=mean[1],
                loss_u=mean[2],
                lambda_u=self.method.lambda_u_at(self.step),
                lr=max(group["lr"] for group in self.optimizer.param_groups),  # --lr's: the classifier's group
            )
        )
        bar.set_postfix(loss=f"{mean[0]:.3f}", acc=f"{accuracy:.3f}")

    def _stop_signal(self, signals: checkpoint.StopSignals, logged: bool) -> int:
        """The signal to stop for, or 0. Processes of a torchrun launch must stop at the same step, and
        agreeing costs a host sync, so they only compare notes at log intervals."""
        if not self.dist.enabled:
            return signals.received
        return self.dist.max_int(signals.received, self.device) if logged else 0


# Test images an evaluation is timed on.
EVAL_PROBE = 2048


def time_run(cfg: TrainConfig, data: ImageDataset, steps: int = 8) -> tuple[float, float]:
    """Seconds of one training step of `cfg` on `data` (the median of `steps` after two warm-up steps) and of
    one evaluation of its test split (timed on up to EVAL_PROBE images, scaled to all of them)."""
    probe = dataclasses.replace(cfg, steps=1_000_000, minutes=None, compile="off", progress=False, ema_decay=0.0)
    trainer = Trainer(probe, data)
    for _ in range(2):
        trainer.train_step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        times.append(time.perf_counter() - start)
    images, labels = trainer.data.test_images[:EVAL_PROBE], trainer.data.test_labels[:EVAL_PROBE]
    start = time.perf_counter()
    trainer.evaluate(images, labels)  # reads the count back: synchronised
    evaluation = (time.perf_counter() - start) * len(trainer.data.test_images) / max(1, len(images))
    return sorted(times)[len(times) // 2], evaluation


def fit_to_machine(cfg: TrainConfig, data: ImageDataset) -> tuple[TrainConfig, str | None]:
    """A resolved config whose length is a time budget (budget.plan) or a capped step count (budget.cap), with
    the steps that fit, from its step and evaluation timed here on `data`; and what was picked and why, in one
    paragraph (None where the steps fit the cap as they are)."""
    seconds = time_run(cfg, data)
    return budget.plan(cfg, *seconds) if budget.needs_budget(cfg) else budget.cap(cfg, *seconds)


def train(
    config: TrainConfig, dataset: ImageDataset | None = None, resume: bool = False, fitted: bool = False
) -> dict[str, Any]:
    """Build a Trainer for `config` and run it to the end; returns the summary.

    With `resume`, continue from the newest checkpoint in config.out instead of starting afresh. A config
    without steps (--dataset folder's preset) or with `minutes` is first fitted to its time budget
    (mixmatch.budget), which prints what it picked; one with `max_minutes` is capped. `fitted` says that was
    done already (a compare grid fits all its runs once), so the steps stay as given.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(pick_threads(config.threads))
    trainer = None
    finished = False
    main = ProcessGroup.from_env().is_main
    cpus = len(usable_cpus())
    if main and config.threads is not None and config.threads > cpus:
        print(f"mixmatch: warning: --threads {config.threads} on this machine's {cpus} CPU{'' if cpus == 1 else 's'}: "
              "the threads will wait for each other (slower; the results are those of that many threads)",
              file=sys.stderr)
    try:
        resolved = config.resolved()
        if main:  # before the data loads and the budget is timed: a folder that cannot be written is one line now
            runfolder.writable(resolved.out, "run folder")
        # A run without steps fits a time budget; a capped one (not under torchrun, where each process would
        # time its own step and could pick other steps; plan refuses torchrun) fits its cap. Either way this is
        # the only process, and it prints what it picked.
        budgeted = budget.needs_budget(resolved)
        capped = resolved.max_minutes is not None and not ProcessGroup.from_env().enabled
        if not (resume or fitted) and (budgeted or capped):
            dataset = dataset if dataset is not None else load_for_config(resolved.validate())
            config, why = fit_to_machine(resolved, dataset)
            if why is not None:
                print(f"mixmatch: {why}", file=sys.stderr)
        trainer = Trainer(config, dataset)
        cfg = trainer.config
        ramps = "rampup_steps" in METHODS[cfg.method].reads and cfg.rampup_steps > cfg.steps
        if not resume and ramps and main:
            print(
                f"mixmatch: warning: lambda_u ramps up over {cfg.rampup_steps} steps but the run has {cfg.steps}: "
                f"it ends at {cfg.lambda_u * cfg.steps / cfg.rampup_steps:g} of {cfg.lambda_u:g} (set --rampup-steps)",
                file=sys.stderr,
            )
        if resume:
            path = trainer.resume()
            if main:
                count = torch.get_num_threads()
                print(f"mixmatch: continuing {cfg.out} from step {trainer.step} of {cfg.steps} ({path.name}, "
                      f"{cfg.device}, {count} CPU thread{'' if count == 1 else 's'})", file=sys.stderr)
        summary = trainer.fit()
        finished = True
        return summary
    finally:
        torch.set_num_threads(threads)
        if trainer is not None and trainer.owns_process_group:
            stop_process_group(finished)
