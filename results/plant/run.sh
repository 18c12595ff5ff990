#!/usr/bin/env bash
# The planting benchmark of the README (Fischer & Burkholz 2022 at the paper's scale, offline: the tasks are
# generated): ReLU, Circle and Helix planted in hosts of depth 3 and 5 and width 100; the five single-shot pruners,
# multi-shot magnitude (IMP) and SynFlow, edge-popup and its annealed variant; densities 0.01, 0.1, 0.5, 1 and the
# planted ticket's own; weak tickets trained with the paper's recipe (Adam, lr 1e-3, batch 32, 10 epochs); 2 seeds.
# Usage: bash results/plant/run.sh [OUT] (default: results/plant/run); a re-run resumes.
set -euo pipefail
out=${1:-results/plant/run}
lth-sparse plant --tasks relu circle helix --depths 3 5 \
  --pruners random,magnitude,snip,grasp,synflow,multishot-magnitude,multishot-synflow,edge-popup,edge-popup-annealed \
  --densities 0.01,0.1,0.5,1,planted --seeds 2 --out "$out" --executor process --workers 2 --threads 1
