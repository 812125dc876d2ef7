#!/usr/bin/env python3
"""PyTorch reference benchmark: one MAE pre-training step on CPU.

The model is `mae_model.py` beside this file: a re-implementation of
facebookresearch/mae `models_mae.py` (MaskedAutoencoderViT) with the same
module structure and state_dict names, with timm's current PatchEmbed / Block /
Attention / Mlp inlined. No timm dependency.

Usage:
    python3 mae_step.py --workload tiny32            # benchmark, prints 1 JSON line
    python3 mae_step.py --workload base224 --steps 20
    python3 mae_step.py --img-size 64 --patch 8 --dim 256 --depth 6 --heads 4 \
        --dec-dim 128 --dec-depth 2 --dec-heads 4 --batch 32
    python3 mae_step.py --workload tiny32 --check-shapes          # keys + shapes, exits
    python3 mae_step.py --workload tiny32 --save-safetensors m.safetensors  # exits

One timed step = zero_grad(set_to_none=True) + forward (incl. random masking
and the norm-pix loss) + loss.backward() + AdamW.step(). The input batch
(torch.randn) is generated before each step's timer starts.
"""

import argparse
import json
import resource
import statistics
import sys
import time

import torch

from machine import cpu_name
from mae_model import MLP_RATIO, MaskedAutoencoderViT, param_groups

WORKLOADS = {
    # name: img_size, patch, chans, dim, depth, heads, dec_dim, dec_depth, dec_heads, batch
    "tiny32": dict(img_size=32, patch=4, chans=3, dim=192, depth=12, heads=3,
                   dec_dim=128, dec_depth=4, dec_heads=4, batch=64),
    "base224": dict(img_size=224, patch=16, chans=3, dim=768, depth=12, heads=12,
                    dec_dim=512, dec_depth=8, dec_heads=16, batch=8),
}
CFG_KEYS = ["img_size", "patch", "chans", "dim", "depth", "heads",
            "dec_dim", "dec_depth", "dec_heads", "batch"]


def build_model(cfg):
    return MaskedAutoencoderViT(
        img_size=cfg["img_size"], patch_size=cfg["patch"], in_chans=cfg["chans"],
        embed_dim=cfg["dim"], depth=cfg["depth"], num_heads=cfg["heads"],
        decoder_embed_dim=cfg["dec_dim"], decoder_depth=cfg["dec_depth"],
        decoder_num_heads=cfg["dec_heads"], mlp_ratio=MLP_RATIO, norm_pix_loss=True)


