#!/usr/bin/env bash
set -euo pipefail
# Remakes results/plant/stacked: the README's planting benchmark (Fischer & Burkholz 2022 at the paper's scale,
# offline) with today's defaults (the reference code's targets and planting, the pruners score on 40 training examples,
# SynFlow single-shot, edge-popup keeps GetSubnet's count: Plant 'n' Seek's code's readings) and --stack auto (each task and depth's multi-shot prunings,
# edge-popup searches and weak tickets trained in stacks of 16); about 4 minutes on this project's 2-core machine.
# Only summary.json, config.json and the plots are committed, not the units' files (docs/pipelines/plant.md).
# Usage, from the repository root: bash results/plant/stacked/run.sh [OUT] (default: /tmp/plant_stacked).
out=${1:-/tmp/plant_stacked}
lth-sparse plant --tasks relu circle helix --depths 3 5 \
  --pruners random,magnitude,snip,grasp,synflow,multishot-magnitude,multishot-synflow,edge-popup,edge-popup-annealed \
  --densities 0.01,0.1,0.5,1,planted --seeds 2 --out "$out" --executor process --workers 2 --threads 1
