#!/usr/bin/env bash
set -euo pipefail
# Remakes results/layerwise-overlap-fmnist and results/layerwise-partial-reinit (the README's layerwise-importance
# analyses, Vandersmissen et al. at small scale, offline): IMP of LeNet-300-100 on 6,000 Fashion-MNIST examples
# with the importances magnitude, l1 and l2 from one initialisation, 3 seeds (a sweep of 9 runs, 148 s on this
# project's 2-core machine), then per seed the overlap of the three round-15 tickets, magnitude IMP from the partial
# re-initialisation it gives, and the survival of the overlapping connections (88 s, two of the re-initialised runs
# side by side).
# Usage, from the repository root: bash results/layerwise-overlap-fmnist/run.sh [OUT [REINIT]] (default:
# results/layerwise-overlap-fmnist and results/layerwise-partial-reinit).
# The committed runs keep each unit's done.json but not its masks: run there, every unit of the sweep counts as
# finished (only the summaries and plots are rebuilt) and the overlap, which needs the masks, stops the script; empty
# directories retrain everything. The partial re-initialisations are written to REINIT/partial_init_S.pt; the
# committed configs of REINIT/seed_S name the files they were made from, /work/layerwise/partial_S.pt.
out=${1:-results/layerwise-overlap-fmnist}
reinit=${2:-results/layerwise-partial-reinit}
here=$(dirname "$0")
lth-sparse sweep "$here/analysis/grid.yaml" --out "$out" --executor process --workers 2 --threads 1
tickets() { echo "$out/importance=magnitude,seed=$1" "$out/importance=l1,seed=$1" "$out/importance=l2,seed=$1"; }
for s in 0 1 2; do
  lth-sparse importance-overlap $(tickets $s) --round 15 --seed $s --write-partial-init "$reinit/partial_init_$s.pt" \
    --redraw-seed $((100 + s)) --out "$out/analysis/overlap_$s.json"
done
for s in 0 1 2; do
  lth-sparse imp --dataset fashion-mnist --model lenet300 --rounds 15 --epochs 10 --schedule cosine --lr 0.05 \
    --train-size 6000 --seed $s --init-file "$reinit/partial_init_$s.pt" --threads 1 --no-progress --no-plots \
    --out "$reinit/seed_$s"
done
for s in 0 1 2; do
  lth-sparse importance-overlap $(tickets $s) --round 15 --seed $s --survival "$reinit/seed_$s" \
    --out "$out/analysis/survival_$s.json"
done
