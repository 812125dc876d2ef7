#!/usr/bin/env python3
"""Plot masked-patch loss vs optimizer step for one or more metrics.jsonl files.

Reads the per-step JSON lines written by `tessera pretrain` and by
`fmnist_pretrain.py` (only the fields `step` and `loss` are used), draws each
run's raw loss as a thin light line with a centred moving average (default 25
steps) on top, and writes a PNG (900x500 px by default).

Usage:
    python3 plot_losses.py \\
        --run tessera=/work/runs/fmnist-f32/metrics.jsonl \\
        --run pytorch=runs/pt-fmnist/metrics.jsonl \\
        --out docs/img/fmnist-loss.png

A run that is still being written is fine: an incomplete last line is skipped.
"""

import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read_metrics(path):
    """Returns (steps, losses) as numpy arrays, sorted by step, non-finite losses dropped."""
    steps, losses = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
                s, loss = int(rec["step"]), float(rec["loss"])
            except (ValueError, KeyError, TypeError) as e:
                print(f"{path}:{n}: skipped ({e})", file=sys.stderr)
                continue
            if np.isfinite(loss):
                steps.append(s)
                losses.append(loss)
    order = np.argsort(steps, kind="stable")
    return np.asarray(steps)[order], np.asarray(losses)[order]


def moving_average(y, window):
    """Centred mean over `window` points (window // 2 on each side). Near the
    ends the window shrinks symmetrically (the first and last points are
    their own average), so the smooth curve neither lags behind the fast drop
    of the first steps nor is dragged by points on one side only."""
    n = len(y)
    if window <= 1 or n == 0:
        return y.astype(float)
    c = np.cumsum(np.insert(y.astype(float), 0, 0.0))
    i = np.arange(n)
    half = np.minimum(np.minimum(i, n - 1 - i), window // 2)
    lo, hi = i - half, i + half + 1
    return (c[hi] - c[lo]) / (hi - lo)


def parse_run(spec):
    label, sep, path = spec.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"--run wants LABEL=PATH, got {spec!r}")
    return label, path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=parse_run, action="append", required=True, metavar="LABEL=PATH",
                    help="a metrics.jsonl file and its legend label (repeat for several runs)")
    ap.add_argument("--out", default="/work/main/docs/img/fmnist-loss.png")
    ap.add_argument("--window", type=int, default=25, help="moving-average window in steps")
    ap.add_argument("--title", default="MAE pre-training on Fashion-MNIST")
    ap.add_argument("--logy", action="store_true", help="logarithmic loss axis")
    ap.add_argument("--width", type=int, default=900, help="pixels")
    ap.add_argument("--height", type=int, default=500, help="pixels")
    args = ap.parse_args(argv)

    dpi = 100
    fig, ax = plt.subplots(figsize=(args.width / dpi, args.height / dpi), dpi=dpi)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, path) in enumerate(args.run):
        steps, loss = read_metrics(path)
        if len(steps) == 0:
            print(f"{path}: no steps, skipped", file=sys.stderr)
            continue
        color = colors[i % len(colors)]
        ax.plot(steps, loss, color=color, alpha=0.35, linewidth=0.8)
        smooth = moving_average(loss, args.window)
        tail = float(np.mean(loss[-max(args.window, 1):]))  # legend: mean of the last window
        ax.plot(steps, smooth, color=color, linewidth=1.8,
                label=f"{label} (step {steps[-1]}, last {min(len(loss), max(args.window, 1))} avg {tail:.4f})")
        print(f"{label}: {len(steps)} steps, first loss {loss[0]:.4f}, last {loss[-1]:.4f}, "
              f"mean of the last {min(len(loss), max(args.window, 1))} {tail:.4f}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("masked-patch loss (norm-pix MSE)")
    if args.logy:
        ax.set_yscale("log")
    ax.set_title(args.title + (f" (raw, and {args.window}-step moving average)" if args.window > 1 else ""))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=dpi)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
