#!/usr/bin/env python3
"""Checks `tessera probe`'s linear probe against scikit-learn.

Both fit multinomial logistic regression on standardised features of the
training images and score the test images. Tessera minimises
mean cross-entropy + l2/2·|W|²; scikit-learn's LogisticRegression(C) minimises
C·sum cross-entropy + 1/2·|W|², the same problem when C = 1 / (l2 · N).

Raw pixels need no model: a pixel's affine normalisation disappears in the
standardisation, so the features are the IDX bytes themselves. The script
runs `tessera probe --baselines --json` on the given checkpoint (its image
size must be 28) and prints both accuracies for the raw-pixel row.

Usage:
    pip install scikit-learn numpy
    python3 benches/probe/sklearn_probe.py --data-dir /usr/share/datasets/fashion-mnist \
        --checkpoint runs/pretrain/checkpoint.safetensors [--l2 1e-4]
"""
import argparse
import gzip
import json
import os
import subprocess
import sys
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler


def idx(path):
    """An IDX file (gzipped or not) as a numpy array."""
    for p in (path, path + ".gz"):
        if os.path.exists(p):
            raw = (gzip.open if p.endswith(".gz") else open)(p, "rb").read()
            dims = raw[3]
            shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
            return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)
    sys.exit(f"{path}: not found")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--l2", type=float, default=1e-4)
    ap.add_argument("--tessera", default="target/release/tessera")
    a = ap.parse_args()

    d = a.data_dir
    xtr = idx(f"{d}/train-images-idx3-ubyte").reshape(60000, -1).astype(np.float64)
    ytr = idx(f"{d}/train-labels-idx1-ubyte")
    xte = idx(f"{d}/t10k-images-idx3-ubyte").reshape(10000, -1).astype(np.float64)
    yte = idx(f"{d}/t10k-labels-idx1-ubyte")
    scaler = StandardScaler().fit(xtr)
    t = time.time()
    clf = LogisticRegression(C=1.0 / (a.l2 * len(ytr)), max_iter=5000, tol=1e-6)
    clf.fit(scaler.transform(xtr), ytr)
    sk = (clf.predict(scaler.transform(xte)) == yte).mean()
    sk_s = time.time() - t

    t = time.time()
    out = subprocess.run(
        [a.tessera, "probe", "--checkpoint", a.checkpoint, "--data", "fashion-mnist",
         "--data-dir", d, "--baselines", "--json", "--l2", str(a.l2)],
        check=True, capture_output=True, text=True).stdout
    ts_s = time.time() - t
    rows = {r["features"]: r for r in json.loads(out)["results"]}
    pix = next(v for k, v in rows.items() if "pixel" in k)
    print(json.dumps({
        "features": "raw pixels", "l2": a.l2,
        "sklearn_linear": round(float(sk), 4), "sklearn_iterations": int(clf.n_iter_[0]),
        "sklearn_seconds": round(sk_s, 1),
        "tessera_linear": pix["linear_probe"],
        "tessera_probe_seconds_all_rows": round(ts_s, 1),
        "difference_points": round(100 * (pix["linear_probe"] - float(sk)), 2),
    }))


if __name__ == "__main__":
    main()
