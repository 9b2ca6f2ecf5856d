#!/usr/bin/env bash
# Regenerates experiments/results/two-clients-convnet/ (issue 19): two federated clients, iid and
# Dirichlet 0.1, never averaged and FedAvg every 2 epochs, three seeds each; then the table.
set -euo pipefail
cd "$(dirname "$0")/.."
R=experiments/results/two-clients-convnet
mkdir -p "$R"
TIMINGS="$R/timings.txt"
: > "$TIMINGS"
source experiments/timed.sh
for split in "iid --set data.partition=iid" "dirichlet0.1 --set data.partition=dirichlet --set data.alpha=0.1"; do
  for strategy in local periodic; do
    set -- $split
    name="$1-$strategy"; shift
    for seed in 0 1 2; do
      timed "$name-seed-$seed" fedbarrier run experiments/two-clients-convnet.toml --quiet --force \
        --set seed=$seed "$@" --set strategy.name=$strategy --set output.plots=false \
        --out "$R/$name/seed-$seed"
    done
  done
done
python experiments/layerwise_report.py "$R" iid-local iid-periodic dirichlet0.1-local dirichlet0.1-periodic
rm -rf "$R"/*/seed-*/clients "$R"/*/seed-*/state
