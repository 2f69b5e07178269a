"""A grid of runs (`compare`, `ablate`): fitted to one budget, trained side by side on the CPU, then reported.

A small model's step cannot keep two threads busy: it is many operations on tensors of a few hundred
kilobytes, and torch's threads meet at the end of each one. Two runs in two processes of one thread each
have no such meeting points (docs/performance.md times README's main job both ways). So on a CPU a grid trains
its runs in worker processes (`--jobs`), which split the idle CPUs between them; a run computes the same either
way, with as many threads. Where side by side would cost the runs steps, auto keeps them one after another: a
time budget (`--minutes`, a folder's preset) gives each run the whole machine for its minutes, and a CPU
preset's cap (`max_minutes`) that would cut the runs on one thread but not on all is timed on all.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import runfolder
from ..config import TrainConfig, flag

if TYPE_CHECKING:
    from ..data.dataset import ImageDataset


class WorkerDied(RuntimeError):
    """A worker process of a grid ended without a result (killed, or out of memory); the message says which run."""


def pick_jobs(jobs: int | None, runs: int, threads: int | None, device: str) -> tuple[int, int | None]:
    """(worker processes, CPU threads each) for a grid of `runs` runs.

    jobs, threads: the user's --jobs and --threads, None for auto. auto on a CPU: the idle CPUs (at most
    torch's thread count, runtime.pick_threads) shared out, one run per CPU (or per `threads` CPUs), each
    worker with an equal share of them. On a GPU, under torchrun, or for one run, auto is 1 worker: the runs
    go one after another in this process, with `threads` as given. A given `jobs` is kept, up to `runs`.
    (run_grid also keeps budgeted grids, and capped ones that side by side would cut, one after another.)
    """
    from ..training.distributed import ProcessGroup
    from ..training.runtime import pick_threads, usable_cpus

    if jobs is None and (device != "cpu" or runs < 2 or ProcessGroup.from_env().enabled):
        return 1, threads
    cpus = pick_threads(None)
    if jobs is None:
        jobs = max(1, cpus // (threads or 1))
    jobs = max(1, min(jobs, runs))
    if jobs == 1:
        return 1, threads
    each = threads or max(1, cpus // jobs)
    machine = len(usable_cpus())
    if jobs * each > machine:
        print(f"mixmatch: warning: {jobs} runs at a time of {each} CPU thread{'' if each == 1 else 's'} each ask for "
              f"{jobs * each} threads of this machine's {machine} CPU{'' if machine == 1 else 's'}: they will slow "
              "each other down (the results are the same)", file=sys.stderr)
    return jobs, each


def run_grid(
    configs: list[TrainConfig], out: Path, key: str, jobs: int | None = None, resume: bool = False
) -> str:
    """Train each config, `jobs` at a time (pick_jobs; None: auto), one line each on stderr as it ends, then
    report the runs grouped by config `key`.

    With `resume`, runs already in their folders are taken up (_saved_runs): finished ones are kept, stopped
    ones continue from their newest checkpoint with their own config.json, and the rest start with the steps
    those were fitted to. Returns the Markdown table; results.md, results.json and curves.png go to `out`
    (mixmatch.report). Raises ValueError, before anything trains, for a stopped run without `resume` or a
    run folder of other settings with it; then the first run's error after the runs already training have
    ended (no new run starts), TrainingInterrupted where SIGINT or SIGTERM stopped it (every run that was
    training saved a checkpoint), WorkerDied where a worker process ended without a result.
    """
    from ..data.splits import load_for_config
    from ..training.budget import needs_budget
    from ..training.runtime import pick_device
    from ..training.trainer import TrainingInterrupted
    from .report import report

    configs = [cfg.resolved().validate() for cfg in configs]
    runfolder.writable(out, "grid folder")
    saved = _saved_runs(configs, resume)
    own = configs[0].threads
    auto = jobs is None
    jobs, threads = pick_jobs(jobs, len(configs), own, pick_device(configs[0].device).type)
    if auto and any(needs_budget(cfg) for cfg in configs):
        # A budget is minutes a run: each run gets the whole machine for them, as one after another always did.
        jobs, threads = 1, own
    # MixMatch (or the first method) sets a budget's steps; a cap is timed on every method (_fitted).
    reference = next((cfg for cfg in configs if cfg.method == "mixmatch"), configs[0])
    # Loaded here once: a data error ends the grid in one line before any worker starts.
    data = load_for_config(reference) if jobs > 1 else None
    if resume and not saved:
        print(f"mixmatch: --resume: no run of this grid in {out} yet; starting it", file=sys.stderr)
    if saved:  # fitted when the grid began: its runs say to what, and on how many threads
        fitted, why = next(iter(saved.values()))[0], None
        threads = fitted.threads if fitted.threads is not None else threads
    else:
        # One budget or cap for the grid, timed with the threads its runs will have, so that every run trains as
        # many steps.
        fitted, why = _fitted(configs, reference, threads, data)
        if auto and jobs > 1 and fitted is not None and fitted.steps < reference.steps:
            # The cap would cut the runs on a worker's threads: side by side only if one after another would too.
            alone, alone_why = _fitted(configs, reference, own, data)
            if alone is not None and alone.steps > fitted.steps:
                print(f"mixmatch: the runs train one after another: side by side, on {threads} CPU thread"
                      f"{'' if threads == 1 else 's'} each, the cap would cut them to {fitted.steps} steps",
                      file=sys.stderr)
                jobs, threads, fitted, why = 1, own, alone, alone_why
    if fitted is not None:
        if why is not None:
            print(f"mixmatch: {why} Every run of this grid trains the same number of steps (timed on its "
                  f"{fitted.method} runs).", file=sys.stderr)
        # Fitted once here: no run may time itself again (and so pick other steps). Each keeps its cap, so its
        # config.json says what shortened it.
        configs = [with_length_of(cfg, fitted) for cfg in configs]
    tasks: list[tuple[TrainConfig, bool]] = []  # (config, continue from a checkpoint)
    for cfg in configs:
        run, finished = saved.get(cfg.out, (None, False))
        if finished:
            _print_line(cfg, key, json.loads((Path(cfg.out) / runfolder.SUMMARY).read_text()), "kept")
        elif run is not None:
            tasks.append((dataclasses.replace(run, progress=cfg.progress), True))  # on its own threads
        else:
            tasks.append((cfg if threads is None else dataclasses.replace(cfg, threads=threads), False))
    if jobs == 1 or len(tasks) < 2:
        for cfg, again in tasks:
            try:
                summary = _train(cfg, fitted is not None, again)
            except TrainingInterrupted as stop:
                raise TrainingInterrupted(f"{stop}; or finish the grid: {FINISH}", stop.signum) from None
            _print_line(cfg, key, summary)
    else:
        print(f"mixmatch: {len(tasks)} runs, {jobs} at a time in worker processes of {threads} CPU thread"
              f"{'' if threads == 1 else 's'} each (--jobs 1 runs them one after another)", file=sys.stderr)
        # No progress bars: several would overwrite each other's line.
        workers = [(dataclasses.replace(cfg, progress=False), again) for cfg, again in tasks]
        _in_workers(workers, fitted is not None, jobs, key)
    try:
        return report([cfg.out for cfg in configs], out, key=key)
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            f"interrupted while writing the grid's table; its runs are finished in {out}: {FINISH} writes it",
            signal.SIGINT,
        ) from None


FINISH = "the same command with --resume"


def _saved_runs(configs: list[TrainConfig], resume: bool) -> dict[str | None, tuple[TrainConfig, bool]]:
    """The grid's runs already in their folders, {out: (its config.json, finished)}: with `resume`, every
    finished (summary.json) or stopped (checkpoints) one, after checking that it was started with the grid's
    settings; without, none, and a stopped run is refused (a fresh start would delete its checkpoints).

    Raises ValueError naming the folder and the first setting that differs, or the stopped run.
    """
    from ..training.budget import needs_budget
    from ..training.checkpoint import RESUME_OVERRIDES, run_config

    saved: dict[str | None, tuple[TrainConfig, bool]] = {}
    for cfg in configs:
        folder = Path(str(cfg.out))
        finished = (folder / runfolder.SUMMARY).is_file()
        checkpoints = [] if finished else runfolder.checkpoints(folder)
        stopped = bool(checkpoints)
        if not resume:
            if stopped:
                step = int(checkpoints[-1].stem.removeprefix("step-"))
                raise ValueError(f"{folder} holds a stopped run (a checkpoint at step {step}): finish the grid with "
                                 f"--resume, or give another --out")
            continue
        if not (finished or stopped):
            continue
        run = run_config(folder)
        # A setting its config.json predates is what the run resumes with: the one it resolves to.
        started = run.resolved()
        # What fitting picked (the steps under a cap or budget, the model of a folder preset) is the run's.
        fitted = ("steps", "rampup_steps", "warmup_steps", "eval_every") if (
            cfg.max_minutes is not None or needs_budget(cfg)) else ()
        skip = {*RESUME_OVERRIDES, "out", "minutes", *fitted}
        for f in dataclasses.fields(TrainConfig):
            mine, theirs = getattr(cfg, f.name), getattr(started, f.name)
            # auto accepts what it resolved to when the run started.
            if f.name in skip or mine in (theirs, "auto"):
                continue
            raise ValueError(f"--resume: {folder} was started with {flag(f.name)} {theirs}, not "
                             f"{mine}; give the grid's own flags, or another --out to start afresh")
        saved[cfg.out] = (run, finished)
    return saved


def with_length_of(cfg: TrainConfig, fitted: TrainConfig) -> TrainConfig:
    """`cfg` (resolved) trained for the steps and evaluation interval of the grid's `fitted` run, its own ramp-up and
    warm-up following its own share of them: a method's lambda_u, ramp-up and settings stay its own (each
    method's ramp-up share, config.METHOD_RAMPUP_SHARE, applies to the budget's steps; a cap scales every run's
    ramp-up by the same fraction, as budget.cap scaled the fitted run's)."""
    if cfg.steps is None:
        return cfg.with_steps(fitted.steps, fitted.eval_every)
    return dataclasses.replace(cfg.scaled_to(fitted.steps, fitted.eval_every), minutes=None)


