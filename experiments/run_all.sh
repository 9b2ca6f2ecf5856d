#!/usr/bin/env bash
# Regenerates every committed result in experiments/results/ on a 2-core CPU, one script after
# another (they must not share the cores: their wall times are part of the results). About 3
# hours in all; the wall time of each script's runs goes to its own timings file, named in
# experiments/README.md. Needs Debian's dataset-fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
bash experiments/run_small.sh                    # -small results, deep linear (~25 min)
bash experiments/run_layerwise.sh                # convnet, 15 runs (~22 min)
bash experiments/run_layerwise_deep.sh               # NF-ResNet18 and VGG11, 18 runs (~25 min)
bash experiments/run_two_clients_convnet.sh      # 12 runs (~12 min)
bash experiments/run_alignment.sh                # alignment (a) and (b) (~30 min)
bash experiments/run_personalization_fmnist.sh   # 63 runs (~65-90 min)
python experiments/personalization_fmnist_report.py
fedbarrier compare experiments/quickstart.toml --quiet --force \
  --strategies fedavg,fedper,lg-fedavg,barrier-aware,local --seeds 0,1 \
  --out experiments/results/quickstart-compare   # (~3 min)
