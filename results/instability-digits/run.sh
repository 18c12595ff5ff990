#!/usr/bin/env bash
set -euo pipefail
# Remakes results/instability-digits (the README's instability experiments, Frankle et al. 2020 and the SGD-noise
# paper at small scale, offline): Conv-2 on scikit-learn's 8x8 digits, SGD lr 0.05 with momentum 0.9, batch 32,
# 10 epochs, 3 initialisations; 15 minutes on this project's 2-core machine (the linear probes' time not recorded).
# Usage, from the repository root: bash results/instability-digits/run.sh [OUT] (default: results/instability-digits).
# The committed runs keep each unit's done.json but not its masks and weights: run there, every unit counts as
# finished and only the summaries and plots are rebuilt, and the probes, which need the IMP run's weights, stop the
# script; an empty OUT retrains everything.
out=${1:-results/instability-digits}
here=$(dirname "$0")
run="--executor process --workers 2 --threads 1"
common="--dataset digits --model conv2 --epochs 10 --lr 0.05 --momentum 0.9 --batch-size 32 --seeds 3"
# the barrier against the rewind point, and the error along the path for each
lth-sparse instability $common --rewind-points init,iter:2,iter:5,iter:10,iter:20,epoch:1,epoch:2,epoch:5 \
  --out "$out/rewind-points" $run
# the earliest stable rewind point by bisection over iterations (Appendix C.3)
lth-sparse instability $common --search iter --search-step 2 --out "$out/search" $run
# the tickets of an IMP run rewound to iteration 20, and the barriers between successive tickets (Figure 2)
lth-sparse imp $common --rounds 8 --rewind iter:20 --out "$out/imp" $run
lth-sparse instability --source "$out/imp" --successive --seeds 3 --out "$out/tickets" $run
# momentum x batch size, with forgetting events and convergence speed (Table 1)
lth-sparse sweep "$here/grid.yaml" --out "$out/grid" $run
# linear probes of the IMP run's tickets at rounds 0, 4 and 8, one per seed (Tables 5 and 6)
for s in 0 1 2; do
  lth-sparse probe "$out/imp" --rounds 0 4 8 --seed $s --out "$out/probes/seed_$s"
done
