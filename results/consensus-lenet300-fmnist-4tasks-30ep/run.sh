#!/usr/bin/env bash
set -euo pipefail
# Remakes results/consensus-lenet300-fmnist-4tasks-30ep (the README's consensus tickets trained three times longer):
# results/consensus-lenet300-fmnist-4tasks with 30 epochs, the paper's count; 20 minutes on this project's 2-core
# machine.
# Usage, from the repository root: bash results/consensus-lenet300-fmnist-4tasks-30ep/run.sh [OUT] (default: that
# directory). The committed directory keeps each unit's done.json but not its masks: run there, every unit counts as
# finished and only summary.json and the plots are rebuilt; an empty OUT retrains everything.
out=${1:-results/consensus-lenet300-fmnist-4tasks-30ep}
lth-sparse consensus --tasks fashion-mnist:half=a fashion-mnist:half=b fashion-mnist:permute=1 fashion-mnist:permute=2 \
  --model lenet300 --preset paganini --augment none --epochs 30 --train-size 6000 --rounds 9 --seeds 3 \
  --executor process --workers 2 --threads 1 --out "$out"
