#!/usr/bin/env python3
"""PyTorch reference benchmark: one SimMIM pre-training step of a Swin on CPU.

The twin of `tessera bench --workload swin-tiny224|swin-mini32`. The model is
the from-scratch Swin of swin_parity.py (written from the paper and the
official architecture; the parity fixtures show Tessera computes the same
function) in SimMIM's arrangement (swin_simmim_parity.py): mask token after
the normalised patch embedding, stages, final norm, a 1x1 convolution to
stride^2 * 3 channels and a pixel shuffle, L1 on hidden pixels. Drop path 0.1
(Swin's default, linear over the blocks), as Tessera's presets.

Usage:
    python3 swin_step.py --workload swin-mini32           # prints 1 JSON line
    python3 swin_step.py --workload swin-tiny224 --steps 5

One timed step = zero_grad(set_to_none=True) + forward (SimMIM's random cell
mask, drawn inside the step as Tessera draws its own) + loss.backward() +
AdamW.step(). The input batch (torch.randn) is generated before each step's
timer starts. FLOPs are counted as in crates/mim/src/model/flops.rs: matrix
products only, a training step = 3 forwards.
"""

import argparse
import json
import math
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn

from machine import cpu_name
from parity_init import simmim_loss
from swin_parity import Swin

WORKLOADS = {
    # name: img, patch, dim, depths, heads, window, cell_px, batch (3 channels)
    "swin-tiny224": dict(img=224, patch=4, dim=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), window=7, cell=32, batch=8),
    "swin-mini32": dict(img=32, patch=2, dim=48, depths=(2, 2, 2), heads=(3, 6, 12), window=4, cell=8, batch=64),
}
CHANS = 3


class SwinForSimMIM(Swin):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, kw["dim"]))
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, x, mask):  # mask (B, H/p, W/p), 1 = hidden
        x = self.patch_embed.norm(self.patch_embed.proj(x).permute(0, 2, 3, 1))
        w = mask.unsqueeze(-1).type_as(x)
        x = x * (1 - w) + self.mask_token * w
        for layer in self.layers:
            x = layer(x)
        return self.norm(x).permute(0, 3, 1, 2)


class SimMIM(nn.Module):
    def __init__(self, cfg, chans=CHANS, drop_path=0.1):
        super().__init__()
        self.patch, self.chans = cfg["patch"], chans
        self.stride = cfg["patch"] << (len(cfg["depths"]) - 1)
        self.encoder = SwinForSimMIM(
            img=cfg["img"], patch=cfg["patch"], chans=chans, dim=cfg["dim"], depths=cfg["depths"],
            heads=cfg["heads"], window=cfg["window"], drop_path=drop_path,
        )
        width = cfg["dim"] << (len(cfg["depths"]) - 1)
        self.decoder = nn.Sequential(nn.Conv2d(width, self.stride**2 * chans, 1), nn.PixelShuffle(self.stride))

    def reconstruct(self, x, mask):
        return self.decoder(self.encoder(x, mask))

    def forward(self, x, mask):
        return simmim_loss(x, self.reconstruct(x, mask), mask, self.patch, self.chans)


def simmim_mask(batch, img, cell, patch, ratio=0.6):
    """SimMIM's MaskGenerator: ceil(ratio * cells) random cells of `cell` pixels, on the patch grid."""
    side = img // cell
    count = math.ceil(side * side * ratio)
    scale = cell // patch
    ids = torch.rand(batch, side * side).argsort(dim=1)[:, :count]
    m = torch.zeros(batch, side * side)
    m.scatter_(1, ids, 1.0)
    m = m.view(batch, side, side)
    return m.repeat_interleave(scale, 1).repeat_interleave(scale, 2)


def count_flops(cfg):
    """FLOPs of one training step (3 forwards), as crates/mim/src/model/flops.rs counts them."""
    p, d0, n_st = cfg["patch"], cfg["dim"], len(cfg["depths"])
    g = cfg["img"] // p
    f = 2.0 * g * g * p * p * CHANS * d0  # patch embedding
    for i, depth in enumerate(cfg["depths"]):
        side, d = g >> i, d0 << i
        n, w = side * side, min(cfg["window"], side)
        f += depth * (8.0 * n * d * d + 4.0 * n * w * w * d + 4.0 * n * d * 4 * d)
        if i + 1 < n_st:
            f += 2.0 * (n // 4) * 4 * d * 2 * d
    stride = p << (n_st - 1)
    tokens = (cfg["img"] // stride) ** 2
    f += 2.0 * tokens * (d0 << (n_st - 1)) * stride * stride * CHANS  # decoder.0
    return 3.0 * cfg["batch"] * f


def param_groups(model, weight_decay):
    """No decay on 1-D tensors, biases, the mask token and relative tables (SimMIM's rule)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        skip = p.ndim < 2 or name.endswith(".bias") or name.endswith("mask_token")
        (no_decay if skip or "relative_position_bias_table" in name else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="swin-mini32")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error("need --steps >= 1 and --warmup >= 0")
    cfg = dict(WORKLOADS[args.workload])
    if args.batch:
        cfg["batch"] = args.batch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    torch.manual_seed(args.seed)
    model = SimMIM(cfg).train()
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.999))

    B, S = cfg["batch"], cfg["img"]
    times, loss_val = [], float("nan")
    for i in range(args.warmup + args.steps):
        imgs = torch.randn(B, CHANS, S, S)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(imgs, simmim_mask(B, S, cfg["cell"], cfg["patch"]))
        loss.backward()
        opt.step()
        t1 = time.perf_counter()
        if i >= args.warmup:
            times.append(t1 - t0)
        loss_val = loss.item()

    med = statistics.median(times)
    gflop = count_flops(cfg) / 1e9
    print(json.dumps({
        "engine": "pytorch",
        "torch": torch.__version__,
        "precision": "f32",
        "workload": args.workload,
        "batch": B,
        "threads": args.threads,
        "cpu": cpu_name(),
        "steps": args.steps,
        "images_per_s": B / med,
        "median_step_s": med,
        "min_step_s": min(times),
        "gflop_per_step": gflop,
        "gflops": gflop / med,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loss": loss_val,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
