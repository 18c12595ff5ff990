#!/usr/bin/env bash
set -euo pipefail
# Remakes results/imp-lenet300-fashion-mnist-3seeds (the README's "Results: LeNet-300-100 on Fashion-MNIST"): IMP of
# LeNet-300-100 on Fashion-MNIST, 20 rounds of 20% global magnitude pruning, 10 epochs of a cosine schedule from 0.05,
# both random controls, 3 seeds; 43 minutes on this project's 2-core machine.
# Usage, from the repository root: bash results/imp-lenet300-fashion-mnist-3seeds/run.sh [OUT] (default: that directory).
# The committed directory keeps each unit's done.json but not its masks and weights: run there, every unit counts
# as finished and only summary.json and the plots are rebuilt; an empty OUT retrains everything.
out=${1:-results/imp-lenet300-fashion-mnist-3seeds}
lth-sparse imp --dataset fashion-mnist --model lenet300 --rounds 20 --epochs 10 --schedule cosine --lr 0.05 \
  --controls --seeds 3 --executor process --workers 2 --threads 1 --out "$out"
