#!/usr/bin/env bash
# Regenerates experiments/results/layerwise-{resnet18,vgg11}/ (issue 19, on 2 CPU cores): two
# models of the paper's normalization-free architectures at a Fashion-MNIST width
# (experiments/layerwise-MODEL.toml), trained centrally, same initialization and different
# initializations, constant learning rate after a warm-up, and the cosine schedule as a control;
# three seeds each (~15 min for the ResNet18, ~10 for the VGG11). Then each model's summary.
# Usage: run_layerwise_deep.sh [MODEL ...]   (default: resnet18 vgg11)
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/timed.sh
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(resnet18 vgg11)
for model in "${models[@]}"; do
  R=experiments/results/layerwise-$model
  mkdir -p "$R"
  TIMINGS="$R/timings.txt"
  : > "$TIMINGS"
  for setting in "same-init" "own-init --set train.client_init=own" \
                 "same-init-cosine --set train.lr_schedule=cosine"; do
    words=($setting)
    name=${words[0]}
    for seed in 0 1 2; do
      timed "$name-seed-$seed" fedbarrier run "experiments/layerwise-$model.toml" --quiet --force \
        --set seed=$seed "${words[@]:1}" --out "$R/$name/seed-$seed"
    done
  done
  python experiments/layerwise_report.py "$R" same-init own-init same-init-cosine
  find "$R" -path "*/seed-[12]/plots/*" -delete
  find "$R" -path "*/seed-0/plots/*" -not -name "per_layer_test_error.png" -not -name "full_barrier.png" \
    -not -name "cumulative_test_error.png" -delete
  rm -rf "$R"/*/seed-*/clients "$R"/*/seed-*/state
done
