"""How long a run trains when a time budget decides: measure the step, pick the schedule, say why.

`--dataset folder` has no step count of its own: the paper's 1,048,576 steps of WRN-28-2 are days on a
CPU (6.5 on this project's fastest 2-core machine). Without --steps, a folder run (or any run given
--minutes) takes the model that suits the device, times a few of its steps, and trains as many as fit:
lambda_u ramps up over the first 40% (as the CPU presets of digits and Fashion-MNIST do) and the test
split is evaluated 20 times (fewer where 20 would take over a quarter of the budget). A CPU preset's fixed
steps are capped the same way (`cap`, `max_minutes`), so that a run ends within minutes on a CPU slower than
the one the preset was tuned on.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from ..config import CPU_SCALE, PAPER, ConfigError, TrainConfig
from ..data.dataset import ImageDataset
from .distributed import ProcessGroup
from .runtime import pick_device

# Minutes of training when --dataset folder is given neither --steps nor --minutes: a coffee on a CPU,
# an hour on a GPU.
DEFAULT_MINUTES = {"cpu": 10.0, "cuda": 60.0}
# What the folder preset leaves to the device: on CPUs the CPU-scale settings tuned on Fashion-MNIST
# (WRN-10-1, cosine learning rate, lambda_u and distribution alignment of config.CPU_SCALE; WRN-28-2 takes
# about 1 to 4 s a step there, results/perf.md), on GPUs the paper's.
DEVICE_FIELDS = ("arch", "schedule", "lambda_u", "distribution_alignment")
DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {name: CPU_SCALE[name] for name in DEVICE_FIELDS},
    "cuda": {name: PAPER[name] for name in DEVICE_FIELDS},
}
RAMPUP_SHARE = 0.4  # of the steps: the digits preset ramps over 2000 of 5000
EVALUATIONS = 20  # per run: the paper's statistic is the median of the last 20
# Of the budget that evaluations may take: where 20 would take more (a tight budget, a slow evaluation), a run
# evaluates fewer times, and its median is over those.
EVAL_SHARE = 0.25
SPARE = 0.9  # of the budget for steps and evaluations; start-up, checkpoints and compiling take the rest
EVAL_PROBE = 2048  # test images an evaluation is timed on
MIN_STEPS = 100


def needs_budget(cfg: TrainConfig) -> bool:
    """Whether a resolved config leaves its step count to a time budget (`minutes`, or no steps at all)."""
    return cfg.steps is None or cfg.minutes is not None


def complete(cfg: TrainConfig) -> TrainConfig:
    """Fill what a preset leaves to the run (the folder preset): the model, learning-rate schedule and remedy
    from the device (DEVICE_DEFAULTS), and, once the steps are known, the ramp-up (RAMPUP_SHARE of them) and
    the evaluation interval (EVALUATIONS a run)."""
    filled: dict[str, Any] = {}
    unset = [name for name in DEVICE_FIELDS if getattr(cfg, name) is None]
    if unset:
        defaults = DEVICE_DEFAULTS.get(pick_device(cfg.device).type, DEVICE_DEFAULTS["cpu"])
        filled.update({name: defaults[name] for name in unset})
    if cfg.steps is not None and cfg.rampup_steps is None:
        filled["rampup_steps"] = int(RAMPUP_SHARE * cfg.steps)
    if cfg.steps is not None and cfg.eval_every is None:
        filled["eval_every"] = max(1, cfg.steps // EVALUATIONS)
    return dataclasses.replace(cfg, **filled) if filled else cfg


def time_run(cfg: TrainConfig, data: ImageDataset, steps: int = 8) -> tuple[float, float]:
    """Seconds of one training step of `cfg` on `data` (the median of `steps` after two warm-up steps) and of
    one evaluation of its test split (timed on up to EVAL_PROBE images, scaled to all of them)."""
    from .trainer import Trainer

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


def _evaluations_that_fit(minutes: float, evaluations: int, seconds_per_evaluation: float) -> int:
    """`evaluations`, or fewer (at least 1) where they would take more than EVAL_SHARE of SPARE of `minutes`."""
    if seconds_per_evaluation <= 0:
        return evaluations
    return max(1, min(evaluations, int(EVAL_SHARE * SPARE * minutes * 60 / seconds_per_evaluation)))


def _steps_that_fit(minutes: float, seconds_per_step: float, evaluations: int, seconds_per_evaluation: float) -> int:
    """Steps that fit SPARE of `minutes` once `evaluations` evaluations are paid for: in hundreds from 1000 on,
    in tens below (a tight budget would lose a third of its steps to rounding), and at least MIN_STEPS."""
    steps = int((SPARE * minutes * 60 - evaluations * seconds_per_evaluation) / seconds_per_step)
    unit = 100 if steps >= 1000 else 10
    return max(MIN_STEPS, steps // unit * unit)


def _seconds(seconds: float) -> str:
    """Whole seconds, or one significant digit below 1 s (an evaluation of the digits test split is 0.1 s)."""
    return f"{seconds:.0f}" if seconds >= 1 or seconds == 0 else f"{seconds:.1g}"


def _minutes(seconds: float) -> str:
    """A duration in minutes to two significant digits, whole from 10 on (0.31 minutes, 4.2 minutes, 150 minutes)."""
    minutes = seconds / 60
    return f"{minutes:.0f} minutes" if minutes >= 10 else f"{minutes:.2g} minutes"


def _fewer_evaluations(kept: int, wanted: int, seconds_per_evaluation: float) -> str:
    """Why a run evaluates fewer than `wanted` times, for the plan's paragraph ('' where it does not)."""
    if kept >= wanted:
        return ""
    return (
        f" ({wanted} evaluations of {_seconds(seconds_per_evaluation)} s would take over {EVAL_SHARE:.0%} of the "
        f"budget; the median of the last 20 is over the {kept} there are)"
    )


