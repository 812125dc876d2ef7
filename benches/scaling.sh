#!/usr/bin/env bash
# Thread scaling of one MAE training step: Tessera and PyTorch alternating, at
# 1, 2, 4, 8 and 16 threads (those this machine has), tiny32 and base224, f32
# and bf16 (bf16 only where the engine can: Tessera needs AMX, PyTorch runs
# its autocast anywhere). One JSON line per run, on standard output:
#
#   benches/scaling.sh > docs/results/scaling-$(hostname).jsonl
#
# Environment: TESSERA (binary, default target/release/tessera, built if
# missing and cargo is here), PYTHON (default python3, needs
# benches/pytorch/install.sh), THREADS (default: the powers of two up to the
# core count, and the core count), WORKLOADS (default "tiny32 base224"),
# PRECISIONS (default "f32 bf16"), ROUNDS (default 1).
#
# On a machine without a Rust toolchain (the lent 16-core machine), build here
# and carry target/release/tessera; this script and benches/pytorch/ travel with
# the tree. Run it on a quiet machine: under load PyTorch's OpenMP threads slow
# down far more than rayon's, and the ratios lie.
set -euo pipefail
cd "$(dirname "$0")/.."

TESSERA=${TESSERA:-target/release/tessera}
PY=${PYTHON:-python3}
if [ ! -x "$TESSERA" ]; then
  command -v cargo >/dev/null || { echo "scaling.sh: no $TESSERA and no cargo to build it" >&2; exit 2; }
  cargo build --release -q
fi
cores=$(nproc)
if [ -z "${THREADS:-}" ]; then
  THREADS=""
  for t in 1 2 4 8 16 32 64; do [ "$t" -le "$cores" ] && THREADS="$THREADS $t"; done
  case " $THREADS " in *" $cores "*) ;; *) THREADS="$THREADS $cores" ;; esac
fi
WORKLOADS=${WORKLOADS:-tiny32 base224}
PRECISIONS=${PRECISIONS:-f32 bf16}
ROUNDS=${ROUNDS:-1}
have_torch=1
$PY -c "import torch" 2>/dev/null || { have_torch=0; echo "scaling.sh: no PyTorch; Tessera only" >&2; }
tessera_bf16=0
"$TESSERA" bench --workload tiny32 --precision bf16 --steps 1 --warmup 0 >/dev/null 2>&1 && tessera_bf16=1

for round in $(seq "$ROUNDS"); do
  for t in $THREADS; do
    for w in $WORKLOADS; do
      if [ "$w" = tiny32 ]; then steps=20; warm=3; else steps=6; warm=2; fi
      for p in $PRECISIONS; do
        if [ "$p" = f32 ] || [ "$tessera_bf16" = 1 ]; then
          "$TESSERA" --threads "$t" bench --workload "$w" --precision "$p" --steps $steps --warmup $warm
        fi
        if [ "$have_torch" = 1 ]; then
          flag=""; [ "$p" = bf16 ] && flag="--bf16"
          $PY benches/pytorch/mae_step.py --workload "$w" --steps $steps --warmup $warm --threads "$t" $flag
        fi
      done
    done
  done
done