def _fitted(
    configs: list[TrainConfig], reference: TrainConfig, threads: int | None, data: ImageDataset | None
) -> tuple[TrainConfig | None, str | None]:
    """The grid's budget or cap (trainer.fit_to_machine), timed on `reference` (and `data`, or its data set loaded
    here) with `threads` CPU threads (None: auto, as a run would take); under a cap, each other method is timed
    too and the steps are those that fit the cap on the slowest. Returns the fitted config (of the method that
    set the steps) and what was picked and why; (None, None) where neither a budget nor a cap applies."""
    import torch

    from ..data.splits import load_for_config
    from ..training.budget import needs_budget
    from ..training.runtime import pick_threads
    from ..training.trainer import fit_to_machine

    if not any(needs_budget(cfg) or cfg.max_minutes is not None for cfg in configs):
        return None, None
    own = torch.get_num_threads()
    torch.set_num_threads(pick_threads(threads))
    try:
        data = data if data is not None else load_for_config(reference)
        fitted, why = fit_to_machine(reference, data)
        if reference.max_minutes is None:
            return fitted, why
        # A budget is MixMatch's minutes, but the cap holds for every run: a method whose step costs more
        # (FixMatch, VAT) is timed too, and the grid trains the steps that fit the cap on the slowest of them.
        for method in dict.fromkeys(cfg.method for cfg in configs if cfg.method != reference.method):
            cfg = next(c for c in configs if c.method == method)
            cfg = cfg if cfg.steps is not None else with_length_of(cfg, fitted)  # a budget's steps, capped
            capped, capped_why = fit_to_machine(cfg, data)
            if capped_why is not None and capped.steps < fitted.steps:
                fitted, why = capped, capped_why
        return fitted, why
    finally:
        torch.set_num_threads(own)


