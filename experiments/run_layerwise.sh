#!/usr/bin/env bash
# Regenerates experiments/results/layerwise-convnet/ (issue 19, on 2 CPU cores): two convnets
# trained centrally, same initialization and different initializations, constant learning rate,
# and the same-initialization cosine control; three seeds each. Then the summary table.
set -euo pipefail
cd "$(dirname "$0")/.."
R=experiments/results/layerwise-convnet
mkdir -p "$R"
: > "$R/timings.txt"
for setting in "same-init" "own-init --set train.client_init=own" "same-init-cosine --set train.lr_schedule=cosine"; do
  set -- $setting
  name=$1; shift
  for seed in 0 1 2; do
    start=$SECONDS
    fedbarrier run experiments/layerwise-convnet.toml --quiet --force --set seed=$seed "$@" \
      --out "$R/$name/seed-$seed"
    echo "$name-seed-$seed $((SECONDS - start)) s" >> "$R/timings.txt"
  done
done
python experiments/layerwise_report.py "$R"
rm -rf "$R"/*/seed-*/clients "$R"/*/seed-*/state
