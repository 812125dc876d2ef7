#!/usr/bin/env python3
"""Checks a Tessera SimMIM-Swin reconstruction against PyTorch, number by number.

`tessera reconstruct --checkpoint CKPT --dump DUMP.safetensors` writes the
model's inputs (`images (N, C, H, W)`, normalised), the mask (`mask (N, L)`,
1 = hidden), its predictions in MAE's patchify order (`pred (N, L, p*p*C)`)
and the loss. This script builds the from-scratch PyTorch SimMIM-Swin of
swin_step.py with the checkpoint's shape (its `tessera.config` metadata),
loads the checkpoint's tensors by their SimMIM names, runs it on the dumped
images and mask, and prints the largest differences.

    python3 compare_swin_dump.py --checkpoint runs/swin/checkpoint.safetensors --dump dump.safetensors
"""

import argparse
import json
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from parity_init import patchify, simmim_loss
from swin_step import SimMIM


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--dump", required=True)
    args = ap.parse_args(argv)
    with safe_open(args.checkpoint, "pt") as f:
        config = json.loads(f.metadata()["tessera.config"])["model"]
    e = config["encoder"]
    if "depths" not in e:
        sys.exit(f"{args.checkpoint} holds a ViT; this script checks Swin checkpoints")
    cfg = dict(img=e["img_size"][0], patch=e["patch_size"], dim=e["embed_dim"], depths=tuple(e["depths"]),
               heads=tuple(e["num_heads"]), window=e["window"])
    model = SimMIM(cfg, chans=e["in_chans"], drop_path=0.0).eval()
    state = {k: v for k, v in load_file(args.checkpoint).items() if not k.startswith("optimizer.")}
    model.load_state_dict(state, strict=True)
    dump = load_file(args.dump)
    imgs, pred_t, loss_t = dump["images"], dump["pred"], dump["loss"].item()
    g = cfg["img"] // cfg["patch"]
    mask = dump["mask"].reshape(-1, g, g)
    with torch.no_grad():
        x_rec = model.reconstruct(imgs, mask)
        loss = simmim_loss(imgs, x_rec, mask, cfg["patch"], e["in_chans"]).item()
    pred = patchify(x_rec, cfg["patch"])
    scale = pred.abs().max().item()
    diff = (pred - pred_t).abs().max().item()
    print(json.dumps({
        "images": imgs.shape[0],
        "loss_tessera": loss_t,
        "loss_pytorch": loss,
        "loss_rel_diff": abs(loss - loss_t) / max(abs(loss), 1e-12),
        "pred_max_abs_diff": diff,
        "pred_max_rel_diff": diff / max(scale, 1e-12),
    }))


if __name__ == "__main__":
    main()