def _train(cfg: TrainConfig, fitted: bool, resume: bool = False) -> dict[str, Any] | None:
    """Train `cfg` (with `resume`, on from its newest checkpoint); in a worker that a signal has told to stop,
    do not start (None)."""
    from ..training.checkpoint import StopSignals
    from ..training.trainer import TrainingInterrupted, train

    if StopSignals.deferred:
        return None
    try:
        return train(cfg, resume=resume, fitted=fitted)
    except TrainingInterrupted as stop:  # the run's own handler took the signal: the next run must not start
        StopSignals.deferred = stop.signum
        raise


def _print_line(cfg: TrainConfig, key: str, summary: dict[str, Any], note: str = "") -> None:
    print(
        f"{getattr(cfg, key):>16} seed {cfg.seed}: {summary.get('evaluated_on', 'test')} accuracy "
        f"{100 * summary['test_accuracy']:.2f}% "
        f"in {summary['wall_seconds']:.0f} s{f' ({note})' if note else ''}",
        file=sys.stderr,
    )


def _worker_start() -> None:
    from ..training.checkpoint import StopSignals

    def defer(signum: int, frame: object) -> None:
        StopSignals.deferred = signum

    # A Ctrl-C reaches every process of the terminal's group, and the parent forwards a stop as SIGTERM. A
    # worker never dies of either: during a run its own handler (checkpoint.StopSignals) stops it at a step
    # boundary with a checkpoint; in setup, the run stops after its first step; between runs, none starts.
    for sig in StopSignals.SIGNALS:
        signal.signal(sig, defer)


