#!/usr/bin/env bash
# Regenerates experiments/results/layerwise-resnet18/ (issue 19, on 2 CPU cores): two
# normalization-free ResNet18 (width 8) trained centrally on Fashion-MNIST, same initialization
# and different initializations, constant learning rate 0.05; three seeds each. Then the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
R=experiments/results/layerwise-resnet18
mkdir -p "$R"
TIMINGS="$R/timings.txt"
: > "$TIMINGS"
source experiments/timed.sh
for setting in "same-init" "own-init --set train.client_init=own"; do
  set -- $setting
  name=$1; shift
  for seed in 0 1 2; do
    timed "$name-seed-$seed" fedbarrier run experiments/layerwise-resnet18.toml --quiet --force \
      --set seed=$seed "$@" --out "$R/$name/seed-$seed"
  done
done
python experiments/layerwise_report.py "$R"
find "$R" -path "*/seed-[12]/plots/*" -delete
find "$R" -path "*/seed-0/plots/*" -not -name "per_layer_test_error.png" -not -name "full_barrier.png" \
  -not -name "cumulative_test_error.png" -delete
rm -rf "$R"/*/seed-*/clients "$R"/*/seed-*/state
