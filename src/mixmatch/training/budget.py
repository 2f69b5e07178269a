"""How long a run trains when a time budget decides: from the measured step and evaluation, pick the steps, say why.

Arithmetic on measured figures only: the trainer times a few steps and an evaluation (`trainer.time_run`) and
hands the seconds in. `--dataset folder` has no step count of its own, the paper's schedule being days on a CPU:
without --steps, a folder run (or any run given --minutes) trains as many steps as fit its budget, lambda_u
ramps up over the first RAMPUP_SHARE of them, and the test split is evaluated EVALUATIONS times (fewer where
those would take over EVAL_SHARE of the budget). A CPU preset's fixed steps are capped the same way (`cap`,
`max_minutes`), so that a run ends within minutes on a CPU slower than the one the preset was tuned on.
"""

from __future__ import annotations

from ..config import EVALUATIONS, ConfigError, TrainConfig, device_type
from ..methods import METHODS
from .distributed import ProcessGroup

# Minutes of training when --dataset folder is given neither --steps nor --minutes: a coffee on a CPU,
# an hour on a GPU.
DEFAULT_MINUTES = {"cpu": 10.0, "cuda": 60.0}
# Of the budget that evaluations may take: where EVALUATIONS would take more (a tight budget, a slow evaluation),
# a run evaluates fewer times, and its median is over those.
EVAL_SHARE = 0.25
SPARE = 0.9  # of the budget for steps and evaluations; start-up, checkpoints and compiling take the rest
MIN_STEPS = 100


def needs_budget(cfg: TrainConfig) -> bool:
    """Whether a resolved config leaves its step count to a time budget (`minutes`, or no steps at all)."""
    return cfg.steps is None or cfg.minutes is not None


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


