#!/usr/bin/env bash
# The instability experiments of the README (Frankle et al. 2020 / the SGD-noise paper at small scale, offline):
# Conv-2 on scikit-learn's 8x8 digits, SGD lr 0.05 with momentum 0.9, batch 32, 10 epochs, 3 initialisations.
# Usage: bash results/instability-digits/run.sh [OUT] (default: results/instability-digits); a re-run resumes.
set -euo pipefail
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
