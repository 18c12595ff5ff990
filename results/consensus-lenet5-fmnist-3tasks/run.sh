#!/usr/bin/env bash
set -euo pipefail
# Remakes results/consensus-lenet5-fmnist-3tasks (the README's consensus of the conv LeNet-5): 3 tasks (the halves of
# Fashion-MNIST and a pixel permutation), the paper's recipe shrunk to 5 epochs on 3,000 examples per task, 5 rounds,
# 3 seeds; 12 minutes on one core of this project's 2-core machine, beside other jobs.
# Usage, from the repository root: bash results/consensus-lenet5-fmnist-3tasks/run.sh [OUT] (default: that directory).
# The committed directory keeps each unit's done.json but not its masks: run there, every unit counts as finished
# and only summary.json and the plots are rebuilt; an empty OUT retrains everything.
out=${1:-results/consensus-lenet5-fmnist-3tasks}
lth-sparse consensus --tasks fashion-mnist:half=a fashion-mnist:half=b fashion-mnist:permute=1 --model lenet5 \
  --preset paganini --augment none --epochs 5 --train-size 3000 --rounds 5 --seeds 3 --threads 1 --out "$out"
