#!/usr/bin/env bash
set -euo pipefail
# Remakes results/consensus-lenet300-fmnist-4tasks (the README's consensus tickets, "Reproduced at small scale"): the
# pret-a-porter ticket of LeNet-300-100 over 4 tasks made from Fashion-MNIST (its halves a and b, two pixel
# permutations), the paper's recipe but 10 epochs on 6,000 examples per task and no augmentation, 9 rounds, 3 seeds;
# 18 minutes on one core of this project's 2-core machine.
# Usage, from the repository root: bash results/consensus-lenet300-fmnist-4tasks/run.sh [OUT] (default: that directory).
# The committed directory keeps each unit's done.json but not its masks: run there, every unit counts as finished
# and only summary.json and the plots are rebuilt; an empty OUT retrains everything.
out=${1:-results/consensus-lenet300-fmnist-4tasks}
lth-sparse consensus --tasks fashion-mnist:half=a fashion-mnist:half=b fashion-mnist:permute=1 fashion-mnist:permute=2 \
  --model lenet300 --preset paganini --augment none --epochs 10 --train-size 6000 --rounds 9 --seeds 3 --threads 1 \
  --out "$out"
