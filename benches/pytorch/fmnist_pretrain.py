#!/usr/bin/env python3
"""PyTorch reference for Tessera's Fashion-MNIST MAE pre-training recipe.

Runs the same recipe as

    tessera pretrain --data fashion-mnist --epochs 10 --batch 256 --lr 1e-3 \\
        --warmup-epochs 1 --dim 192 --depth 6 --heads 3 \\
        --decoder-dim 128 --decoder-depth 2 --decoder-heads 4 --target norm-pix

with the from-scratch PyTorch MAE of `mae_model.py` (official
facebookresearch/mae `models_mae.py` names and semantics), and exports a
checkpoint that `tessera probe` / `tessera reconstruct` can load.

Data: the Fashion-MNIST train split (60000 grey 28x28 images) from the gzipped
IDX files, pixels / 255. Each epoch is a fresh random permutation; the last
partial batch is dropped (234 steps of 256). Every image, every time it is
drawn: torchvision's RandomResizedCrop(28, scale=(0.2, 1), ratio=(3/4, 4/3))
(10 attempts, else central crop) resized bilinearly with antialiasing,
horizontal flip with p = 0.5, then (x - 0.2860) / 0.3530. Implemented with
torch ops only (no torchvision).

Optimizer: AdamW(betas=(0.9, 0.95), eps=1e-8), weight decay 0.05 on weights
with ndim >= 2 except cls_token / mask_token / pos embeds; per-step linear
warm-up then half-cycle cosine to 0 (MAE's adjust_learning_rate, per step):
update s (0-based) uses lr = peak * s / warmup for s < warmup, else
0.5 * peak * (1 + cos(pi * (s - warmup) / (total - warmup))).

Writes into --out:
    metrics.jsonl            one JSON line per optimizer step: step (1-based),
                             epoch (= (step - 1) / steps_per_epoch, as Tessera),
                             loss, lr (used by that update), time_s (since the
                             first step began), images_per_s (batch / wall time
                             of the step, augmentation included), grad_norm
                             (global L2 norm before the update, as Tessera) and
                             data_s (augmentation time of the step)
    checkpoint.safetensors   float32 state_dict + Tessera metadata, written
                             (atomically) after every epoch and at the end

Usage:
    python3 fmnist_pretrain.py --out runs/pt-fmnist                  # full run (10 epochs)
    python3 fmnist_pretrain.py --out /tmp/pt-smoke --steps-limit 20  # smoke test
    python3 fmnist_pretrain.py --out runs/pt-fmnist-bf16 --bf16      # bf16 autocast
"""

import argparse
import gzip
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from mae_model import LN_EPS, MLP_RATIO, MaskedAutoencoderViT, param_groups

