#!/usr/bin/env bash
# Everything a session lent the 16-core machine should measure, in one call
# (../shared/device/README.md: one prepared script, results under $OUT, about
# five minutes). That machine has no Rust toolchain: build here first,
#
#   cargo build --release && cargo build --release -p tessera-kernels --examples
#   cp "$(cargo test --release -p tessera-kernels --no-run --message-format=json \
#         | python3 -c 'import json,sys
#   for l in sys.stdin:
#       m = json.loads(l)
#       if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "tessera_kernels" and m.get("executable"):
#           print(m["executable"])')" target/release/kernels-tests
#
# then run `bash benches/device.sh` through the device tool, carrying
# target/release/tessera, target/release/kernels-tests and
# target/release/examples/{peak,gemm_shapes,scaling}.
#
# What it writes under $OUT:
#   kernels.txt    FMA peak and bandwidth; the GEMM shapes at 1 and 16 threads;
#                  the split's estimated overhead; the kernels' own tests, which
#                  there also run the AMX bf16 path (this machine has no AMX).
#   scaling.jsonl  benches/scaling.sh: Tessera and PyTorch alternating, at
#                  THREADS (default "1 4 16"), tiny32 and base224, f32 and bf16.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
B=target/release
{
  echo "== $(date -u) $(nproc) cores: $(python3 benches/pytorch/machine.py 2>/dev/null || grep -m1 "model name" /proc/cpuinfo)"
  "$B/examples/peak"
  for t in 1 16; do
    echo "== gemm_shapes, $t threads"
    RAYON_NUM_THREADS=$t "$B/examples/gemm_shapes"
  done
  echo "== scaling (split overhead estimated on one core)"
  RAYON_NUM_THREADS=1 "$B/examples/scaling"
  if [ -x "$B/kernels-tests" ]; then
    echo "== kernels tests"
    "$B/kernels-tests" --test-threads 4 2>&1 | tail -n 25
  fi
} > "$OUT/kernels.txt" 2>&1
THREADS=${THREADS:-"1 4 16"} TESSERA="$B/tessera" benches/scaling.sh > "$OUT/scaling.jsonl" 2> "$OUT/scaling.err"
echo "device.sh: results in $OUT"
