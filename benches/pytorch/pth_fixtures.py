#!/usr/bin/env python3
"""Writes the .pth fixtures of tests/fixtures/pth/ with torch.save (zip format),
so that CI needs no Python:

  mixed.pth        {'model': OrderedDict of f32, a transposed (strided) f32 view,
                   f16, bf16 and an int64 index buffer}, 'args': argparse.Namespace,
                   'epoch': 3} -- MAE's checkpoint layout
  mixed.json       the f32 values every tensor of mixed.pth must load as
  mae_tiny.pth     {'model': state_dict} of a tiny MAE (mae_model.py: img 16, patch 4,
                   width 32, depth 1, 2 heads; decoder 32/1/2), as MAE's released files
  mae_tiny.safetensors  the same state dict through safetensors (the reference)
  mae_tiny_finetuned.pth  MAE's fine-tuned layout (models_vit.py, global_pool): the
                   encoder of mae_tiny without its final norm, fc_norm, and a 5-class head
  evil.pth         a torch.save-shaped archive whose pickle calls os.system: refused

    python3 benches/pytorch/pth_fixtures.py [OUT_DIR]
"""
import argparse
import collections
import io
import json
import os
import pickle
import sys
import zipfile

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from mae_model import MaskedAutoencoderViT  # noqa: E402


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "../../tests/fixtures/pth")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)

    sd = collections.OrderedDict()
    sd["a"] = torch.arange(6, dtype=torch.float32).reshape(2, 3) - 2.5
    sd["t"] = (torch.arange(12, dtype=torch.float32).reshape(3, 4) / 8).t()  # strides (1, 4)
    sd["h"] = torch.tensor([1.5, -2.0, 65504.0, 6e-8], dtype=torch.float16)
    sd["b"] = torch.tensor([0.25, 3.0, -1e30], dtype=torch.bfloat16)
    sd["blocks.0.attn.relative_position_index"] = torch.arange(4, dtype=torch.int64)
    obj = {"model": sd, "args": argparse.Namespace(lr=0.1, model="mae_vit_tiny"), "epoch": 3}
    torch.save(obj, os.path.join(out, "mixed.pth"))
    want = {k: v.float().flatten().tolist() for k, v in sd.items() if v.is_floating_point()}
    shapes = {k: list(v.shape) for k, v in sd.items() if v.is_floating_point()}
    with open(os.path.join(out, "mixed.json"), "w") as f:
        json.dump({"values": want, "shapes": shapes}, f)

    model = MaskedAutoencoderViT(img_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=1, num_heads=2,
                                 decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, mlp_ratio=4.0,
                                 norm_pix_loss=True)
    state = model.state_dict()
    torch.save({"model": state, "epoch": 0}, os.path.join(out, "mae_tiny.pth"))
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out, "mae_tiny.safetensors"))
    ft = collections.OrderedDict(
        (k, v) for k, v in state.items() if not (k.startswith("decoder") or k == "mask_token" or k.startswith("norm."))
    )
    ft["fc_norm.weight"] = 1 + 0.1 * torch.randn(32)
    ft["fc_norm.bias"] = 0.1 * torch.randn(32)
    ft["head.weight"] = torch.randn(5, 32)
    ft["head.bias"] = torch.randn(5)
    torch.save({"model": ft}, os.path.join(out, "mae_tiny_finetuned.pth"))
    # Its probabilities on two inputs, as MAE's models_vit.py computes them with
    # global_pool: the blocks, the mean of the patch tokens, fc_norm, the head.
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        t = model.patch_embed(x) + model.pos_embed[:, 1:, :]
        cls = (model.cls_token + model.pos_embed[:, :1, :]).expand(2, -1, -1)
        t = torch.cat((cls, t), dim=1)
        for blk in model.blocks:
            t = blk(t)
        f = torch.nn.functional.layer_norm(t[:, 1:, :].mean(dim=1), (32,), ft["fc_norm.weight"], ft["fc_norm.bias"], 1e-6)
        probs = torch.softmax(f @ ft["head.weight"].t() + ft["head.bias"], dim=-1)
    with open(os.path.join(out, "mae_tiny_finetuned.json"), "w") as fh:
        json.dump({"input": x.flatten().tolist(), "probabilities": probs.flatten().tolist()}, fh)

    # A pickle that would run a shell command, in torch.save's archive layout.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("evil/data.pkl", pickle.dumps({"model": Evil()}, protocol=2))
        z.writestr("evil/byteorder", "little")
        z.writestr("evil/version", "3\n")
    with open(os.path.join(out, "evil.pth"), "wb") as f:
        f.write(buf.getvalue())
    print("wrote", sorted(os.listdir(out)))


if __name__ == "__main__":
    main()
