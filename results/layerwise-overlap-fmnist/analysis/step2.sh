#!/bin/bash
# the partial re-initialisation test per seed: overlap of the three importances' round-15 tickets, a partial init,
# magnitude IMP from it, and the survival of the overlapping connections
set -e
R=/work/main/results/layerwise-overlap-fmnist
L=/work/venv/bin/lth-sparse
for s in 0 1 2; do
  runs="$R/importance=magnitude,seed=$s $R/importance=l1,seed=$s $R/importance=l2,seed=$s"
  $L importance-overlap $runs --round 15 --seed $s --write-partial-init /work/layerwise/partial_$s.pt --redraw-seed $((100 + s)) --out /work/layerwise/overlap_$s.json
done
for s in 0 1 2; do
  $L imp --dataset fashion-mnist --model lenet300 --rounds 15 --epochs 10 --schedule cosine --lr 0.05 --train-size 6000 --seed $s --init-file /work/layerwise/partial_$s.pt --threads 1 --no-progress --no-plots --out /work/main/results/layerwise-partial-reinit/seed_$s > /work/logs/partial_$s.log 2>&1 &
  if [ $s = 1 ]; then wait; fi
done
wait
for s in 0 1 2; do
  runs="$R/importance=magnitude,seed=$s $R/importance=l1,seed=$s $R/importance=l2,seed=$s"
  $L importance-overlap $runs --round 15 --seed $s --survival "/work/main/results/layerwise-partial-reinit/seed_$s" --out /work/layerwise/survival_$s.json
done
