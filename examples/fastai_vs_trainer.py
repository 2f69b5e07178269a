"""Does the fastai path train as well as the library's own Trainer? Same data, same budget, several seeds.

Both sides: the digits data set, the same class-balanced labelled split per seed (50 labels), the whole
training set as unlabelled data, small CNN, batch 64, K 2, T 0.5, alpha 0.75, lambda_u 75 ramped over
`--rampup-steps`, Adam lr 0.002 (betas 0.9/0.999, eps 1e-8) at a constant rate, decoupled weight decay
0.02 on conv/linear weights, EMA 0.999 of weights and buffers (the evaluated model), one forward pass over
the mixed batch, float32, `--steps` steps, test accuracy of the EMA model at the end. `--mix`, `--bn-mode`
and `--distribution-alignment` set the same option on both sides (both run `mixmatch.methods.mixmatch.MixMatchStep`).

    Trainer  mixmatch.training.trainer.Trainer(TrainConfig(dataset="digits", amp="off", ...)): the `mixmatch train` path
    fastai   image_dataloaders + mixmatch_learner (MixMatchCallback + EMACallback), learn.fit(epochs, 2e-3)

Left different, by design of each side: the Trainer draws each labelled batch with replacement, fastai
shuffles repeated copies of the labelled set; the random streams differ, so runs are compared by their
spread, not one to one.

    python examples/fastai_vs_trainer.py --seeds 0 1 2 --steps 2000 --out results/fastai-vs-trainer

Writes results.json, results.md and one folder per run (the Trainer's run folder; fastai's summary and
per-epoch metrics) under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mixmatch.config import TrainConfig, augmentation_of
from mixmatch.data import ImageDataset, labeled_split, load_dataset
from mixmatch.methods.mixmatch import BN_MODES, MIX_MODES
from mixmatch.training.trainer import Trainer, seed_everything

DATASET = "digits"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def trainer_run(data: ImageDataset, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    config = TrainConfig(
        dataset=DATASET,
        num_labels=args.num_labels,
        seed=seed,
        arch="cnn",
        steps=args.steps,
        rampup_steps=args.rampup_steps,
        eval_every=args.eval_every,
        mix=args.mix,
        bn_mode=args.bn_mode,
        distribution_alignment=args.distribution_alignment,
        amp="off",  # float32, as the fastai Learner (the Trainer's 'auto' would use bf16 on CPUs that have it)
        device="cpu",
        progress=False,
        out=str(out),
    )
    start = time.perf_counter()
    summary = Trainer(config, data).fit()
    seconds = time.perf_counter() - start
    # Resumable checkpoints are of no use to this comparison and would weigh the results folder down.
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return dict(seed=seed, test_accuracy=summary["test_accuracy"], seconds=round(seconds, 1))


def fastai_run(data: ImageDataset, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from mixmatch.fastai import image_dataloaders, mixmatch_learner

    config = TrainConfig(dataset=DATASET, num_labels=args.num_labels, seed=seed, arch="cnn").resolved()
    seed_everything(seed)
    split = labeled_split(data.train_labels, config.num_labels, data.num_classes, seed)
    pad, flip = augmentation_of(DATASET)
    dls = image_dataloaders(data, split, config.batch_size, args.eval_every, pad, flip, device="cpu")
    with tempfile.TemporaryDirectory() as scratch:
        learn = mixmatch_learner(
            dls,
            data.train_images,  # as the Trainer: every training image is also unlabelled data
            arch="cnn",
            K=config.k,
            T=config.temperature,
            alpha=config.alpha,
            lambda_u=config.lambda_u,
            rampup_steps=args.rampup_steps,
            mix=args.mix,
            bn_mode=args.bn_mode,
            distribution_alignment=args.distribution_alignment,  # labelled marginal: the 50 labels, repeated
            ema_decay=config.ema_decay,
            wd=config.weight_decay,
            path=scratch,
        )
        start = time.perf_counter()
        with learn.no_bar(), learn.no_logging():
            learn.fit(args.steps // args.eval_every, config.lr)
            seconds = time.perf_counter() - start
            names = learn.recorder.metric_names[1:-1]  # between 'epoch' and 'time': train_loss, valid_loss, accuracy
            history = [dict(zip(names, values, strict=True)) for values in learn.recorder.values]
            _, accuracy = learn.validate()  # the EMA model after the last step (validate resets the Recorder)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "metrics.jsonl").open("w") as f:
        for epoch, values in enumerate(history, 1):
            f.write(json.dumps(dict(step=epoch * args.eval_every, **values)) + "\n")
    summary = dict(seed=seed, test_accuracy=float(accuracy), seconds=round(seconds, 1))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def spread(values: list[float]) -> dict[str, float]:
    return dict(mean=statistics.fmean(values), std=statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=2000, help="training steps of each run (digits preset: 5000)")
    parser.add_argument("--rampup-steps", type=int, default=800, help="lambda_u ramp-up (preset: 2000 of 5000)")
    parser.add_argument("--eval-every", type=int, default=250, help="steps between test evaluations (fastai epoch)")
    parser.add_argument("--num-labels", type=int, default=50)
    parser.add_argument("--mix", default="all", choices=MIX_MODES, help="what MixUp mixes, on both sides")
    parser.add_argument("--bn-mode", default="concat", choices=BN_MODES, help="BatchNorm mode, on both sides")
    parser.add_argument("--distribution-alignment", action="store_true", help="on both sides")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--out", default="results/fastai-vs-trainer")
    args = parser.parse_args(argv)
    if args.steps % args.eval_every:
        parser.error("--steps must be a multiple of --eval-every (one fastai epoch)")
    try:
        import mixmatch.fastai  # noqa: F401
    except ImportError as error:  # FastaiMissingError says what to install
        print(f"error: {error}", file=sys.stderr)
        return 2
    import fastai

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    data = load_dataset(DATASET)
    runs: dict[str, list[dict[str, Any]]] = {"trainer": [], "fastai": []}
    for seed in args.seeds:
        for name, run in (("trainer", trainer_run), ("fastai", fastai_run)):
            result = run(data, seed, args, out / f"{name}-seed{seed}")
            runs[name].append(result)
            print(
                f"{name:>7} seed {seed}: {100 * result['test_accuracy']:.2f}% in {result['seconds']:.0f} s", flush=True
            )

    acc = {name: [r["test_accuracy"] for r in rs] for name, rs in runs.items()}
    diffs = [f - t for f, t in zip(acc["fastai"], acc["trainer"], strict=True)]  # same seed, same labelled split
    record = dict(
        command="python examples/fastai_vs_trainer.py " + " ".join(sys.argv[1:] if argv is None else argv),
        dataset=DATASET,
        num_labels=args.num_labels,
        steps=args.steps,
        rampup_steps=args.rampup_steps,
        mix=args.mix,
        bn_mode=args.bn_mode,
        distribution_alignment=args.distribution_alignment,
        seeds=args.seeds,
        runs=runs,
        accuracy={name: spread(values) for name, values in acc.items()},
        fastai_minus_trainer=spread(diffs),
        hardware=dict(cpu=cpu_name(), cores=os.cpu_count(), torch_threads=args.threads, device="cpu"),
        versions=dict(python=platform.python_version(), torch=torch.__version__, fastai=fastai.__version__),
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(record, indent=2))
    (out / "results.md").write_text(markdown(record))
    print(markdown(record))
    return 0


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# fastai MixMatchCallback vs the library's Trainer: {r['dataset']}, {r['num_labels']} labels",
        "",
        f"`{r['command']}`",
        "",
        f"Small CNN, {r['steps']} steps of batch 64, K 2, T 0.5, alpha 0.75, lambda_u 75 ramped over "
        f"{r['rampup_steps']} steps, mix {r['mix']}, BatchNorm {r['bn_mode']}, distribution alignment "
        f"{'on' if r['distribution_alignment'] else 'off'}, Adam 0.002 constant, weight decay 0.02, "
        "EMA 0.999 (evaluated), float32. "
        f"{r['hardware']['cpu']}, {r['hardware']['cores']} cores, {r['hardware']['torch_threads']} torch thread(s); "
        f"Python {r['versions']['python']}, torch {r['versions']['torch']}, fastai {r['versions']['fastai']}.",
        "",
        "| seed | Trainer accuracy (%) | fastai accuracy (%) | fastai - Trainer (points) | Trainer s | fastai s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for t, f in zip(r["runs"]["trainer"], r["runs"]["fastai"], strict=True):
        lines.append(
            f"| {t['seed']} | {100 * t['test_accuracy']:.2f} | {100 * f['test_accuracy']:.2f} | "
            f"{100 * (f['test_accuracy'] - t['test_accuracy']):+.2f} | {t['seconds']:.0f} | {f['seconds']:.0f} |"
        )
    a, d = r["accuracy"], r["fastai_minus_trainer"]
    lines.append(
        f"| mean ± std | {100 * a['trainer']['mean']:.2f} ± {100 * a['trainer']['std']:.2f} | "
        f"{100 * a['fastai']['mean']:.2f} ± {100 * a['fastai']['std']:.2f} | "
        f"{100 * d['mean']:+.2f} ± {100 * d['std']:.2f} | | |"
    )
    lines += [
        "",
        "Each seed: the same labelled split on both sides (`trainer-seed*/split.json`). Trainer: "
        "`mixmatch.training.trainer.Trainer` with amp off; fastai: `image_dataloaders` + `mixmatch_learner`, "
        "`learn.fit` at a constant lr. Test split: 500 images, so one image is 0.2 points. Wall times are on a "
        "shared machine.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