def _in_workers(tasks: list[tuple[TrainConfig, bool]], fitted: bool, jobs: int, key: str) -> None:
    """Train each (config, resume) of `tasks` in `jobs` spawned worker processes (a fork would inherit torch's
    OpenMP threads); see run_grid for what it raises."""
    from ..training.checkpoint import StopSignals
    from ..training.trainer import TrainingInterrupted

    errors: list[BaseException] = []
    stopped: dict[str | None, TrainingInterrupted] = {}  # by run folder
    not_started = 0
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_start) as pool, StopSignals() as signals:
        # MixMatch runs first: a step of theirs costs 2-3 baseline steps, and a long run started last would
        # leave the other workers idle at the end.
        first = sorted(tasks, key=lambda task: task[0].method != "mixmatch")
        pending: dict[Future, TrainConfig] = {pool.submit(_train, cfg, fitted, again): cfg for cfg, again in first}
        forwarded = False
        while pending:
            done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            if (signals.received or errors) and not forwarded:
                forwarded = True  # no new run starts; on a signal, the running ones save a checkpoint and stop
                for future in pending:
                    future.cancel()
                if signals.received:
                    for child in multiprocessing.active_children():
                        os.kill(child.pid, signal.SIGTERM)
            for future in done:
                cfg = pending.pop(future)
                if future.cancelled():
                    not_started += 1
                    continue
                error = future.exception()
                if error is None and future.result() is None:
                    not_started += 1
                elif error is None:
                    _print_line(cfg, key, future.result())
                elif isinstance(error, TrainingInterrupted):
                    stopped[cfg.out] = error
                elif isinstance(error, BrokenProcessPool):
                    errors.append(WorkerDied(f"a worker process died (killed, or out of memory?) while the grid "
                                             f"trained {cfg.out}; the finished runs are in their folders"))
                else:
                    errors.append(error)
    if stopped or signals.received:
        signum = signals.received or next(iter(stopped.values())).signum
        saved = "; ".join(map(str, stopped))
        raise TrainingInterrupted(
            f"stopped by {signal.Signals(signum).name}: {len(stopped)} run{'' if len(stopped) == 1 else 's'} saved "
            f"a checkpoint{f' ({saved})' if stopped else ''}, {not_started} not started; finish the grid: {FINISH}",
            signum,
        )
    if errors:
        raise errors[0]
