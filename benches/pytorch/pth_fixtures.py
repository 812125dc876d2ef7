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
  variants.json    for each released variant below, its inputs and PyTorch's outputs
                   (classifiers: probabilities; encoders: pooled features; and the
                   BEiT classifier's last-block [CLS] attention)
  simmim_vit_nobias.pth  SimMIM's pre-training ViT (names under encoder.) built with
                   qkv_bias=False and use_mean_pooling=True: no qkv bias, no final norm,
                   encoder.fc_norm; a shared relative position bias, layer scale
  beit_vit_finetuned.pth  SimMIM's / BEiT's fine-tuned ViT: bare names, no absolute
                   positions, a relative table per block (with its index buffer),
                   q/v biases, layer scale, fc_norm (use_mean_pooling), a 4-class head
  timm_vit.pth     timm's vit_*: learned positions, qkv bias, final norm, [CLS]
                   pooling, a 3-class head
  timm_swin.pth    timm's swin_* (>= 0.9): merging at the start of the next stage,
                   head.fc, no attn_mask buffers (its image size must be given)
  simmim_swin_finetuned.pth  SimMIM's fine-tuned Swin: the official names (merging
                   at the end of a stage), relative_position_index and attn_mask
                   buffers, head

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
from parity_init import randomise_  # noqa: E402
from simmim_parity import relative_index  # noqa: E402
from swin_parity import Swin, rel_index, shift_mask  # noqa: E402

F = torch.nn.functional


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


class BeitAttention(torch.nn.Module):
    """BEiT's / SimMIM's attention: q/v biases or none (qkv_bias=False), and
    optionally its own relative position table (use_rel_pos_bias)."""

    def __init__(self, dim, heads, grid, qv_bias, own_table):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=False)
        if qv_bias:
            self.q_bias = torch.nn.Parameter(torch.zeros(dim))
            self.v_bias = torch.nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = None
        if own_table:
            self.relative_position_bias_table = torch.nn.Parameter(torch.zeros((2 * grid - 1) ** 2 + 3, heads))
            self.register_buffer("relative_position_index", relative_index(grid))  # persistent, as BEiT's
        else:
            self.relative_position_bias_table = None
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x, shared_bias):
        b, n, d = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        q, k, v = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5
        if self.relative_position_bias_table is not None:
            t = self.relative_position_bias_table[self.relative_position_index.view(-1)]
            logits = logits + t.view(n, n, -1).permute(2, 0, 1)
        if shared_bias is not None:
            logits = logits + shared_bias
        self.last_p = logits.softmax(-1)  # (B, H, N, N), for the attention-map fixture
        return self.proj((self.last_p @ v).transpose(1, 2).reshape(b, n, d))


class BeitBlock(torch.nn.Module):
    def __init__(self, dim, heads, grid, qv_bias, own_table):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(dim, eps=1e-6)
        self.attn = BeitAttention(dim, heads, grid, qv_bias, own_table)
        self.norm2 = torch.nn.LayerNorm(dim, eps=1e-6)
        self.mlp = torch.nn.Sequential()
        self.mlp.fc1 = torch.nn.Linear(dim, 4 * dim)
        self.mlp.act = torch.nn.GELU()
        self.mlp.fc2 = torch.nn.Linear(4 * dim, dim)
        self.gamma_1 = torch.nn.Parameter(0.1 * torch.ones(dim))
        self.gamma_2 = torch.nn.Parameter(0.1 * torch.ones(dim))

    def forward(self, x, shared_bias):
        x = x + self.gamma_1 * self.attn(self.norm1(x), shared_bias)
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class BeitViT(torch.nn.Module):
    """BEiT's / SimMIM's VisionTransformer at 16 x 16 x 3, patch 4, width 32,
    depth 2, 2 heads: no absolute positions; a shared or per-block relative
    table; use_mean_pooling (fc_norm instead of the final norm); a head if
    `classes`. Its features: the mean of the patch tokens through fc_norm."""

    def __init__(self, qv_bias, shared_table, classes=0, dim=32, heads=2, depth=2, grid=4):
        super().__init__()
        self.patch_embed = torch.nn.Module()
        self.patch_embed.proj = torch.nn.Conv2d(3, dim, 4, 4)
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, dim))
        if shared_table:
            self.rel_pos_bias = torch.nn.Module()
            self.rel_pos_bias.relative_position_bias_table = torch.nn.Parameter(
                torch.zeros((2 * grid - 1) ** 2 + 3, heads))
            self.rel_pos_bias.register_buffer("relative_position_index", relative_index(grid))
        else:
            self.rel_pos_bias = None
        self.blocks = torch.nn.ModuleList(
            [BeitBlock(dim, heads, grid, qv_bias, not shared_table) for _ in range(depth)])
        self.fc_norm = torch.nn.LayerNorm(dim, eps=1e-6)
        self.head = torch.nn.Linear(dim, classes) if classes else None

    def forward(self, x):
        t = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), t], 1)
        shared = None
        if self.rel_pos_bias is not None:
            n = t.shape[1]
            tb = self.rel_pos_bias.relative_position_bias_table[self.rel_pos_bias.relative_position_index.view(-1)]
            shared = tb.view(n, n, -1).permute(2, 0, 1)
        for blk in self.blocks:
            t = blk(t, shared)
        f = self.fc_norm(t[:, 1:].mean(1))
        return f if self.head is None else self.head(f).softmax(-1)


