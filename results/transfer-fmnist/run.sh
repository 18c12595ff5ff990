#!/usr/bin/env bash
set -euo pipefail
# Remakes results/transfer-fmnist (the README's transfer experiments, Morcos et al. 2019 at small scale, offline, and
# the few-shot tasks of the SGD-noise paper's Table 7): LeNet-300-100, the paper's SGD recipe shrunk to 10 epochs on
# 6,000 examples (batch 128, lr / 10 at epochs 5 and 7.5, late resetting to epoch 1), 20% global magnitude pruning
# per round for 20 rounds (1.15% of the weights left), 3 seeds; 23 minutes on this project's 2-core machine, and
# 1 minute more for the few-shot transfer.
# Usage, from the repository root: bash results/transfer-fmnist/run.sh [OUT] (default: results/transfer-fmnist).
# The committed runs keep each unit's done.json but not its masks: run there, every IMP unit counts as finished and
# the transfers, whose committed configs name their sources by the absolute paths they were made in, are refused as
# another config; an empty OUT retrains everything.
out=${1:-results/transfer-fmnist}
run="--executor process --workers 2 --threads 1 --no-plots"
recipe="--model lenet300 --preset morcos --epochs 10 --milestones 5 7.5 --batch-size 128 --rounds 20 --seeds 3"
adam="--preset morcos-adam --epochs 10 --milestones 5 7.5 --batch-size 128"
rounds="--rounds 0 2 4 6 8 10 12 14 16 18 20"
# the tickets: the sources, and the targets' own (digits has 1,151 training examples: all of them)
lth-sparse imp $recipe --train-size 6000 --dataset fashion-mnist:half=a --out "$out/imp-a-sgd" $run
lth-sparse imp $recipe --train-size 6000 --dataset fashion-mnist:half=b --out "$out/imp-b-sgd" $run
lth-sparse imp $recipe $adam --train-size 6000 --dataset fashion-mnist:half=b --out "$out/imp-b-adam" $run
lth-sparse imp $recipe --dataset digits:shape=1x28x28 --out "$out/imp-digits-sgd" $run
# same distribution (Section 4.1, Appendix A.2): half a -> half b, every (weights, mask) kind
lth-sparse transfer --source "$out/imp-a-sgd" --target fashion-mnist:half=b --tickets all --train-size 6000 \
  --target-ticket "$out/imp-b-sgd" $rounds --out "$out/a-to-b" $run
# across optimizers (Section 4.3): tickets found with SGD, trained with Adam
lth-sparse transfer --source "$out/imp-a-sgd" --target fashion-mnist:half=b $adam --train-size 6000 \
  --target-ticket "$out/imp-b-adam" $rounds --out "$out/a-to-b-adam" $run
# across data sets (Sections 4.2): a line per source, as the paper's figures
lth-sparse transfer --source "$out/imp-a-sgd" "$out/imp-digits-sgd" --target fashion-mnist:half=b --train-size 6000 \
  --target-ticket "$out/imp-b-sgd" $rounds --at 0.5 0.9 0.98 --out "$out/sources-to-b" $run
for d in imp-a-sgd imp-b-sgd imp-b-adam imp-digits-sgd a-to-b a-to-b-adam sources-to-b; do lth-sparse plot "$out/$d" >/dev/null; done
# few-shot (the SGD-noise paper's Section 5.2, Table 7): half a's tickets on class-balanced shares of half a;
# made after the figures above, without its own
lth-sparse transfer --source "$out/imp-a-sgd" --target fashion-mnist:half=a:subset=0.01 fashion-mnist:half=a:subset=0.02 \
  fashion-mnist:half=a:subset=0.05 fashion-mnist:half=a:subset=0.1 --rounds 0 10 20 --out "$out/few-shot" $run
