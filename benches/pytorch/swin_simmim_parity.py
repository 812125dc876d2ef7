#!/usr/bin/env python3
"""Parity fixture for SimMIM with a Swin encoder (tests/fixtures/swin_simmim.safetensors).

The model is the from-scratch Swin of swin_parity.py (16x16x3 images, patch 2,
window 4, stages of depth (2, 2, 1), width 16, encoder stride 8) in SimMIM's
pre-training arrangement, written from the SimMIM paper and the architecture
of its official code (`SwinTransformerForSimMIM`), no code copied:

  * the patch embeddings go through `patch_embed.norm`, then the hidden ones
    are replaced by `encoder.mask_token` (before stage 1; no absolute
    positions);
  * the stages and the final norm give a (B, C, H/8, W/8) map;
  * `decoder.0`, a 1x1 convolution to 8^2 * 3 channels, and a pixel shuffle
    by 8 give the reconstructed image;
  * loss: L1 on the pixels of hidden patches, over their count + 1e-5, divided
    by the channel count.

The fixture holds the weights under SimMIM's names, two images, the mask
(B, L) on the 8x8 patch grid (1 = hidden), the loss and the reconstruction in
MAE's patchify order (B, L, p*p*C). `crates/mim/tests/swin_parity.rs` checks
Tessera's loss and predictions within 1e-4 relative.

    cd benches/pytorch && python3 swin_simmim_parity.py --out ../../tests/fixtures/swin_simmim.safetensors
"""

import argparse
import json

import torch
import torch.nn as nn
from safetensors.torch import save_file

from parity_init import patchify, randomise_, simmim_loss
from swin_parity import CHANS, DEPTHS, DIM, HEADS, IMG, PATCH, WINDOW, Swin

STRIDE = PATCH << (len(DEPTHS) - 1)


class SwinForSimMIM(Swin):
    def __init__(self):
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, DIM))

    def forward(self, x, mask):  # mask (B, H/p, W/p), 1 = hidden
        x = self.patch_embed.norm(self.patch_embed.proj(x).permute(0, 2, 3, 1))  # (B, H, W, C)
        w = mask.unsqueeze(-1).type_as(x)
        x = x * (1 - w) + self.mask_token * w
        for layer in self.layers:
            x = layer(x)
        return self.norm(x).permute(0, 3, 1, 2)  # (B, C, H/s, W/s)


class SimMIM(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = SwinForSimMIM()
        self.decoder = nn.Sequential(nn.Conv2d(DIM << (len(DEPTHS) - 1), STRIDE**2 * CHANS, 1), nn.PixelShuffle(STRIDE))

    def forward(self, x, mask):
        x_rec = self.decoder(self.encoder(x, mask))
        return simmim_loss(x, x_rec, mask, PATCH, CHANS), x_rec


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="../../tests/fixtures/swin_simmim.safetensors")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    model = SimMIM().double()
    randomise_(model)
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
            dict(img=IMG, patch=PATCH, chans=CHANS, dim=DIM, depths=DEPTHS, heads=HEADS, window=WINDOW, stride=STRIDE)
        ),
        "made_by": "benches/pytorch/swin_simmim_parity.py",
        "torch": torch.__version__,
    }
    save_file(tensors, args.out, metadata=meta)
    print(f"wrote {args.out}: loss {loss.item():.6f}, {len(tensors)} tensors")


if __name__ == "__main__":
    main()