def cap(
    cfg: TrainConfig, data: ImageDataset, seconds_per_step: float | None = None, seconds_per_evaluation: float = 0.0
) -> tuple[TrainConfig, str | None]:
    """The config with fewer steps where its own would take longer than `max_minutes` on this machine.

    cfg: resolved, with steps (a CPU preset's, whose `max_minutes` is 15). The step and an evaluation are
    timed (`time_run`) unless `seconds_per_step` (and `seconds_per_evaluation`) are given; the steps that
    fit SPARE of the cap beside the run's evaluations are kept (`_steps_that_fit`), with the ramp-up and the
    evaluation interval scaled by the same share, so that the run keeps its shape and its number of
    evaluations, unless those would take over EVAL_SHARE of the cap: then it evaluates fewer times. Returns
    (cfg, None) where the steps fit or no cap is set, else the capped config and one paragraph saying why and
    how to run the whole schedule.
    """
    if cfg.max_minutes is None or cfg.steps is None:
        return cfg, None
    if seconds_per_step is None:
        seconds_per_step, seconds_per_evaluation = time_run(cfg, data)
    evaluations = cfg.steps // cfg.eval_every if cfg.eval_every else 1
    fit = _steps_that_fit(cfg.max_minutes, seconds_per_step, evaluations, seconds_per_evaluation)
    if fit >= cfg.steps:
        return cfg, None
    kept = _evaluations_that_fit(cfg.max_minutes, evaluations, seconds_per_evaluation)
    if kept < evaluations:  # the evaluations would crowd out the steps: fewer of them, and the steps they free
        fit = _steps_that_fit(cfg.max_minutes, seconds_per_step, kept, seconds_per_evaluation)
    share = fit / cfg.steps
    capped = dataclasses.replace(
        cfg,
        steps=fit,
        rampup_steps=round(cfg.rampup_steps * share) if cfg.rampup_steps is not None else None,
        eval_every=(max(1, fit // kept) if kept < evaluations else max(1, round(cfg.eval_every * share)))
        if cfg.eval_every is not None
        else None,
    )
    why = (
        f"{cfg.dataset} on {pick_device(cfg.device).type}: {cfg.steps} steps at "
        f"{seconds_per_step * 1000:.0f} ms a step and {_seconds(seconds_per_evaluation)} s an evaluation (measured) "
        f"would take {(cfg.steps * seconds_per_step + evaluations * seconds_per_evaluation) / 60:.0f} minutes, "
        f"over its {cfg.max_minutes:g}-minute cap: training {fit} steps, lambda_u ramped up over "
        f"{capped.rampup_steps}, evaluated every {capped.eval_every}"
        f"{_fewer_evaluations(kept, evaluations, seconds_per_evaluation)}"
        f"{f' ({MIN_STEPS} steps is the least a run trains)' if fit == MIN_STEPS else ''}. To run all {cfg.steps} "
        f"steps, pass --steps {cfg.steps} and no --max-minutes."
    )
    return capped, why


def plan(
    cfg: TrainConfig, data: ImageDataset, seconds_per_step: float | None = None, seconds_per_evaluation: float = 0.0
) -> tuple[TrainConfig, str]:
    """The config with steps (and, where not given, arch, ramp-up and evaluation interval) from the budget.

    cfg: resolved; its `minutes`, or DEFAULT_MINUTES for the device (no more than its `max_minutes`). Returns
    the config and one paragraph that says what was picked and why, and how to train longer. Raises
    ConfigError where both steps and minutes are given (TrainConfig.validate), or under torchrun (each process
    would measure its speed).
    """
    cfg.validate()
    if ProcessGroup.from_env().enabled:
        raise ConfigError("steps", "steps must be given under torchrun (a time budget is measured per process)")
    device = pick_device(cfg.device).type
    minutes = cfg.minutes if cfg.minutes is not None else DEFAULT_MINUTES.get(device, DEFAULT_MINUTES["cpu"])
    if cfg.max_minutes is not None:  # a cap on a run without steps: the default budget, or less
        minutes = min(minutes, cfg.max_minutes)
    sized = complete(cfg)
    if seconds_per_step is None:
        seconds_per_step, seconds_per_evaluation = time_run(sized, data)
    if sized.eval_every is not None:  # the user's interval: each step brings its share of an evaluation
        steps = _steps_that_fit(minutes, seconds_per_step + seconds_per_evaluation / sized.eval_every, 0, 0.0)
        eval_every, fewer = sized.eval_every, ""
    else:
        kept = _evaluations_that_fit(minutes, EVALUATIONS, seconds_per_evaluation)
        steps = _steps_that_fit(minutes, seconds_per_step, kept, seconds_per_evaluation)
        eval_every, fewer = max(1, steps // kept), _fewer_evaluations(kept, EVALUATIONS, seconds_per_evaluation)
    planned = complete(dataclasses.replace(sized, steps=steps, minutes=None, eval_every=eval_every))
    evaluations = max(1, steps // eval_every)
    floor = ""
    needed = steps * seconds_per_step + evaluations * seconds_per_evaluation
    if steps == MIN_STEPS and needed > SPARE * minutes * 60:
        floor = (
            f" ({MIN_STEPS} steps is the least a run trains: about {_minutes(needed)} here, more than the "
            f"{minutes:g} asked for)"
        )
    why = (
        f"{cfg.dataset} on {device}: {'' if cfg.minutes is not None else 'no --steps given, so '}"
        f"{minutes:g} minute{'' if minutes == 1 else 's'} of training: model {planned.arch}, "
        f"{seconds_per_step * 1000:.0f} ms a step and "
        f"{_seconds(seconds_per_evaluation)} s an evaluation (measured), "
        f"{steps} steps{floor}, lambda_u {planned.lambda_u:g} ramped up over {planned.rampup_steps} steps, "
        f"{planned.schedule} learning rate, "
        f"distribution alignment {'on' if planned.distribution_alignment else 'off'}, {evaluations} evaluation"
        f"{'' if evaluations == 1 else 's'}"
        f"{fewer}. "
        f"Train longer with --minutes {4 * minutes:g}, or set --steps."
    )
    return planned, why
