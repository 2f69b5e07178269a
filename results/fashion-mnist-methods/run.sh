#!/usr/bin/env bash
# The paper's comparison on Fashion-MNIST (issue #24): every method at 100 labels with seeds 0-2 and at 40, 250
# and 1000 labels with seed 0, the preset's model, steps and batch, one run at a time on 2 threads; FixMatch with
# the paper's mu 7 for as many minutes as a MixMatch run took (the median); the accuracy per class at 100, 250 and 1000 labels;
# then the tables and the paper's figure 2.
# Each grid continues where it stopped with the same command (--resume).
set -euo pipefail
cd "$(dirname "$0")/../.."
mixmatch compare --dataset fashion-mnist --data-dir ../shared/data --methods all --seeds 0 1 2 --jobs 1 --threads 2 \
  --resume --out results/fashion-mnist-methods-100
minutes=$(python -c "
import json, statistics
walls = [json.load(open(f'results/fashion-mnist-methods-100/mixmatch-seed{s}/summary.json'))['wall_seconds'] for s in range(3)]
print(round(statistics.median(walls) / 60, 2))")
mixmatch train --dataset fashion-mnist --data-dir ../shared/data --method fixmatch --mu 7 --seed 0 --minutes "$minutes" \
  --threads 2 --tag mu7-same-minutes --no-progress --out results/fashion-mnist-methods-100/fixmatch-mu7-same-minutes-seed0
python examples/per_class.py $(ls -d results/fashion-mnist-methods-100/*-seed* | grep -v mu7) --data-dir ../shared/data \
  > results/fashion-mnist-methods-100/per-class.md
# fully-supervised ignores --num-labels: the 100-label grid's runs serve every label count's table
semi="supervised mixmatch pi-model pseudo-label mixup vat mean-teacher ict fixmatch"
for n in 40 250 1000; do
  mixmatch compare --dataset fashion-mnist --data-dir ../shared/data --methods $semi --seeds 0 --num-labels $n \
    --jobs 1 --threads 2 --resume --out results/fashion-mnist-methods-$n
done
mixmatch report results/fashion-mnist-methods-100/*-seed*/ --out results/fashion-mnist-methods-100
for n in 40 250 1000; do
  mixmatch report results/fashion-mnist-methods-$n/*-seed*/ results/fashion-mnist-methods-100/fully-supervised-seed*/ \
    --out results/fashion-mnist-methods-$n
done
for n in 250 1000; do
  python examples/per_class.py $(ls -d results/fashion-mnist-methods-$n/*-seed0) --data-dir ../shared/data \
    > results/fashion-mnist-methods-$n/per-class.md
done
# figure 2: one line per method, so without the one mu 7 run
mixmatch report $(ls -d results/fashion-mnist-methods-{40,100,250,1000}/*-seed*/ | grep -v mu7) \
  --out results/fashion-mnist-methods