FMNIST_MEAN = 0.2860  # Tessera's Normalization for Fashion-MNIST
FMNIST_STD = 0.3530


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------
def read_idx(path):
    """Reads a (gzipped) IDX file into a numpy array (big-endian header)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims}, file holds {arr.size} values")
    return arr.reshape(dims)


def load_fmnist_train(data_dir):
    """Returns (images float32 [N, 1, 28, 28] in [0, 1], labels int64 [N])."""
    imgs = read_idx(os.path.join(data_dir, "train-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, "train-labels-idx1-ubyte.gz"))
    if imgs.ndim != 3 or imgs.shape[0] != labels.shape[0]:
        raise ValueError(f"unexpected IDX shapes {imgs.shape} / {labels.shape}")
    x = torch.from_numpy(imgs.astype(np.float32) / 255.0).unsqueeze(1).contiguous()
    return x, torch.from_numpy(labels.astype(np.int64))


# --------------------------------------------------------------------------
# Augmentation (torchvision semantics, torch ops only)
# --------------------------------------------------------------------------
def random_resized_crop_params(n, height, width, scale, ratio, gen):
    """torchvision RandomResizedCrop.get_params for n images at once.

    Per image: up to 10 attempts at area = U(scale) * H * W and aspect ratio
    exp(U(log ratio)); w = round(sqrt(area * r)), h = round(sqrt(area / r))
    (round half to even, as Python's round); the first attempt with
    0 < w <= W and 0 < h <= H wins, with top ~ U{0..H-h}, left ~ U{0..W-w}.
    If none fits: the whole image, centrally cropped to the nearest allowed
    ratio. Returns int64 tensors (top, left, h, w), each [n].
    """
    area = float(height * width)
    u = torch.rand(n, 10, 2, generator=gen, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lr0 + (lr1 - lr0) * u[..., 1])
    w = torch.round(torch.sqrt(target * aspect))  # torch.round: half to even
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    any_ok = ok.any(dim=1)
    first = torch.argmax(ok.to(torch.int8), dim=1)  # index of the first True
    rows = torch.arange(n)
    w = w[rows, first].long()
    h = h[rows, first].long()

    # Fallback: central crop (whole image when its ratio is inside the range).
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    w = torch.where(any_ok, w, torch.full_like(w, fw))
    h = torch.where(any_ok, h, torch.full_like(h, fh))

    v = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    top = torch.floor(v[:, 0] * (height - h + 1).double()).long().clamp_max(height - h)
    left = torch.floor(v[:, 1] * (width - w + 1).double()).long().clamp_max(width - w)
    top = torch.where(any_ok, top, (height - h) // 2)
    left = torch.where(any_ok, left, (width - w) // 2)
    return top, left, h, w


def augment_batch(imgs, gen, size=(28, 28), scale=(0.2, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0),
                  mean=FMNIST_MEAN, std=FMNIST_STD):
    """RandomResizedCrop + RandomHorizontalFlip + Normalize on [B, C, H, W] in [0, 1]."""
    B, C, H, W = imgs.shape
    top, left, h, w = random_resized_crop_params(B, H, W, scale, ratio, gen)
    flip = torch.rand(B, generator=gen) < 0.5
    out = torch.empty(B, C, size[0], size[1], dtype=imgs.dtype)
    top, left, h, w, flip = (t.tolist() for t in (top, left, h, w, flip))
    for i in range(B):
        crop = imgs[i:i + 1, :, top[i]:top[i] + h[i], left[i]:left[i] + w[i]]
        # PIL-style triangle filter (support max(scale, 1)), half-pixel centres:
        # torchvision's resized_crop(..., antialias=True) on tensors.
        r = F.interpolate(crop, size=size, mode="bilinear", align_corners=False, antialias=True)
        out[i] = r[0].flip(-1) if flip[i] else r[0]
    return (out - mean) / std


# --------------------------------------------------------------------------
# Schedule, config, checkpoint
# --------------------------------------------------------------------------
def lr_at(step, peak, warmup, total, min_lr=0.0):
    """Tessera's TrainConfig::lr_at (MAE's adjust_learning_rate, per step)."""
    if step < warmup:
        return peak * step / warmup
    progress = min((step - warmup) / (total - warmup), 1.0) if total > warmup else 1.0
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def tessera_config(args, batch, base_lr, warmup, total):
    """Tessera's TrainConfig as a compact JSON string (same fields, same nesting)."""
    cfg = {
        "model": {
            "encoder": {
                "img_size": [28, 28], "patch_size": args.patch, "in_chans": 1,
                "embed_dim": args.dim, "depth": args.depth, "num_heads": args.heads,
                "mlp_ratio": MLP_RATIO, "pos_embed": "sin-cos", "pos_drop": 0.0,
                "norm_eps": LN_EPS,
            },
            "method": {"kind": "mae", "decoder": {
                "embed_dim": args.decoder_dim, "depth": args.decoder_depth,
                "num_heads": args.decoder_heads, "mlp_ratio": MLP_RATIO}},
            "target": {"kind": "pixels", "loss": "mse", "norm_pix": True},
        },
        "masking": {"kind": "random", "ratio": args.mask_ratio},
        "batch_size": batch,
        "accum_steps": 1,
        "base_lr": base_lr,
        "min_lr": args.min_lr,
        "weight_decay": args.weight_decay,
        "betas": [0.9, 0.95],
        "warmup_steps": warmup,
        "total_steps": total,
        "clip_grad": None,
        "seed": args.seed,
        "precision": "bf16" if args.bf16 else "f32",
    }
    s = json.dumps(cfg, separators=(",", ":"))
    # Python writes 1e-06; serde reads either, but keep Tessera's spelling.
    s = s.replace('"norm_eps":1e-06', '"norm_eps":0.000001')
    assert json.loads(s) == cfg
    return s


