#!/usr/bin/env python3
"""Parity fixture for the Swin Transformer encoder (tests/fixtures/swin_encoder.safetensors).

A from-scratch PyTorch Swin written from the paper (Liu et al. 2021) and the
architecture of the official code (microsoft/Swin-Transformer
`models/swin_transformer.py`), no code copied:

  * patch embedding: conv, kernel = stride = patch, then LayerNorm;
  * stages of blocks alternating regular and shifted windows (shift w/2,
    torch.roll(x, (-s, -s)) before partitioning, back after); windowed
    attention with a per-block relative position bias ((2w-1)^2, heads) and,
    when shifted, Swin's mask (-100 between tokens of different regions);
    a window no smaller than the stage's grid becomes the grid, unshifted;
  * pre-norm blocks x + attn(norm1(x)), x + mlp(norm2(x)), exact GELU,
    LayerNorm eps 1e-5 (PyTorch's default);
  * patch merging between stages: concat of x[0::2, 0::2], x[1::2, 0::2],
    x[0::2, 1::2], x[1::2, 1::2], LayerNorm, linear 4C -> 2C without bias;
  * final LayerNorm; the representation is the mean of the last tokens.

The fixture holds the weights under the official names, two images, the
last stage's tokens (B, h, w, C) and the pooled features.
`crates/mim/tests/swin_parity.rs` rebuilds the model in Tessera and checks
both within 1e-4 relative.

    python3 benches/pytorch/swin_parity.py --out tests/fixtures/swin_encoder.safetensors
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from parity_init import randomise_

# A small Swin: 16x16 images, patch 2 (an 8x8 grid), window 4, three stages.
IMG, PATCH, CHANS, DIM, DEPTHS, HEADS, WINDOW = 16, 2, 3, 16, (2, 2, 1), (2, 4, 8), 4


def rel_index(w):
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
    d = coords[:, :, None] - coords[:, None, :]  # (2, N, N): query minus key
    return (d[0] + w - 1) * (2 * w - 1) + (d[1] + w - 1)


def partition(x, w):
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def reverse(win, w, h, wd):
    b = win.shape[0] // ((h // w) * (wd // w))
    x = win.view(b, h // w, wd // w, w, w, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, wd, -1)


def shift_mask(h, wd, w, s):
    labels = torch.zeros(1, h, wd, 1)
    cnt = 0
    for hs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
        for ws in (slice(0, -w), slice(-w, -s), slice(-s, None)):
            labels[:, hs, ws, :] = cnt
            cnt += 1
    lw = partition(labels, w).squeeze(-1)  # (nW, N)
    diff = lw[:, None, :] - lw[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)  # (nW, N, N)


class WindowAttention(nn.Module):
    def __init__(self, dim, heads, w):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * w - 1) ** 2, heads))
        self.register_buffer("index", rel_index(w), persistent=False)

    def forward(self, x, mask):
        bw, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5
        bias = self.relative_position_bias_table[self.index.view(-1)].view(n, n, -1).permute(2, 0, 1)
        logits = logits + bias
        if mask is not None:
            nw = mask.shape[0]
            logits = logits.view(bw // nw, nw, self.heads, n, n) + mask[None, :, None]
            logits = logits.view(bw, self.heads, n, n)
        return self.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(bw, n, c))


def drop_path(x, rate, training):
    """Stochastic depth: drops the branch of whole images, scales the kept by 1/(1 - rate)."""
    if rate == 0.0 or not training:
        return x
    keep = (torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype) >= rate).to(x.dtype)
    return x * keep / (1.0 - rate)


class SwinBlock(nn.Module):
    def __init__(self, dim, heads, grid, shift, window=WINDOW, drop_path=0.0):
        super().__init__()
        self.grid = grid
        self.drop_path = drop_path
        self.w, self.s = (grid, 0) if grid <= window else (window, shift)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, self.w)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential()
        self.mlp.fc1 = nn.Linear(dim, 4 * dim)
        self.mlp.act = nn.GELU()
        self.mlp.fc2 = nn.Linear(4 * dim, dim)
        self.register_buffer("mask", shift_mask(grid, grid, self.w, self.s) if self.s else None, persistent=False)

    def forward(self, x):  # (B, H, W, C)
        b, h, wd, c = x.shape
        y = self.norm1(x)
        if self.s:
            y = torch.roll(y, shifts=(-self.s, -self.s), dims=(1, 2))
        y = reverse(self.attn(partition(y, self.w), self.mask), self.w, h, wd)
        if self.s:
            y = torch.roll(y, shifts=(self.s, self.s), dims=(1, 2))
        x = x + drop_path(y, self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class PatchMerging(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        x0, x1 = x[:, 0::2, 0::2], x[:, 1::2, 0::2]
        x2, x3 = x[:, 0::2, 1::2], x[:, 1::2, 1::2]
        return self.reduction(self.norm(torch.cat([x0, x1, x2, x3], -1)))


class Stage(nn.Module):
    def __init__(self, dim, depth, heads, grid, last, window=WINDOW, rates=None):
        super().__init__()
        rates = rates or [0.0] * depth
        self.blocks = nn.ModuleList(
            [SwinBlock(dim, heads, grid, window // 2 if j % 2 else 0, window, rates[j]) for j in range(depth)]
        )
        self.downsample = None if last else PatchMerging(dim)

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


class Swin(nn.Module):
    """The encoder; the defaults are the fixture's small model (swin_step.py
    builds the benchmark sizes)."""

    def __init__(
        self, img=IMG, patch=PATCH, chans=CHANS, dim=DIM, depths=DEPTHS, heads=HEADS, window=WINDOW, drop_path=0.0
    ):
        super().__init__()
        # Drop-path rates rising linearly over all blocks, as Swin's.
        n = sum(depths)
        rates = [drop_path * k / max(n - 1, 1) for k in range(n)]
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(chans, dim, patch, patch)
        self.patch_embed.norm = nn.LayerNorm(dim)
        grid = img // patch
        self.layers = nn.ModuleList(
            [
                Stage(dim << i, d, h, grid >> i, i == len(depths) - 1, window, rates[starts[i] : starts[i] + d])
                for i, (d, h) in enumerate(zip(depths, heads))
            ]
        )
        self.norm = nn.LayerNorm(dim << (len(depths) - 1))

    def forward(self, x):
        x = self.patch_embed.proj(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        x = self.patch_embed.norm(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/swin_encoder.safetensors")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    model = Swin().double()
    randomise_(model)
    imgs = torch.randn(2, CHANS, IMG, IMG, dtype=torch.float64)
    tokens = model(imgs)
    tensors = {k: v.float().contiguous() for k, v in model.state_dict().items()}
    tensors["images"] = imgs.float()
    tensors["tokens"] = tokens.float().contiguous()
    tensors["features"] = tokens.mean((1, 2)).float()
    save_file(tensors, args.out, metadata={"made_by": "benches/pytorch/swin_parity.py", "torch": torch.__version__})
    print(f"wrote {args.out}: tokens {tuple(tokens.shape)}, {len(tensors)} tensors")


if __name__ == "__main__":
    main()
