#!/usr/bin/env bash
set -euo pipefail
# Remakes results/layerwise-partial-reinit: magnitude IMP from the partial re-initialisation of each seed (the
# overlap of the round-15 tickets of results/layerwise-overlap-fmnist kept at its initial values, the rest redrawn),
# the README's partial re-initialisation test. Those tickets' masks are its input, so it is made by the second step
# of results/layerwise-overlap-fmnist/run.sh, which this runs whole (148 s for the sweep, then 88 s).
# Usage, from the repository root: bash results/layerwise-partial-reinit/run.sh [OUT] (default: that directory).
bash "$(dirname "$0")/../layerwise-overlap-fmnist/run.sh" results/layerwise-overlap-fmnist \
  "${1:-results/layerwise-partial-reinit}"
