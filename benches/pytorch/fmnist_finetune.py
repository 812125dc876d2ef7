#!/usr/bin/env python3
"""PyTorch reference for Tessera's Fashion-MNIST fine-tuning recipe.

The twin of `tessera finetune` (crates/mim/src/train/recipe.rs and run/finetune.rs,
crates/cli/finetune.rs): it fine-tunes the SAME Tessera pre-training
checkpoint with the SAME recipe, so that both top-1 accuracies can be put
side by side. The equivalent Tessera run is

    tessera finetune --checkpoint CKPT --data fashion-mnist \\
        --data-dir /usr/share/datasets/fashion-mnist --epochs 10 --batch 256 --out runs/ft-fmnist

i.e. every other option at its default: --pool mean, drop path 0.1, --blr 1e-3
(peak lr = blr * batch / 256), --min-lr 1e-6, --weight-decay 0.05,
--layer-decay 0.75, warm-up 5% of the steps, --smoothing 0.1, --mixup 0.8,
--cutmix 1.0, --mixup-prob 1, --mixup-switch-prob 0.5, crops of scale 0.08-1
and flips, f32, --seed 0. NB Tessera's CLI default batch is 64: pass
--batch 256 to it explicitly (this script's default is 256). The supervised
baseline is `tessera finetune --from-scratch --data fashion-mnist ...` (the
default vit-mini shape, ViT 192/6/3 patch 4, = `--from-scratch` here).

Model (MAE's models_vit.VisionTransformer with global_pool, built from the
pieces of mae_model.py): the checkpoint's ViT encoder (its "tessera.config"
metadata gives img_size, patch_size, in_chans, embed_dim, depth, num_heads,
mlp_ratio, norm_eps) WITHOUT its final norm, the mean of the patch tokens
(not [CLS]), `fc_norm` LayerNorm, `head` Linear(D, 10) with weight
trunc_normal(std 2e-5) and zero bias. Stochastic depth 0.1 * i / (depth - 1)
in block i, drawn per image and per residual branch (both the attention and
the MLP branch, each 0 with probability rate else 1 / (1 - rate)), only in
training. The fixed sin-cos pos_embed is copied from the checkpoint and not
trained; the decoder tensors and `norm.*` are ignored. `--pool cls` instead
keeps the final norm and classifies the [CLS] token (no fc_norm).

Recipe (FinetuneConfig::mae): AdamW(betas=(0.9, 0.999), eps=1e-8), weight
decay 0.05 except 1-D tensors, *.bias, cls_token, pos_embed; MAE's
param_groups_lrd: layer 0 = cls_token / pos_embed / patch_embed.*, i + 1 =
blocks.i.*, depth + 1 = fc_norm / head (/ norm), lr_scale = 0.75^(depth + 1 -
layer). Per update s (0-based): lr = peak * s / warmup for s < warmup
(warmup = total // 20), then min_lr + (peak - min_lr) * 0.5 * (1 + cos(pi *
(s - warmup) / (total - warmup))), times each group's lr_scale. Each batch:
RandomResizedCrop(28, scale=(0.08, 1), ratio=(3/4, 4/3)) + horizontal flip
(fmnist_pretrain.py's torch-only implementation), (x - 0.2860) / 0.3530, then
timm's Mixup in batch mode (mixup Beta(0.8) or, with probability 0.5, CutMix
Beta(1.0) with the box area correction; partner of image i is image B-1-i),
soft targets lam * smooth(y) + (1 - lam) * smooth(y reversed) with label
smoothing 0.1, soft-target cross-entropy averaged over the batch. Epochs are
random permutations with the last partial batch dropped; total steps =
round(epochs * (n // batch)). After every epoch: top-1 / top-5 on the first
--val-limit test images (all 10000 by default), no augmentation (the images
are 28x28 already, so resize + centre crop is the identity), in batches of
max(batch, 64).

Writes into --out:
    metrics.jsonl   one line per step, Tessera's fields: step (1-based),
                    epoch ((step - 1) / steps_per_epoch), loss, lr (the base
                    lr of the update, before lr_scale), grad_norm (global L2
                    norm before the update, before clipping), images_per_s
                    (batch / wall time of the step, data included), time_s
                    (since the first step began); plus data_s (augmentation
                    time). After each epoch: {"step", "epoch", "val_top1",
                    "val_top5"} (epoch 1-based, as Tessera).
    config.json     the resolved recipe (informational)
and prints one final JSON line (val_top1, val_top5, images_per_s, wall_s, ...).
No checkpoint is written.

Usage:
    python3 fmnist_finetune.py --checkpoint runs/fmnist-f32/checkpoint.safetensors --out runs/pt-ft
    python3 fmnist_finetune.py --from-scratch --out runs/pt-ft-scratch           # supervised baseline
    python3 fmnist_finetune.py --checkpoint CKPT --out /tmp/pt-ft-smoke \\
        --limit 512 --val-limit 512 --epochs 1 --batch 64                        # smoke test
    python3 fmnist_finetune.py --checkpoint CKPT --out DIR --mixup 0 --cutmix 0   # no mixing

What differs from the Tessera run:
  - Random streams: data order, crops, flips, mixup/CutMix draws and drop
    path come from torch / numpy generators, not Tessera's MimRng (Tessera
    also seeds each image's augmentation from (seed, epoch, index); here it is
    one sequential stream). Same distributions, not the same samples, so the
    accuracies agree statistically, not bit for bit.
  - --from-scratch: Tessera's from-scratch init is its own MAE-style init
    (xavier_uniform Linear and patch weights, zero biases, cls_token
    normal(0.02), LayerNorm 1/0) drawn from its own RNG; here the same scheme
    (MAE's initialize_weights) is drawn from torch's generator, so only the
    recipe and the init distributions match, not the initial weights. The
    patch-embedding bias is zeroed as in Tessera (MAE leaves Conv2d's default).
  - No checkpoint, --resume, bf16 or Swin encoders; evaluation ranks the
    softmax probabilities with a stable sort (ties: lower class first, as
    Tessera's top_k).
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fmnist_pretrain import (FMNIST_MEAN, FMNIST_STD, augment_batch, load_fmnist_train, lr_at,
                             read_idx)
from mae_model import LN_EPS, MLP_RATIO, Block, Mlp, PatchEmbed, get_2d_sincos_pos_embed

FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
RNG_SALT = 0x6669_6E65_7475_6E65  # Tessera's Finetuner rng: seed ^ b"finetune"


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------
def load_fmnist_test(data_dir):
    """The t10k split: (images float32 [N, 1, 28, 28] in [0, 1], labels int64 [N])."""
    imgs = read_idx(os.path.join(data_dir, "t10k-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, "t10k-labels-idx1-ubyte.gz"))
    if imgs.ndim != 3 or imgs.shape[0] != labels.shape[0]:
        raise ValueError(f"unexpected IDX shapes {imgs.shape} / {labels.shape}")
    x = torch.from_numpy(imgs.astype(np.float32) / 255.0).unsqueeze(1).contiguous()
    return x, torch.from_numpy(labels.astype(np.int64))


def normalize(x):
    return (x - FMNIST_MEAN) / FMNIST_STD


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------
class DropPathBlock(Block):
    """mae_model.Block (timm's) with the checkpoint's LayerNorm eps / MLP width
    and per-sample stochastic depth on both residual branches, as Tessera's
    Block::forward_train: x + s1 * attn(norm1(x)), then x + s2 * mlp(norm2(x)),
    s1, s2 (B, 1, 1) each 0 with probability `drop_path`, else 1 / (1 - rate)."""

    def __init__(self, dim, num_heads, mlp_hidden, eps, drop_path):
        super().__init__(dim, num_heads, mlp_ratio=MLP_RATIO, qkv_bias=True)
        if eps != LN_EPS:
            self.norm1 = nn.LayerNorm(dim, eps=eps)
            self.norm2 = nn.LayerNorm(dim, eps=eps)
        if self.mlp.fc1.out_features != mlp_hidden:
            self.mlp = Mlp(dim, mlp_hidden)
        self.drop_path = float(drop_path)
        self.gen = None  # torch.Generator for the drop-path draws (set by the trainer)

    def _scale(self, x):
        b = x.shape[0]
        u = torch.rand(b, generator=self.gen)
        keep = 1.0 / (1.0 - self.drop_path)
        s = torch.where(u < self.drop_path, torch.zeros(()), torch.full((), keep))
        return s.to(x.dtype).view(b, 1, 1)

    def forward(self, x):
        if not self.training or self.drop_path == 0.0:
            return super().forward(x)
        s1, s2 = self._scale(x), self._scale(x)  # drawn before the block, as Tessera
        x = x + self.attn(self.norm1(x)) * s1
        x = x + self.mlp(self.norm2(x)) * s2
        return x


class VitClassifier(nn.Module):
    """Tessera's Classifier for a ViT (MAE's models_vit.VisionTransformer names)."""

    def __init__(self, enc, num_classes, pool="mean", drop_path=0.1):
        super().__init__()
        img, p, c = enc["img_size"], enc["patch_size"], enc["in_chans"]
        d, depth, heads = enc["embed_dim"], enc["depth"], enc["num_heads"]
        eps = enc["norm_eps"]
        self.depth, self.pool = depth, pool
        self.learned_pos = enc["pos_embed"] == "learned"
        self.patch_embed = PatchEmbed(img, p, c, d)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, d), requires_grad=self.learned_pos)
        if not self.learned_pos:  # fixed sin-cos (overwritten by the checkpoint's, identical)
            pe = get_2d_sincos_pos_embed(d, img // p, cls_token=True)
            self.pos_embed.data.copy_(torch.from_numpy(pe).float().unsqueeze(0))
        hidden = int(round(d * enc["mlp_ratio"]))  # VitConfig::mlp_hidden
        rates = [drop_path * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.ModuleList(DropPathBlock(d, heads, hidden, eps, r) for r in rates)
        if pool == "cls":
            self.norm = nn.LayerNorm(d, eps=eps)  # the encoder's final norm
        else:
            self.fc_norm = nn.LayerNorm(d, eps=eps)  # MAE's global_pool: no final norm
        self.head = nn.Linear(d, num_classes)
        self.reset_head()

    def reset_head(self):
        # MAE main_finetune.py: trunc_normal_(head.weight, std=2e-5) (bounds +-2 absolute)
        nn.init.trunc_normal_(self.head.weight, mean=0.0, std=2e-5, a=-2.0, b=2.0)
        nn.init.zeros_(self.head.bias)

    def init_fresh(self):
        """MAE's initialize_weights, drawn from torch's global generator."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)  # Tessera's PatchEmbed (MAE: Conv2d default)
        nn.init.normal_(self.cls_token, std=0.02)
        if self.learned_pos:
            nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-2.0, b=2.0)
        self.reset_head()

    def set_generator(self, gen):
        for blk in self.blocks:
            blk.gen = gen

    def forward(self, imgs):
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        if self.pool == "cls":
            pooled = self.norm(x)[:, 0]
        else:
            pooled = self.fc_norm(x[:, 1:, :].mean(dim=1))
        return self.head(pooled)