def _duration(seconds: float) -> str:
    """Whole seconds under a minute (21 s), else minutes to two significant digits, whole from 10 on."""
    if seconds < 60:
        return f"{seconds:.0f} s"
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
    cfg: TrainConfig, seconds_per_step: float, seconds_per_evaluation: float = 0.0
) -> tuple[TrainConfig, str | None]:
    """The config with fewer steps where its own would take longer than `max_minutes` on this machine.

    cfg: resolved, with steps (a CPU preset's, whose `max_minutes` is 15); the seconds of one step and one
    evaluation, measured on this machine. The steps that fit SPARE of the cap beside the run's evaluations are
    kept (`_steps_that_fit`), with the ramp-up and the evaluation interval scaled by the same share, so that the
    run keeps its shape and its number of evaluations, unless those would take over EVAL_SHARE of the cap: then
    it evaluates fewer times. Returns (cfg, None) where the steps fit or no cap is set, else the capped config
    and one paragraph saying why and how to run the whole schedule.
    """
    if cfg.max_minutes is None or cfg.steps is None:
        return cfg, None
    evaluations = cfg.steps // cfg.eval_every
    fit = _steps_that_fit(cfg.max_minutes, seconds_per_step, evaluations, seconds_per_evaluation)
    if fit >= cfg.steps:
        return cfg, None
    kept = _evaluations_that_fit(cfg.max_minutes, evaluations, seconds_per_evaluation)
    if kept < evaluations:  # the evaluations would crowd out the steps: fewer of them, and the steps they free
        fit = _steps_that_fit(cfg.max_minutes, seconds_per_step, kept, seconds_per_evaluation)
    every = max(1, fit // kept) if kept < evaluations else max(1, round(cfg.eval_every * (fit / cfg.steps)))
    capped = cfg.scaled_to(fit, eval_every=every)
    why = (
        f"{cfg.dataset} on {device_type(cfg.device)}: {cfg.steps} steps at "
        f"{seconds_per_step * 1000:.0f} ms a step and {_seconds(seconds_per_evaluation)} s an evaluation (measured) "
        f"would take {(cfg.steps * seconds_per_step + evaluations * seconds_per_evaluation) / 60:.0f} minutes, "
        f"over its {cfg.max_minutes:g}-minute cap: training {fit} steps, "
        f"{_lambda_u(capped)}evaluated every {capped.eval_every}"
        f"{_fewer_evaluations(kept, evaluations, seconds_per_evaluation)}"
        f"{f' ({MIN_STEPS} steps is the least a run trains)' if fit == MIN_STEPS else ''}. To run all {cfg.steps} "
        f"steps, pass --steps {cfg.steps} and no --max-minutes."
    )
    return capped, why


def _reads(cfg: TrainConfig, name: str) -> bool:
    """Whether the run's method uses this setting, so that the budget's line names it."""
    return name in METHODS[cfg.method].reads


def _lambda_u(cfg: TrainConfig) -> str:
    if not _reads(cfg, "lambda_u"):
        return ""
    ramp = f" ramped up over {cfg.rampup_steps} steps" if _reads(cfg, "rampup_steps") else ""
    return f"lambda_u {cfg.lambda_u:g}{ramp}, "


def plan(cfg: TrainConfig, seconds_per_step: float, seconds_per_evaluation: float = 0.0) -> tuple[TrainConfig, str]:
    """The config with the steps of its time budget (and, where not given, the ramp-up and evaluation interval).

    cfg: resolved; its `minutes`, or DEFAULT_MINUTES for the device (no more than its `max_minutes`); the
    seconds of one step and one evaluation of it, measured on this machine. Returns
    the config and one paragraph that says what was picked and why, and how to train longer. Raises
    ConfigError where both steps and minutes are given (TrainConfig.validate), or under torchrun (each process
    would measure its speed).
    """
    cfg.validate()
    if ProcessGroup.from_env().enabled:
        raise ConfigError("steps", "steps must be given under torchrun (a time budget is measured per process)")
    device = device_type(cfg.device)
    minutes = cfg.minutes if cfg.minutes is not None else DEFAULT_MINUTES.get(device, DEFAULT_MINUTES["cpu"])
    if cfg.max_minutes is not None:  # a cap on a run without steps: the default budget, or less
        minutes = min(minutes, cfg.max_minutes)
    if cfg.eval_every is not None:  # the user's interval: each step brings its share of an evaluation
        steps = _steps_that_fit(minutes, seconds_per_step + seconds_per_evaluation / cfg.eval_every, 0, 0.0)
        eval_every = cfg.eval_every
    else:
        kept = _evaluations_that_fit(minutes, EVALUATIONS, seconds_per_evaluation)
        steps = _steps_that_fit(minutes, seconds_per_step, kept, seconds_per_evaluation)
        eval_every = max(1, steps // kept)
    planned = cfg.with_steps(steps, eval_every)
    evaluations = max(1, steps // eval_every)
    fewer = "" if cfg.eval_every is not None else _fewer_evaluations(evaluations, EVALUATIONS, seconds_per_evaluation)
    floor = ""
    needed = steps * seconds_per_step + evaluations * seconds_per_evaluation
    if steps == MIN_STEPS and needed > SPARE * minutes * 60:
        floor = (
            f" ({MIN_STEPS} steps is the least a run trains: about {_duration(needed)} here, more than the "
            f"{minutes:g} minute{'' if minutes == 1 else 's'} asked for)"
        )
    warmup = f" warmed up over {planned.warmup_steps} steps" if planned.warmup_steps else ""
    aligned = "on" if planned.distribution_alignment else "off"
    alignment = f"distribution alignment {aligned}, " if _reads(planned, "distribution_alignment") else ""
    why = (
        f"{cfg.dataset} on {device}: {'' if cfg.minutes is not None else 'no --steps given, so '}"
        f"{minutes:g} minute{'' if minutes == 1 else 's'} of training: model {planned.arch}, "
        f"{seconds_per_step * 1000:.0f} ms a step and "
        f"{_seconds(seconds_per_evaluation)} s an evaluation (measured), "
        f"{steps} steps{floor}, {_lambda_u(planned)}{planned.schedule} learning rate{warmup}, "
        f"{alignment}{evaluations} evaluation"
        f"{'' if evaluations == 1 else 's'}"
        f"{fewer}. "
        + ("Fewer steps: set --steps." if floor else f"Train longer with --minutes {4 * minutes:g}, or set --steps.")
    )
    return planned, why
