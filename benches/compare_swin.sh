#!/usr/bin/env bash
# Side-by-side SimMIM-on-Swin training-step benchmark: Tessera vs PyTorch
# (benches/pytorch/swin_step.py), same machine, alternating, two rounds, f32.
# Prints one JSON line per run.
#   benches/compare_swin.sh > results.jsonl
# Needs PyTorch (benches/pytorch/install.sh) and a quiet machine (uptime ≈ 0).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
TESSERA=target/release/tessera
PY=${PYTHON:-python3}
for round in 1 2; do
  for w in swin-mini32 swin-tiny224; do
    if [ "$w" = swin-mini32 ]; then steps=10; else steps=5; fi
    $TESSERA bench --workload "$w" --steps $steps
    (cd benches/pytorch && $PY swin_step.py --workload "$w" --steps $steps --threads 2)
  done
done