def encoder_config(enc):
    """Checks that a Tessera EncoderConfig (JSON) is a ViT this script builds;
    fills serde's defaults for fields older files lack."""
    if "depths" in enc or "depth" not in enc:
        sys.exit("the checkpoint holds a Swin encoder: only ViTs are supported here")
    enc = dict(enc)
    enc.setdefault("pos_embed", "sin-cos")
    enc.setdefault("norm_eps", LN_EPS)
    enc.setdefault("mlp_ratio", MLP_RATIO)
    unsupported = []
    if enc.get("rel_pos_bias", "none") not in (None, "none"):
        unsupported.append(f"rel_pos_bias {enc['rel_pos_bias']}")
    if enc.get("layer_scale") is not None:
        unsupported.append(f"layer_scale {enc['layer_scale']}")
    if enc.get("qkv_bias", "qkv") != "qkv":
        unsupported.append(f"qkv_bias {enc['qkv_bias']}")
    if enc["pos_embed"] not in ("sin-cos", "learned"):
        unsupported.append(f"pos_embed {enc['pos_embed']}")
    if enc.get("pos_drop", 0.0):
        unsupported.append(f"pos_drop {enc['pos_drop']}")
    size = enc["img_size"]
    size = size if isinstance(size, list) else [size, size]
    if size != [28, 28] or enc["in_chans"] != 1:
        unsupported.append(f"images {size[0]}x{size[1]}x{enc['in_chans']} (Fashion-MNIST is 28x28x1)")
    if unsupported:
        sys.exit("unsupported encoder options: " + ", ".join(unsupported))
    enc["img_size"] = 28
    return enc


