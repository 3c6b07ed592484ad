#!/usr/bin/env bash
# Data-parallel step time on one machine: 1 process vs 2 ranks vs 2 ranks with synchronised BN, interleaved over
# rounds. ResNet-20 W2A2, global batch 128, 12 steps (1536 images) of the Fashion-MNIST stand-in.
#   bash bench/dp_step.sh DATA_DIR [rounds]      (DATA_DIR = get-real-data.sh's fashion-as-cifar; needs a release build)
# Prints each run's epoch `seconds` and `comm_seconds` (the collectives after the backward) from metrics.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:?usage: dp_step.sh DATA_DIR [rounds]}
rounds=${2:-3}
bin=./target/release/lqnets
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
common=(--config configs/fashion/resnet20-w2a2.toml --set "data.dir=\"$data\"" --set data.train_limit=1536
    --set data.test_limit=256 --set optim.epochs=1 --set 'optim.milestones=[1]')
for r in $(seq "$rounds"); do
    for mode in one two sync; do
        case $mode in
            one) extra=() ;;
            two) extra=(--nproc 2) ;;
            sync) extra=(--nproc 2 --set run.sync_bn=true) ;;
        esac
        if ! "$bin" train "${common[@]}" "${extra[@]}" --out "$out/$mode-$r" >"$out/log" 2>&1; then
            tail -20 "$out/log"
            exit 1
        fi
        python3 -c "import json,sys; l=json.loads(open(sys.argv[1]).readlines()[-1]); \
print(f\"round $r $mode: {l['seconds']:.2f} s, comm {l.get('comm_seconds', 0):.3f} s\")" "$out/$mode-$r/metrics.jsonl"
    done
done
