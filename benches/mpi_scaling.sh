#!/usr/bin/env bash
# Data-parallel pre-training on one machine: one process with T threads
# against R MPI ranks of T/R threads each, same global batch, on the
# synthetic data (no download). Workloads as `tessera bench`'s: tiny32
# (ViT-Ti/4 at 32, decoder 128/4/4, batch 64) and base224 (ViT-B/16 at 224,
# MAE's decoder, batch 8), the ranks summing gradients during backward
# (overlap, the default) and after it (--no-overlap). Prints one JSON line
# per run: median images/s and median gradient-sum time (rank 0's
# `reduce_s`: time in starting sums during backward plus waiting for them
# after it) over the steps after the first quarter.
#   benches/mpi_scaling.sh                 # 1 x 2 threads against 2 ranks x 1 thread
#   THREADS=16 RANKS="2 4 8 16" benches/mpi_scaling.sh   # a 16-core machine
# Needs Open MPI (README, "Several processes") and a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q --features mpi
B=target/release/tessera
THREADS=${THREADS:-2}
RANKS=${RANKS:-2}
ROUNDS=${ROUNDS:-2}
out=${OUT:-target/mpi-scaling}
rm -rf "$out"
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
common=(pretrain --recon-every 0 --ckpt-every 100000 --ckpt-minutes 0 --no-augment --quiet)
tiny=(--preset vit-tiny --img-size 32 --patch 4 --decoder-dim 128 --decoder-depth 4 --decoder-heads 4 --batch 64 --steps 40)
base=(--preset vit-base --img-size 224 --patch 16 --batch 8 --steps 8)
report() { # workload ranks threads folder
  python3 - "$@" <<'PY'
import json, statistics, sys
w, r, t, d = sys.argv[1:5]
rows = [json.loads(l) for l in open(d + "/metrics.jsonl")]
rows = rows[len(rows) // 4:]
ips = statistics.median(x["images_per_s"] for x in rows)
red = statistics.median(x.get("reduce_s", 0.0) for x in rows)
print(json.dumps({"workload": w, "ranks": int(r), "threads_per_rank": int(t),
                  "images_per_s": round(ips, 2), "reduce_s": round(red, 5)}))
PY
}
for round in $(seq "$ROUNDS"); do
  for w in tiny base; do
    if [ $w = tiny ]; then a=("${tiny[@]}"); else a=("${base[@]}"); fi
    d=$out/$w-1x$THREADS-$round
    $B --threads "$THREADS" "${common[@]}" "${a[@]}" --out "$d" >/dev/null
    report $w 1 "$THREADS" "$d"
    for r in $RANKS; do
      t=$((THREADS / r))
      for mode in overlap after; do
        d=$out/$w-${r}x$t-$mode-$round
        flag=(); if [ $mode = after ]; then flag=(--no-overlap); fi
        mpirun -np "$r" --bind-to none "$B" --threads "$t" "${common[@]}" "${a[@]}" "${flag[@]}" --out "$d" >/dev/null
        report "$w ($mode)" "$r" "$t" "$d"
      done
    done
  done
done