def count_flops(cfg, len_keep):
    """Model FLOPs of ONE training step (forward + backward), in FLOP.

    Matrix products only, 2*m*n*k each (elementwise ops, LayerNorm, softmax,
    GELU, gathers and the optimizer are not counted). With
        B = batch, L = (img/patch)^2 patches, P = patch*patch*chans,
        D = encoder dim, Dd = decoder dim, r = MLP ratio (4),
        Ne = len_keep + 1 (visible tokens + cls), Nd = L + 1,
    forward FLOPs are
        patch_embed     2 * B * L  * P * D            (all L patches are embedded)
        encoder block   2 * B * Ne * D  * (3D + D + rD + rD)   qkv, proj, fc1, fc2
                      + 2 * 2 * B * Ne^2 * D                   q@k^T and attn@v
                        (x depth)
        decoder_embed   2 * B * Ne * D * Dd
        decoder block   2 * B * Nd * Dd * (3Dd + Dd + rDd + rDd)
                      + 2 * 2 * B * Nd^2 * Dd          (x dec_depth)
        decoder_pred    2 * B * Nd * Dd * P
    and a training step is counted as 3 x forward (backward = 2 x forward).
    """
    B = cfg["batch"]
    L = (cfg["img_size"] // cfg["patch"]) ** 2
    P = cfg["patch"] ** 2 * cfg["chans"]
    D, Dd = cfg["dim"], cfg["dec_dim"]
    r = MLP_RATIO
    Ne, Nd = len_keep + 1, L + 1

    def block(n, d):
        linear = 2 * B * n * d * (3 * d + d + r * d + r * d)
        attention = 2 * 2 * B * n * n * d
        return linear + attention

    fwd = 2 * B * L * P * D
    fwd += cfg["depth"] * block(Ne, D)
    fwd += 2 * B * Ne * D * Dd
    fwd += cfg["dec_depth"] * block(Nd, Dd)
    fwd += 2 * B * Nd * Dd * P
    return 3 * fwd


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="tiny32",
                    help="preset (default tiny32); explicit size flags below override it")
    ap.add_argument("--img-size", type=int)
    ap.add_argument("--patch", type=int)
    ap.add_argument("--chans", type=int)
    ap.add_argument("--dim", type=int)
    ap.add_argument("--depth", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--dec-dim", type=int)
    ap.add_argument("--dec-depth", type=int)
    ap.add_argument("--dec-heads", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", action="store_true",
                    help="forward + loss under torch.autocast('cpu', dtype=torch.bfloat16)")
    ap.add_argument("--compile", action="store_true",
                    help="run the model through torch.compile (Inductor's C++ CPU backend); "
                         "compilation happens in the warm-up steps, outside the timed ones")
    ap.add_argument("--check-shapes", action="store_true",
                    help="print every state_dict key with its shape and exit")
    ap.add_argument("--save-safetensors", metavar="PATH",
                    help="save the freshly initialised state_dict (safetensors) and exit")
    args = ap.parse_args(argv)

    cfg = dict(WORKLOADS[args.workload])
    overridden = False
    for k in CFG_KEYS:
        v = getattr(args, k)
        if v is not None and v != cfg[k]:
            cfg[k] = v
            overridden = True
    name = "custom" if overridden else args.workload
    if cfg["img_size"] % cfg["patch"] != 0:
        ap.error("img-size must be a multiple of patch")
    if cfg["dim"] % cfg["heads"] or cfg["dec_dim"] % cfg["dec_heads"]:
        ap.error("dim/dec-dim must be divisible by heads/dec-heads")
    if cfg["dim"] % 4 or cfg["dec_dim"] % 4:
        ap.error("dim/dec-dim must be multiples of 4 (2-D sin-cos embedding)")
    if args.steps < 1 or args.warmup < 0:
        ap.error("need --steps >= 1 and --warmup >= 0")
    return args, cfg, name


def main(argv=None):
    # RSS right after `import torch` (the PyPI CUDA build maps ~0.5 GB of libs)
    import_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    args, cfg, name = parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    torch.manual_seed(args.seed)

    model = build_model(cfg)

    if args.check_shapes or args.save_safetensors:
        sd = model.state_dict()
        if args.check_shapes:
            for k, v in sd.items():
                print(f"{k}\t{tuple(v.shape)}\t{str(v.dtype).replace('torch.', '')}")
            n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
            print(f"# {len(sd)} tensors, {sum(v.numel() for v in sd.values())} values, "
                  f"{n_train} trainable parameters", file=sys.stderr)
        if args.save_safetensors:
            from safetensors.torch import save_file
            meta = {k: str(v) for k, v in cfg.items()}
            meta.update(workload=name, seed=str(args.seed), torch=torch.__version__)
            save_file({k: v.contiguous() for k, v in sd.items()}, args.save_safetensors, metadata=meta)
            print(f"# saved {len(sd)} tensors to {args.save_safetensors}", file=sys.stderr)
        return 0

    model.train()
    lr = 1.5e-4 * cfg["batch"] / 256  # MAE: blr * eff_batch_size / 256
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=lr, betas=(0.9, 0.95))

    fwd = torch.compile(model) if args.compile else model
    if args.compile:
        args.warmup = max(args.warmup, 2)  # the first call compiles, the second settles

    B, C, S = cfg["batch"], cfg["chans"], cfg["img_size"]
    L = (S // cfg["patch"]) ** 2
    len_keep = int(L * (1 - args.mask_ratio))

    times = []
    loss_val = float("nan")
    for i in range(args.warmup + args.steps):
        imgs = torch.randn(B, C, S, S)  # fresh batch, generated outside the timed region
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss, _, _ = fwd(imgs, mask_ratio=args.mask_ratio)
        loss.backward()
        opt.step()
        t1 = time.perf_counter()
        if i >= args.warmup:
            times.append(t1 - t0)
        loss_val = loss.item()  # outside the timer (CPU: already computed)

    med = statistics.median(times)
    gflop = count_flops(cfg, len_keep) / 1e9
    out = {
        "engine": "pytorch",
        "torch": torch.__version__,
        "precision": "bf16-autocast" if args.bf16 else "f32",
        "mode": "compile" if args.compile else "eager",
        "cpu": cpu_name(),
        "workload": name,
        "batch": B,
        "threads": args.threads,
        "steps": args.steps,
        "images_per_s": B / med,
        "median_step_s": med,
        "min_step_s": min(times),
        "gflop_per_step": gflop,
        "gflops": gflop / med,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # extra context (not part of the comparison)
        "mask_ratio": args.mask_ratio,
        "len_keep": len_keep,
        "warmup": args.warmup,
        "import_rss_mb": import_rss_mb,
        "loss": loss_val,
    }
    if name == "custom":
        out["config"] = cfg
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
