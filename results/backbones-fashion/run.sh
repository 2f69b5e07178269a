#!/usr/bin/env bash
# The fine-tuning experiment of docs/backbones.md, on a 2-core CPU, one run at a time.
# 1. A ResNet-18 learns Fashion-MNIST's classes 0-4 with every label (the "pretrained" backbone: no ImageNet
#    weights can be had offline). 2. MixMatch fine-tunes it on classes 5-9 from 50 labels, 1000 steps, scored on a
#    validation split of the target's training images (--val-fraction 0.1): the tuning runs, against the same
#    network from scratch and the same weights fine-tuned on the 50 labels alone.
# 3. The pipeline under time budgets (not accuracy claims): a 96 px folder fine-tuned from the same file (6
#    minutes, for more than the 100 steps a run trains at least), and Fashion-MNIST itself through torchvision's
#    ResNet-18 from scratch.
set -eu
cd "$(dirname "$0")/../.."
M=.venv/bin/mixmatch
F=${FOLDERS:-/tmp/fashion-folders}   # written by results/backbones-fashion/make_folders.py
R=results/backbones-fashion
common=(--arch resnet18 --image-size 28 --no-progress)
# (The source model ran on one thread beside another job; the runs after it on two, one at a time.)
[ -f $R/source-resnet18/summary.json ] || $M train --dataset folder --data-dir $F/source "${common[@]}" --threads 1 \
  --method fully-supervised --steps 2000 --out $R/source-resnet18
[ -f $R/source-resnet18/model.safetensors ] || $M export $R/source-resnet18
W=$R/source-resnet18/model.safetensors
target=(--dataset folder --data-dir $F/target "${common[@]}" --threads 2 --num-labels 50 --steps 1000)
tune() {  # tag, flags...
  local tag=$1; shift
  [ -f $R/tune/$tag/summary.json ] || $M train "${target[@]}" --val-fraction 0.1 --tag $tag --out $R/tune/$tag "$@"
}
tune scratch                                          # (ran before fine-tuning ramped over the whole run)
tune finetune --weights $W                            # config.FINETUNE: lambda_u ramped up over all 1000 steps
tune finetune-labels-only --weights $W --method supervised
tune finetune-rampup-40 --weights $W --rampup-steps 400   # the preset's share of the steps
tune scratch-rampup-all --rampup-steps 1000              # scratch, ramped up as fine-tuning is (run last)
tune finetune-backbone-lr-1 --weights $W --backbone-lr-scale 1   # the backbone at the classifier's rate
tune finetune-no-warmup --weights $W --warmup-steps 0
tune finetune-lr-1-no-warmup --weights $W --backbone-lr-scale 1 --warmup-steps 0   # both of the two above
[ -f $R/budget/photos96/summary.json ] || $M train --dataset folder --data-dir $F/photos96 --arch resnet18 \
  --image-size 96 --weights $W --num-labels 50 --minutes 6 --threads 2 --no-progress --out $R/budget/photos96
[ -f $R/budget/fashion-resnet18/summary.json ] || $M train --dataset fashion-mnist --data-dir ../shared/data \
  --arch resnet18 --num-labels 100 --minutes 3 --threads 2 --no-progress --out $R/budget/fashion-resnet18
