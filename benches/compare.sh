#!/usr/bin/env bash
# Side-by-side MAE training-step benchmark: Tessera vs PyTorch, same machine,
# same run, both workloads, f32 and bf16, PyTorch both eager and through
# torch.compile (the best a user would run). Prints one JSON line per run,
# each naming the CPU that made it in its "cpu" field (model name, family,
# model and vector units, from /proc/cpuinfo: a cloud guest's generic "Intel
# Xeon" covers several generations, with AMX or without).
#   benches/compare.sh > results.jsonl
# Needs PyTorch (benches/pytorch/install.sh) and a quiet machine (uptime ≈ 0).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
TESSERA=target/release/tessera
PY=${PYTHON:-python3}
for round in 1 2; do
  for w in tiny32 base224; do
    if [ "$w" = tiny32 ]; then steps=20; warm=3; else steps=6; warm=2; fi
    $TESSERA bench --workload "$w" --precision f32 --steps $steps --warmup $warm
    $PY benches/pytorch/mae_step.py --workload "$w" --steps $steps --warmup $warm --threads 2
    $PY benches/pytorch/mae_step.py --workload "$w" --steps $steps --warmup $warm --threads 2 --compile
    if $TESSERA bench --workload tiny32 --precision bf16 --steps 1 --warmup 0 >/dev/null 2>&1; then
      $TESSERA bench --workload "$w" --precision bf16 --steps $steps --warmup $warm
      $PY benches/pytorch/mae_step.py --workload "$w" --steps $steps --warmup $warm --threads 2 --bf16
      $PY benches/pytorch/mae_step.py --workload "$w" --steps $steps --warmup $warm --threads 2 --bf16 --compile
    fi
  done
done
