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
    python3 benches/pytorch/pth_fixtures.py --full OUT.pth IMAGE.png
        a file shaped as MAE's released mae_finetuned_vit_base.pth (ViT-B/16 at
        224, global pooling, 1000 classes; random weights, 330 MB) and the top-5
        PyTorch gives on a 224 x 224 image, for `tessera predict` to match
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


def global_pool_probs(model, fc_norm, head, x):
    """models_vit.py's forward with global_pool: blocks, mean of patch tokens, fc_norm, head."""
    with torch.no_grad():
        t = model.patch_embed(x) + model.pos_embed[:, 1:, :]
        cls = (model.cls_token + model.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        t = torch.cat((cls, t), dim=1)
        for blk in model.blocks:
            t = blk(t)
        f = torch.nn.functional.layer_norm(t[:, 1:, :].mean(dim=1), (fc_norm[0].numel(),), fc_norm[0], fc_norm[1], 1e-6)
        return torch.softmax(f @ head[0].t() + head[1], dim=-1)


def full(out, image):
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                                 decoder_embed_dim=512, decoder_depth=1, decoder_num_heads=16, mlp_ratio=4.0)
    model.eval()
    sd = collections.OrderedDict(
        (k, v) for k, v in model.state_dict().items()
        if not (k.startswith("decoder") or k == "mask_token" or k.startswith("norm."))
    )
    fc = (1 + 0.1 * torch.randn(768), 0.1 * torch.randn(768))
    head = (torch.randn(1000, 768) * 0.05, torch.randn(1000) * 0.1)
    sd["fc_norm.weight"], sd["fc_norm.bias"] = fc
    sd["head.weight"], sd["head.bias"] = head
    torch.save({"model": sd, "args": argparse.Namespace(model="vit_base_patch16", global_pool=True)}, out)
    from PIL import Image
    import numpy as np
    img = np.asarray(Image.open(image).convert("RGB"), dtype=np.float32) / 255.0
    assert img.shape == (224, 224, 3), "a 224 x 224 image (no resize on either side)"
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = torch.tensor(((img - mean) / std).transpose(2, 0, 1)[None], dtype=torch.float32)
    p = global_pool_probs(model, fc, head, x)[0]
    top = torch.topk(p, 5)
    print(" ".join(f"{i} {100 * v:.1f}%" for v, i in zip(top.values.tolist(), top.indices.tolist())))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--full":
        return full(sys.argv[2], sys.argv[3])
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
    probs = global_pool_probs(model, (ft["fc_norm.weight"], ft["fc_norm.bias"]),
                              (ft["head.weight"], ft["head.bias"]), x)
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
