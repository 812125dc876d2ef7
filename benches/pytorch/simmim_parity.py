#!/usr/bin/env python3
"""Parity fixture for SimMIM with its published ViT (tests/fixtures/simmim_vit.safetensors).

A from-scratch PyTorch SimMIM-ViT written from the SimMIM paper and the
architecture of its released code (microsoft/SimMIM `models/simmim.py`,
`models/vision_transformer.py`, which follow BEiT): no code copied.

  * patch embedding: conv, kernel = stride = patch;
  * hidden patch embeddings replaced by `encoder.mask_token`; [CLS] first;
  * no absolute positions; one relative position bias table shared by all
    blocks (`encoder.rel_pos_bias.relative_position_bias_table`,
    ((2G-1)^2 + 3, heads), BEiT's index with three [CLS] rows);
  * blocks: x + gamma_1 * attn(norm1(x)), x + gamma_2 * mlp(norm2(x)),
    attention with q_bias / v_bias (key bias zero), LayerNorm eps 1e-6,
    exact GELU; final LayerNorm;
  * head `decoder.0`: 1x1 conv to stride^2 * 3 channels, PixelShuffle(stride);
  * loss: L1 on hidden pixels, divided by the channel count.

The fixture holds the weights under SimMIM's state_dict names, two images,
the mask (B, L) (1 = hidden), the loss, and the reconstruction in MAE's
patchify order (B, L, p*p*C). `cargo test` (crates/mim/tests/parity.rs)
rebuilds the model in Tessera, loads the weights and checks the loss and
reconstruction within 1e-4 relative.

    python3 benches/pytorch/simmim_parity.py --out tests/fixtures/simmim_vit.safetensors
"""

import argparse
import json

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from parity_init import patchify, randomise_, simmim_loss

IMG, PATCH, CHANS, DIM, DEPTH, HEADS, MLP = 16, 4, 3, 32, 2, 2, 4.0
LAYER_SCALE = 0.1
EPS = 1e-6


def relative_index(g):
    """BEiT's relative_position_index of a g x g grid with [CLS] first."""
    rows = torch.arange(g).repeat_interleave(g)
    cols = torch.arange(g).repeat(g)
    dr = rows[:, None] - rows[None, :] + g - 1
    dc = cols[:, None] - cols[None, :] + g - 1
    t = (2 * g - 1) ** 2 + 3
    index = torch.zeros(g * g + 1, g * g + 1, dtype=torch.long)
    index[1:, 1:] = dr * (2 * g - 1) + dc
    index[0, :] = t - 3
    index[:, 0] = t - 2
    index[0, 0] = t - 1
    return index


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(DIM))
        self.v_bias = nn.Parameter(torch.zeros(DIM))
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x, bias):
        b, n, _ = x.shape
        qkv_bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, qkv_bias).reshape(b, n, 3, HEADS, DIM // HEADS)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-2, -1) * (DIM // HEADS) ** -0.5 + bias
        out = logits.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, DIM))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(DIM, eps=EPS)
        self.attn = Attention()
        self.norm2 = nn.LayerNorm(DIM, eps=EPS)
        hidden = int(DIM * MLP)
        self.mlp = nn.Sequential()
        self.mlp.fc1 = nn.Linear(DIM, hidden)
        self.mlp.act = nn.GELU()
        self.mlp.fc2 = nn.Linear(hidden, DIM)
        self.gamma_1 = nn.Parameter(LAYER_SCALE * torch.ones(DIM))
        self.gamma_2 = nn.Parameter(LAYER_SCALE * torch.ones(DIM))

    def forward(self, x, bias):
        x = x + self.gamma_1 * self.attn(self.norm1(x), bias)
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class RelPosBias(nn.Module):
    def __init__(self, g):
        super().__init__()
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * g - 1) ** 2 + 3, HEADS))
        self.register_buffer("relative_position_index", relative_index(g), persistent=False)

    def forward(self):
        n = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, HEADS).permute(2, 0, 1)  # (H, N, N)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        g = IMG // PATCH
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(CHANS, DIM, PATCH, PATCH)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, DIM))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, DIM))
        self.rel_pos_bias = RelPosBias(g)
        self.blocks = nn.ModuleList([Block() for _ in range(DEPTH)])
        self.norm = nn.LayerNorm(DIM, eps=EPS)

    def forward(self, x, mask):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)  # (B, L, D)
        w = mask.flatten(1).unsqueeze(-1).type_as(x)
        x = x * (1 - w) + self.mask_token * w
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)
        bias = self.rel_pos_bias()
        for blk in self.blocks:
            x = blk(x, bias)
        x = self.norm(x)[:, 1:]
        b, l, d = x.shape
        g = int(l**0.5)
        return x.transpose(1, 2).reshape(b, d, g, g)


class SimMIM(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.decoder = nn.Sequential(nn.Conv2d(DIM, PATCH**2 * CHANS, 1), nn.PixelShuffle(PATCH))

    def forward(self, x, mask):
        x_rec = self.decoder(self.encoder(x, mask))
        return simmim_loss(x, x_rec, mask, PATCH, CHANS), x_rec


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/simmim_vit.safetensors")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    model = SimMIM().double()
    randomise_(model, LAYER_SCALE)
    g = IMG // PATCH
    imgs = torch.randn(2, CHANS, IMG, IMG, dtype=torch.float64)
    mask = (torch.rand(2, g, g) < 0.6).long()
    mask[0, 0, 0], mask[1, 3, 3] = 1, 0  # both values present in each image
    loss, x_rec = model(imgs, mask)
    tensors = {k: v.float().contiguous() for k, v in model.state_dict().items()}
    tensors["images"] = imgs.float()
    tensors["mask"] = mask.reshape(2, g * g).float()
    tensors["loss"] = loss.reshape(1).float()
    tensors["pred"] = patchify(x_rec, PATCH).float().contiguous()
    meta = {
        "config": json.dumps(
            dict(img=IMG, patch=PATCH, chans=CHANS, dim=DIM, depth=DEPTH, heads=HEADS, layer_scale=LAYER_SCALE)
        ),
        "made_by": "benches/pytorch/simmim_parity.py",
        "torch": torch.__version__,
    }
    save_file(tensors, args.out, metadata=meta)
    print(f"wrote {args.out}: loss {loss.item():.6f}, {len(tensors)} tensors")


if __name__ == "__main__":
    main()
