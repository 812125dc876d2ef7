#!/usr/bin/env python3
"""Checks `tessera probe`'s linear probe against scikit-learn.

Runs `tessera probe --baselines --json --save-features DIR` on a checkpoint,
then fits scikit-learn's LogisticRegression (lbfgs) on each row's saved
features after the same standardisation and prints both accuracies per row.
Tessera minimises mean cross-entropy + l2/2·|W|²; scikit-learn minimises
C·sum cross-entropy + 1/2·|W|², the same problem when C = 1 / (l2 · N).

Usage:
    pip install scikit-learn numpy safetensors
    python3 benches/probe/sklearn_probe.py --checkpoint runs/x/checkpoint.safetensors \
        -- --data fashion-mnist [--l2 1e-4]      # arguments after -- go to tessera probe
Rows whose name contains a --skip string are not refitted (raw pixels take
scikit-learn about 9 minutes on 2 cores).
"""
import argparse
import glob
import json
import os
import subprocess
import tempfile
import time

import numpy as np
from safetensors.numpy import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--l2", type=float, default=1e-4)
    ap.add_argument("--tessera", default="target/release/tessera")
    ap.add_argument("--skip", action="append", default=[])
    ap.add_argument("probe_args", nargs="*")
    a = ap.parse_args()

    out_dir = tempfile.mkdtemp(prefix="tessera-features-")
    t = time.time()
    out = subprocess.run(
        [a.tessera, "probe", "--checkpoint", a.checkpoint, "--baselines", "--json",
         "--l2", str(a.l2), "--save-features", out_dir] + a.probe_args,
        check=True, capture_output=True, text=True).stdout
    tessera_s = time.time() - t
    rows = json.loads(out)["results"]
    print(f"tessera probe: {len(rows)} rows in {tessera_s:.1f} s (features included)")
    for r in rows:
        name = r["features"]
        if any(s in name for s in a.skip):
            continue
        stem = "".join(c.lower() if c.isascii() and c.isalnum() else "-" for c in name).strip("-")
        f = load_file(os.path.join(out_dir, stem + ".safetensors"))
        xtr, ytr = f["train"].astype(np.float64), f["train_labels"].astype(int)
        xte, yte = f["test"].astype(np.float64), f["test_labels"].astype(int)
        scaler = StandardScaler().fit(xtr)
        t = time.time()
        clf = LogisticRegression(C=1.0 / (a.l2 * len(ytr)), max_iter=5000, tol=1e-6)
        clf.fit(scaler.transform(xtr), ytr)
        sk = float((clf.predict(scaler.transform(xte)) == yte).mean())
        print(json.dumps({
            "features": name, "dim": int(xtr.shape[1]),
            "tessera_linear": round(r["linear_probe"], 4), "sklearn_linear": round(sk, 4),
            "difference_points": round(100 * (r["linear_probe"] - sk), 2),
            "sklearn_iterations": int(np.max(clf.n_iter_)), "sklearn_seconds": round(time.time() - t, 1),
        }))
    for p in glob.glob(os.path.join(out_dir, "*.safetensors")):
        os.remove(p)
    os.rmdir(out_dir)


if __name__ == "__main__":
    main()
