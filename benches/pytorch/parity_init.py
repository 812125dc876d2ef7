"""Non-trivial weights for the parity fixtures (simmim_parity.py, swin_parity.py).

Fresh models start with zeros and constants in places (relative position
tables, q/v biases, tokens, layer scales, LayerNorm weights) that would hide
mistakes in a comparison; this draws every parameter at a useful scale.
"""

import torch


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