def timm_vit_probs(model, head, x):
    """timm's VisionTransformer with global_pool='token': blocks, final norm, [CLS], head."""
    t = model.patch_embed(x) + model.pos_embed[:, 1:, :]
    cls = (model.cls_token + model.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
    t = torch.cat((cls, t), dim=1)
    for blk in model.blocks:
        t = blk(t)
    return head(model.norm(t)[:, 0]).softmax(-1)


def swin_state(model, head, with_buffers):
    """The Swin's state dict in the official names, with the head; with
    `with_buffers` the official code's persistent relative_position_index and
    attn_mask buffers too."""
    sd = collections.OrderedDict(model.state_dict())
    sd["head.weight"], sd["head.bias"] = head.weight.detach(), head.bias.detach()
    if with_buffers:
        for i, layer in enumerate(model.layers):
            for j, blk in enumerate(layer.blocks):
                sd[f"layers.{i}.blocks.{j}.attn.relative_position_index"] = rel_index(blk.w)
                if blk.s:
                    sd[f"layers.{i}.blocks.{j}.attn_mask"] = shift_mask(blk.grid, blk.grid, blk.w, blk.s)
    return sd


def timm_swin_names(sd):
    """timm >= 0.9's names: merging at the start of the next stage, head.fc."""
    out = collections.OrderedDict()
    for k, v in sd.items():
        parts = k.split(".")
        if k.startswith("layers.") and parts[2] == "downsample":
            k = ".".join(["layers", str(int(parts[1]) + 1)] + parts[2:])
        elif k.startswith("head."):
            k = "head.fc." + k[len("head."):]
        out[k] = v
    return out


def variants(out):
    """Writes the released variants (see the module docs) and variants.json."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 16, 16)
    expected = {"input": x.flatten().tolist()}

    # SimMIM's pre-training ViT with qkv_bias=False, use_mean_pooling=True.
    enc = BeitViT(qv_bias=False, shared_table=True).eval()
    randomise_(enc)
    sd = collections.OrderedDict((f"encoder.{k}", v) for k, v in enc.state_dict().items())
    sd["encoder.mask_token"] = 0.02 * torch.randn(1, 1, 32)
    sd["decoder.0.weight"] = torch.randn(4 * 4 * 3, 32, 1, 1) / 32 ** 0.5
    sd["decoder.0.bias"] = torch.zeros(4 * 4 * 3)
    torch.save({"model": sd}, os.path.join(out, "simmim_vit_nobias.pth"))
    with torch.no_grad():
        expected["simmim_vit_nobias"] = enc(x).flatten().tolist()

    # SimMIM's / BEiT's fine-tuned ViT classifier.
    ft = BeitViT(qv_bias=True, shared_table=False, classes=4).eval()
    randomise_(ft)
    torch.save({"model": ft.state_dict()}, os.path.join(out, "beit_vit_finetuned.pth"))
    with torch.no_grad():
        expected["beit_vit_finetuned"] = ft(x).flatten().tolist()
    # Its last block's [CLS] attention over the patches, per image and head.
    expected["beit_vit_finetuned_cls_attention"] = ft.blocks[-1].attn.last_p[:, :, 0, 1:].flatten().tolist()

    # timm's vit_*: learned positions (drawn at random here), [CLS] pooling.
    vit = MaskedAutoencoderViT(img_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=2, num_heads=2,
                               decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, mlp_ratio=4.0).eval()
    randomise_(vit)
    with torch.no_grad():
        vit.pos_embed.copy_(0.02 * torch.randn_like(vit.pos_embed))
    head = torch.nn.Linear(32, 3)
    randomise_(head)
    sd = collections.OrderedDict(
        (k, v) for k, v in vit.state_dict().items() if not (k.startswith("decoder") or k == "mask_token"))
    sd["head.weight"], sd["head.bias"] = head.weight.detach(), head.bias.detach()
    torch.save(sd, os.path.join(out, "timm_vit.pth"))  # a bare state dict, as timm's hub files
    with torch.no_grad():
        expected["timm_vit"] = timm_vit_probs(vit, head, x).flatten().tolist()

    # Swin classifiers: norm, the mean of the last stage, head.
    swin = Swin().eval()
    randomise_(swin)
    head = torch.nn.Linear(64, 3)
    randomise_(head)
    with torch.no_grad():
        probs = head(swin(x).mean((1, 2))).softmax(-1).flatten().tolist()
    torch.save({"state_dict": timm_swin_names(swin_state(swin, head, False))}, os.path.join(out, "timm_swin.pth"))
    torch.save({"model": swin_state(swin, head, True)}, os.path.join(out, "simmim_swin_finetuned.pth"))
    expected["timm_swin"] = probs
    expected["simmim_swin_finetuned"] = probs
    with open(os.path.join(out, "variants.json"), "w") as f:
        json.dump(expected, f)


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
    variants(out)
    print("wrote", sorted(os.listdir(out)))


if __name__ == "__main__":
    main()
