#!/usr/bin/env bash
set -euo pipefail
# Remakes results/consensus-lenet300-fmnist-4tasks-stacked: the README's consensus run
# (results/consensus-lenet300-fmnist-4tasks) with its trainings stacked by hand (--stack 12: on a CPU --stack auto
# trains LeNet-300-100 one by one), each task's 3 bespoke IMP runs in lockstep and its tickets' retrainings
# together; 656 s on one thread of this project's 2-core machine (18 minutes unstacked, with older code beside
# other work: no speed comparison). Only summary.json,
# config.json and the plots are committed (docs/pipelines/consensus.md compares the two runs).
# Usage, from the repository root: bash results/consensus-lenet300-fmnist-4tasks-stacked/run.sh [OUT]
# (default: /tmp/consensus_stacked).
out=${1:-/tmp/consensus_stacked}
lth-sparse consensus --tasks fashion-mnist:half=a fashion-mnist:half=b fashion-mnist:permute=1 fashion-mnist:permute=2 \
  --model lenet300 --preset paganini --augment none --epochs 10 --train-size 6000 --rounds 9 --seeds 3 --threads 1 \
  --stack 12 --out "$out"
