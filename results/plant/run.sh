#!/usr/bin/env bash
set -euo pipefail
# Remakes results/plant/run (the README's planting benchmark, Fischer & Burkholz 2022 at the paper's scale, offline:
# the tasks are generated): ReLU, Circle and Helix planted in hosts of depth 3 and 5 and width 100; the five
# single-shot pruners, multi-shot magnitude (IMP) and SynFlow, edge-popup and its annealed variant; densities 0.01,
# 0.1, 0.5, 1 and the planted ticket's own; weak tickets trained with the paper's recipe (Adam, lr 1e-3, batch 32,
# 10 epochs); 2 seeds, 444 units; 19 minutes on this project's 2-core machine, beside other jobs, trained unit by
# unit before stacking. The options the committed run was made with are given below where today's defaults differ
# (--prune-batch 256 --synflow-iterations 100, before they became Plant 'n' Seek's code's 40 and 1; --planting exact,
# the targets' exact non-zeros and the paper's L2 matching, before the default became the reference code's planting,
# recorded in its config.json; edge-popup then kept round(density * n) per tensor, now GetSubnet's count), so that it
# resumes here; the README command with
# today's defaults, stacked, is results/plant/stacked (its run.sh; docs/pipelines/plant.md compares them).
# Usage, from the repository root: bash results/plant/run.sh [OUT] (default: results/plant/run).
# The committed run keeps each unit's done.json but not its masks and weights: run there, every unit counts as
# finished and only summary.json and the plots are rebuilt; an empty OUT retrains everything.
out=${1:-results/plant/run}
lth-sparse plant --tasks relu circle helix --depths 3 5 \
  --pruners random,magnitude,snip,grasp,synflow,multishot-magnitude,multishot-synflow,edge-popup,edge-popup-annealed \
  --densities 0.01,0.1,0.5,1,planted --seeds 2 --out "$out" --executor process --workers 2 --threads 1 \
  --prune-batch 256 --synflow-iterations 100 --planting exact