def save_checkpoint(model, path, config_json, step, elapsed):
    from safetensors.torch import save_file
    sd = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": "pt",
        "tessera.config": config_json,
        # Informational (not read by Tessera; no optimizer state, so not resumable).
        "pytorch.step": str(step),
        "pytorch.train_time_s": f"{elapsed:.3f}",
        "pytorch.torch": torch.__version__,
        "pytorch.source": "benches/pytorch/fmnist_pretrain.py",
    }
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file(sd, tmp, metadata=meta)
    os.replace(tmp, path)  # atomic, like Tessera's checkpoints


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------
def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--epochs", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3, help="absolute peak learning rate")
    ap.add_argument("--min-lr", type=float, default=0.0)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--decoder-dim", type=int, default=128)
    ap.add_argument("--decoder-depth", type=int, default=2)
    ap.add_argument("--decoder-heads", type=int, default=4)
    ap.add_argument("--no-augment", action="store_true", help="no crop/flip (normalize only)")
    ap.add_argument("--bf16", action="store_true",
                    help="forward + loss under torch.autocast('cpu', dtype=torch.bfloat16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps-limit", type=int, help="stop after this many steps (smoke tests)")
    ap.add_argument("--log-every", type=int, default=50)
    args = ap.parse_args(argv)
    if 28 % args.patch:
        ap.error("--patch must divide 28")
    if args.epochs <= 0 or args.batch < 1:
        ap.error("need --epochs > 0 and --batch >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    torch.manual_seed(args.seed)  # init, then the masking noise (global generator)
    data_gen = torch.Generator().manual_seed(args.seed)  # permutations + augmentation

    x_train, _ = load_fmnist_train(args.data_dir)
    n = x_train.shape[0]
    B = args.batch
    spe = n // B  # drop_last
    if spe == 0:
        sys.exit(f"batch {B} is larger than the {n} training images")
    total = max(1, round(args.epochs * spe))
    warmup = round(args.warmup_epochs * spe)
    if warmup > total:
        sys.exit(f"warm-up {warmup} exceeds the {total} total steps")
    peak = args.lr
    base_lr = peak * 256 / B
    config_json = tessera_config(args, B, base_lr, warmup, total)
    run_steps = total if args.steps_limit is None else min(total, args.steps_limit)

    model = MaskedAutoencoderViT(
        img_size=28, patch_size=args.patch, in_chans=1,
        embed_dim=args.dim, depth=args.depth, num_heads=args.heads,
        decoder_embed_dim=args.decoder_dim, decoder_depth=args.decoder_depth,
        decoder_num_heads=args.decoder_heads, mlp_ratio=MLP_RATIO, norm_pix_loss=True)
    model.train()
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=0.0, betas=(0.9, 0.95), eps=1e-8)

    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "checkpoint.safetensors")
    metrics = open(os.path.join(args.out, "metrics.jsonl"), "w")
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"pre-training PyTorch MAE ViT {args.dim}/{args.depth}/{args.heads} "
          f"(patch {args.patch}, 28x28x1), decoder {args.decoder_dim}/{args.decoder_depth}/"
          f"{args.decoder_heads}, {n_params} trainable params, "
          f"{'bf16 autocast' if args.bf16 else 'f32'}; Fashion-MNIST {n} images, "
          f"{total} steps of {B} ({spe} per epoch, warm-up {warmup}), peak lr {peak:g}, "
          f"running {run_steps} steps, torch {torch.__version__}, {args.threads} threads, "
          f"output {args.out}", flush=True)

    perm = None
    t0 = time.perf_counter()
    tick = t0
    loss_v = float("nan")
    for s in range(run_steps):
        pos = s % spe
        if pos == 0:
            perm = torch.randperm(n, generator=data_gen)
        idx = perm[pos * B:(pos + 1) * B]
        t_data = time.perf_counter()
        batch = x_train[idx]
        if args.no_augment:
            imgs = (batch - FMNIST_MEAN) / FMNIST_STD
        else:
            imgs = augment_batch(batch, data_gen)
        data_s = time.perf_counter() - t_data

        lr = lr_at(s, peak, warmup, total, args.min_lr)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss, _, _ = model(imgs, mask_ratio=args.mask_ratio)
        loss_v = loss.item()
        if not math.isfinite(loss_v):  # stop before any update, like Tessera
            sys.exit(f"step {s + 1}: loss is {loss_v}")
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
        opt.step()

        now = time.perf_counter()
        dt = now - tick  # whole step, data included (as Tessera's images_per_s)
        tick = now
        rec = {"step": s + 1, "epoch": s / spe, "loss": loss_v, "lr": lr,
               "time_s": now - t0, "images_per_s": B / dt,
               "grad_norm": grad_norm, "data_s": data_s}
        metrics.write(json.dumps(rec) + "\n")
        metrics.flush()
        if (s + 1) % args.log_every == 0 or s == 0 or s + 1 == run_steps:
            print(f"step {s + 1}/{total} epoch {s / spe:.2f} loss {loss_v:.4f} lr {lr:.3e} "
                  f"{B / dt:.0f} img/s (data {data_s * 1e3:.0f} ms) elapsed {now - t0:.0f}s", flush=True)
        if (s + 1) % spe == 0 or s + 1 == run_steps:
            save_checkpoint(model, ckpt_path, config_json, s + 1, time.perf_counter() - t0)
    metrics.close()
    elapsed = time.perf_counter() - t0
    print(f"done: step {run_steps}, loss {loss_v:.4f}, {run_steps * B / elapsed:.0f} images/s "
          f"overall, {elapsed:.0f}s; checkpoint {ckpt_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
