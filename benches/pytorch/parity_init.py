"""Shared pieces of the parity fixtures (simmim_parity.py, swin_parity.py,
swin_simmim_parity.py): non-trivial weights, SimMIM's loss, MAE's patchify.

Fresh models start with zeros and constants in places (relative position
tables, q/v biases, tokens, layer scales, LayerNorm weights) that would hide
mistakes in a comparison; this draws every parameter at a useful scale.
"""

import torch
import torch.nn.functional as F


def randomise_(model, layer_scale=0.1):
    """Redraws every parameter of `model` in place (uses torch's global RNG)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gamma" in name:
                p.copy_(layer_scale + 0.05 * torch.randn_like(p))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("relative_position_bias_table"):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p) if p.dim() < 2 else torch.randn_like(p) / p[0].numel() ** 0.5)


def simmim_loss(x, x_rec, mask, patch, chans):
    """SimMIM's loss: L1 on the pixels of hidden patches (mask (B, H/p, W/p),
    1 = hidden), over their count + 1e-5, divided by the channel count."""
    pixel_mask = mask.repeat_interleave(patch, 1).repeat_interleave(patch, 2).unsqueeze(1).contiguous()
    loss_recon = F.l1_loss(x, x_rec, reduction="none")
    return (loss_recon * pixel_mask).sum() / (pixel_mask.sum() + 1e-5) / chans


def patchify(imgs, patch):
    """(B, C, H, W) -> (B, L, p*p*C) in MAE's order (row, column, channel)."""
    b, c, h, w = imgs.shape
    g = h // patch
    x = imgs.reshape(b, c, g, patch, g, patch)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, g * g, patch * patch * c)