def load_checkpoint(path):
    """(encoder config, {name: tensor}) of a Tessera pre-training checkpoint."""
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        if "tessera.config" not in meta:
            what = "a fine-tuning checkpoint" if "tessera.finetune" in meta else "no Tessera pre-training checkpoint"
            sys.exit(f"{path}: no 'tessera.config' metadata ({what})")
        cfg = json.loads(meta["tessera.config"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return encoder_config(cfg["model"]["encoder"]), tensors


def load_encoder(model, tensors, path):
    """Copies every encoder tensor by name and shape (as Classifier::load_encoder:
    missing or misshapen ones are errors); fc_norm and head stay fresh."""
    n = 0
    for name, t in model.state_dict().items():
        if name.startswith(("fc_norm.", "head.")):
            continue
        if name not in tensors:
            sys.exit(f"{path}: the pre-trained encoder has no tensor '{name}'")
        src = tensors[name]
        if tuple(src.shape) != tuple(t.shape):
            sys.exit(f"{path}: '{name}' has shape {tuple(src.shape)}, this classifier's {tuple(t.shape)}")
        if not torch.isfinite(src).all():
            sys.exit(f"{path}: '{name}' holds a non-finite value")
        t.copy_(src.to(torch.float32))
        n += 1
    return n


# --------------------------------------------------------------------------
# Recipe
# --------------------------------------------------------------------------
def layer_id(name, depth):
    """FinetuneConfig's / MAE's get_layer_id_for_vit."""
    if name in ("cls_token", "pos_embed", "mask_token") or name.startswith("patch_embed."):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def decays(name, p):
    """Tessera's train::decays: no decay on 1-D tensors, biases, tokens, positions."""
    leaf = name.rsplit(".", 1)[-1]
    return p.ndim > 1 and not name.endswith(".bias") and leaf not in (
        "cls_token", "mask_token", "pos_embed", "decoder_pos_embed")


def param_groups_lrd(model, weight_decay, layer_decay):
    """MAE's param_groups_lrd: one group per (layer, decays), lr_scale = decay^(L - layer)."""
    top = model.depth + 1
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (layer_id(name, model.depth), decays(name, p))
        groups.setdefault(key, []).append((name, p))
    out = []
    for (lid, dec), items in sorted(groups.items()):
        out.append({"params": [p for _, p in items], "names": [n for n, _ in items],
                    "weight_decay": weight_decay if dec else 0.0,
                    "lr_scale": layer_decay ** (top - lid), "layer_id": lid})
    return out


def smooth_targets(y, k, smoothing):
    """timm's one_hot(y, k, on=1 - s + s/k, off=s/k)."""
    off = smoothing / k
    q = torch.full((y.shape[0], k), off, dtype=torch.float32)
    q.scatter_(1, y.view(-1, 1), 1.0 - smoothing + off)
    return q


def mix_batch(x, y, k, smoothing, args, rng):
    """timm's Mixup, batch mode (= Tessera's mix_batch): returns (x, soft targets, what)."""
    own = smooth_targets(y, k, smoothing)
    active = args.mixup_prob > 0 and (args.mixup > 0 or args.cutmix > 0)
    if not active or rng.random() >= args.mixup_prob:
        return x, own, "none"
    if args.mixup > 0 and args.cutmix > 0:
        cutmix = rng.random() < args.mixup_switch_prob
    else:
        cutmix = args.cutmix > 0
    partner = x.flip(0)  # image i with image B - 1 - i
    if cutmix:
        lam = rng.beta(args.cutmix, args.cutmix)
        H, W = x.shape[-2:]
        ratio = math.sqrt(1.0 - lam)
        ch, cw = int(H * ratio), int(W * ratio)
        cy, cx = int(rng.integers(0, H)), int(rng.integers(0, W))
        top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, H)
        left, right = max(cx - cw // 2, 0), min(cx + cw // 2, W)
        x = x.clone()
        x[:, :, top:bottom, left:right] = partner[:, :, top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (H * W)  # timm's correct_lam
        what = "cutmix"
    else:
        lam = float(np.float32(rng.beta(args.mixup, args.mixup)))  # Tessera's lam is f32
        x = lam * x + (1.0 - lam) * partner
        what = "mixup"
    return x, lam * own + (1.0 - lam) * own.flip(0), what


def soft_cross_entropy(logits, q):
    return torch.sum(-q * F.log_softmax(logits, dim=-1), dim=-1).mean()


@torch.no_grad()
def evaluate(model, x, y, batch):
    """Top-1 / top-5 on normalised, un-augmented images (Tessera's evaluate)."""
    was = model.training
    model.eval()
    top1 = top5 = 0
    for i in range(0, x.shape[0], batch):
        probs = model(normalize(x[i:i + batch])).softmax(dim=-1)
        ranked = torch.sort(probs, dim=-1, descending=True, stable=True).indices[:, :5]
        yy = y[i:i + batch].view(-1, 1)
        top1 += (ranked[:, :1] == yy).sum().item()
        top5 += (ranked == yy).any(dim=1).sum().item()
    model.train(was)
    n = x.shape[0]
    return top1 / n, top5 / n


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------
def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="Tessera pre-training checkpoint (safetensors)")
    ap.add_argument("--from-scratch", action="store_true",
                    help="fresh weights (with --checkpoint: only its shape is used)")
    ap.add_argument("--patch", type=int, default=4, help="--from-scratch without --checkpoint")
    ap.add_argument("--dim", type=int, default=192, help="--from-scratch without --checkpoint")
    ap.add_argument("--depth", type=int, default=6, help="--from-scratch without --checkpoint")
    ap.add_argument("--heads", type=int, default=3, help="--from-scratch without --checkpoint")
    ap.add_argument("--pool", choices=["mean", "cls"], default="mean")
    ap.add_argument("--drop-path", type=float, default=0.1, help="rate of the last block")
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--epochs", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--blr", type=float, default=1e-3, help="learning rate per 256 images")
    ap.add_argument("--lr", type=float, help="absolute peak learning rate (overrides --blr)")
    ap.add_argument("--min-lr", type=float, default=1e-6)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--layer-decay", type=float, default=0.75)
    ap.add_argument("--warmup-epochs", type=float, help="default: total_steps // 20 steps")
    ap.add_argument("--smoothing", type=float, default=0.1)
    ap.add_argument("--mixup", type=float, default=0.8, help="mixup's Beta alpha (0: off)")
    ap.add_argument("--cutmix", type=float, default=1.0, help="CutMix's Beta alpha (0: off)")
    ap.add_argument("--mixup-prob", type=float, default=1.0)
    ap.add_argument("--mixup-switch-prob", type=float, default=0.5)
    ap.add_argument("--clip-grad", type=float, help="clip the global gradient norm")
    ap.add_argument("--no-augment", action="store_true", help="no crops and flips")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, help="use the first N training images")
    ap.add_argument("--val-limit", type=int, help="evaluate on the first N test images")
    ap.add_argument("--log-every", type=int, default=50)
    args = ap.parse_args(argv)
    if args.checkpoint is None and not args.from_scratch:
        ap.error("give --checkpoint, or --from-scratch")
    if args.batch < 1 or not (args.epochs > 0 and math.isfinite(args.epochs)):
        ap.error("need --batch >= 1 and --epochs > 0")
    if not (0.0 <= args.smoothing < 1.0):
        ap.error("--smoothing must be in [0, 1)")
    if not (0.0 < args.layer_decay <= 1.0):
        ap.error("--layer-decay must be in (0, 1]")
    if not (0.0 <= args.drop_path < 1.0):
        ap.error("--drop-path must be in [0, 1)")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    torch.manual_seed(args.seed)  # initialisation (head; everything with --from-scratch)
    data_gen = torch.Generator().manual_seed(args.seed)  # permutations + crops/flips
    train_gen = torch.Generator().manual_seed(args.seed ^ RNG_SALT)  # drop path
    mix_rng = np.random.default_rng(args.seed ^ RNG_SALT)  # mixup / CutMix

    # Model
    tensors = None
    if args.checkpoint:
        enc, tensors = load_checkpoint(args.checkpoint)
    else:
        enc = encoder_config({"img_size": [28, 28], "patch_size": args.patch, "in_chans": 1,
                              "embed_dim": args.dim, "depth": args.depth, "num_heads": args.heads,
                              "mlp_ratio": MLP_RATIO, "pos_embed": "sin-cos", "norm_eps": LN_EPS})
    if 28 % enc["patch_size"] or enc["embed_dim"] % enc["num_heads"]:
        sys.exit("the patch size must divide 28 and the heads the width")
    k = len(FMNIST_CLASSES)
    model = VitClassifier(enc, k, pool=args.pool, drop_path=args.drop_path)
    if args.from_scratch:
        # Tessera's from-scratch init is its own MAE-style init drawn from its own
        # RNG: only the scheme and the recipe match, not the initial weights.
        model.init_fresh()
        source = "random weights (from scratch)"
    else:
        n_copied = load_encoder(model, tensors, args.checkpoint)
        source = f"{args.checkpoint} ({n_copied} encoder tensors)"
    tensors = None
    model.set_generator(train_gen)
    model.train()

    # Data
    x_train, y_train = load_fmnist_train(args.data_dir)
    if args.limit is not None:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    x_test, y_test = load_fmnist_test(args.data_dir)
    if args.val_limit is not None:
        x_test, y_test = x_test[:args.val_limit], y_test[:args.val_limit]
    if x_test.shape[0] == 0:
        sys.exit("no test images to evaluate")
    n, B = x_train.shape[0], args.batch
    spe = n // B  # drop_last
    if spe == 0:
        sys.exit(f"--batch {B} is larger than the {n} training images")
    total = max(1, round(args.epochs * spe))
    warmup = total // 20 if args.warmup_epochs is None else round(args.warmup_epochs * spe)
    peak = args.lr if args.lr is not None else args.blr * B / 256
    eval_batch = max(B, 64)

    groups = param_groups_lrd(model, args.weight_decay, args.layer_decay)
    opt = torch.optim.AdamW([{k_: v for k_, v in g.items() if k_ != "names"} for g in groups],
                            lr=0.0, betas=(0.9, 0.999), eps=1e-8)
    params = [p for g in groups for p in g["params"]]

    os.makedirs(args.out, exist_ok=True)
    recipe = {
        "engine": "pytorch", "source": source, "encoder": enc, "pool": args.pool,
        "num_classes": k, "drop_path": args.drop_path, "batch_size": B, "base_lr": peak * 256 / B,
        "peak_lr": peak, "min_lr": args.min_lr, "weight_decay": args.weight_decay,
        "layer_decay": args.layer_decay, "betas": [0.9, 0.999], "warmup_steps": warmup,
        "total_steps": total, "steps_per_epoch": spe, "train_images": n, "val_images": x_test.shape[0],
        "label_smoothing": args.smoothing,
        "mixup": {"mixup_alpha": args.mixup, "cutmix_alpha": args.cutmix,
                  "prob": args.mixup_prob, "switch_prob": args.mixup_switch_prob},
        "augment": not args.no_augment, "crop_scale": [0.08, 1.0], "clip_grad": args.clip_grad,
        "seed": args.seed, "normalization": {"mean": FMNIST_MEAN, "std": FMNIST_STD},
        "param_groups": [{"layer_id": g["layer_id"], "lr_scale": g["lr_scale"],
                          "weight_decay": g["weight_decay"], "params": g["names"]} for g in groups],
        "torch": torch.__version__, "threads": args.threads,
    }
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(recipe, f, indent=2)
    metrics = open(os.path.join(args.out, "metrics.jsonl"), "w")
    n_params = sum(p.numel() for p in params)
    print(f"fine-tuning PyTorch ViT {enc['embed_dim']}/{enc['depth']}/{enc['num_heads']} "
          f"(patch {enc['patch_size']}, pool {args.pool}, {n_params} trainable params) from {source} "
          f"on Fashion-MNIST ({n} images, {total} steps of {B}, {spe} per epoch, warm-up {warmup}), "
          f"peak lr {peak:g}, layer decay {args.layer_decay}, mixup {args.mixup}/{args.cutmix}, "
          f"smoothing {args.smoothing}, {x_test.shape[0]} test images, torch {torch.__version__}, "
          f"{args.threads} threads, output {args.out}", flush=True)

    perm = None
    t0 = time.perf_counter()
    train_s = eval_s = 0.0
    top1 = top5 = float("nan")
    loss_v = float("nan")
    for s in range(total):
        tick = time.perf_counter()
        pos = s % spe
        if pos == 0:
            perm = torch.randperm(n, generator=data_gen)
        idx = perm[pos * B:(pos + 1) * B]
        batch, labels = x_train[idx], y_train[idx]
        imgs = normalize(batch) if args.no_augment else augment_batch(batch, data_gen, scale=(0.08, 1.0))
        data_s = time.perf_counter() - tick

        lr = lr_at(s, peak, warmup, total, args.min_lr)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"]
        imgs, q, _ = mix_batch(imgs, labels, k, args.smoothing, args, mix_rng)
        opt.zero_grad(set_to_none=True)
        logits = model(imgs)
        loss = soft_cross_entropy(logits, q)
        loss_v = loss.item()
        if not math.isfinite(loss_v):  # stop before any update, as Tessera
            sys.exit(f"step {s + 1}: loss is {loss_v}")
        loss.backward()
        if args.clip_grad is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, args.clip_grad).item()
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None])).item()
        if not math.isfinite(grad_norm):
            sys.exit(f"step {s + 1}: gradient norm is {grad_norm}")
        opt.step()

        now = time.perf_counter()
        dt = now - tick
        train_s += dt
        rec = {"step": s + 1, "epoch": s / spe, "loss": loss_v, "lr": lr, "grad_norm": grad_norm,
               "images_per_s": B / dt, "time_s": now - t0, "data_s": data_s}
        metrics.write(json.dumps(rec) + "\n")
        metrics.flush()
        if (s + 1) % args.log_every == 0 or s == 0 or s + 1 == total:
            print(f"step {s + 1}/{total} epoch {s / spe:.2f} loss {loss_v:.4f} lr {lr:.3e} "
                  f"grad_norm {grad_norm:.3f} {B / dt:.0f} img/s (data {data_s * 1e3:.0f} ms) "
                  f"elapsed {now - t0:.0f}s", flush=True)
        if (s + 1) % spe == 0 or s + 1 == total:
            te = time.perf_counter()
            top1, top5 = evaluate(model, x_test, y_test, eval_batch)
            eval_s += time.perf_counter() - te
            epoch = -(-(s + 1) // spe)  # ceil, as Tessera
            metrics.write(json.dumps({"step": s + 1, "epoch": epoch, "val_top1": top1, "val_top5": top5}) + "\n")
            metrics.flush()
            print(f"epoch {epoch}: val top-1 {100 * top1:.2f}%, top-5 {100 * top5:.2f}% "
                  f"({x_test.shape[0]} images, {time.perf_counter() - te:.1f}s)", flush=True)
    metrics.close()
    wall = time.perf_counter() - t0
    print(json.dumps({
        "engine": "pytorch", "torch": torch.__version__, "from_scratch": args.from_scratch,
        "checkpoint": args.checkpoint, "steps": total, "batch": B, "epochs": args.epochs,
        "train_images": n, "val_images": x_test.shape[0], "val_top1": top1, "val_top5": top5,
        "loss": loss_v, "images_per_s": total * B / train_s if train_s > 0 else None,
        "train_s": train_s, "eval_s": eval_s, "wall_s": wall, "threads": args.threads,
        "seed": args.seed, "out": args.out}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
