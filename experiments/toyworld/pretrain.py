"""Pretrain the tiny Wan-architecture toy models from scratch on a CPU (seeded, resumable).

Stages (each resumes from its own checkpoint in --out; rerunning skips finished stages):

1. VAE: diffusers ``AutoencoderKLWan`` (base_dim 16, z_dim 16, the Wan2.1 layout: dim_mult
   [1, 2, 4, 4], 2 res blocks, temporal downsample [False, True, True]), started from the
   hand-built autoencoder of ``analytic_vae.py`` (training from scratch does not get past the
   mean colour in CPU minutes) and fine-tuned on random 5-frame 32x32 crops (L1 + MSE); the
   fine-tuned weights are kept only if they reconstruct held-out clips better. After training, a per-channel
   affine is folded into ``quant_conv`` / ``post_quant_conv`` so the VAE's RAW latents have the
   Wan2.1 latent mean/std (``svi_core.latents``): the project's normalisation then gives ~unit
   latents, exactly as with the real VAE.
2. Latent cache: N toy clips (13 frames, 48x64) -> NORMALISED latents x0 [16, 4, 6, 8] and the
   Wan I2V condition latent of ``[frame 0, zeros x 12]`` (one causal encode).
3. DiT: diffusers ``WanTransformer3DModel`` I2V (dim 128 = 1 head of 128, 4 layers, ffn 512,
   text_dim 4096, image_dim 1280 -- the sizes ComfyUI can load) trained with flow matching
   (``x_t = (1 - s) x0 + s n``, target ``n - x0``, s from the shift-5 schedule) on the base Wan
   I2V conditioning: y = [mask (latent frame 0), cond latent]. Text is a fixed all-zero
   [512, 4096] context and the CLIP-vision feature a fixed all-zero [257, 1280] (documented
   toy simplification: the image reaches the model only through y).

Writes diffusers state dicts (``vae.safetensors``, ``dit.safetensors``) and training logs to
--out; ``export.py`` converts them to the official names in ``svi_core/assets``.

    nice python experiments/toyworld/pretrain.py --seed 0 --out /tmp/toy_pretrain
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from svi_core.latents import WAN21_LATENT_MEAN, WAN21_LATENT_STD, normalise  # noqa: E402
from svi_core.toy.world import TOY_WORLD, ToyScene  # noqa: E402

TRAIN_SEED_BASE = 10_000  # training scenes use seeds >= this; 0..9999 are held out
CLIP_FRAMES = 13
VAE_CONFIG = dict(
    base_dim=16,
    z_dim=16,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_scales=[],
    temperal_downsample=[False, True, True],
)
DIT_CONFIG = dict(
    patch_size=[1, 2, 2],
    num_attention_heads=1,
    attention_head_dim=128,
    in_channels=36,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=512,
    num_layers=4,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=1280,
    added_kv_proj_dim=128,
    rope_max_seq_len=1024,
)
TEXT_TOKENS, TEXT_DIM = 512, 4096
IMAGE_TOKENS, IMAGE_DIM = 257, 1280


def log(out: Path, msg: str) -> None:
    line = f"{time.strftime('%H:%M:%S')} {msg}"
    print(line, flush=True)
    with open(out / "pretrain.log", "a") as f:
        f.write(line + "\n")


def to_pixels(u8: np.ndarray) -> torch.Tensor:
    """uint8 [N, F, H, W, 3] -> float32 [N, 3, F, H, W] in [-1, 1]."""
    x = torch.from_numpy(u8).float() * (2.0 / 255.0) - 1.0
    return x.permute(0, 4, 1, 2, 3).contiguous()


def make_vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(**VAE_CONFIG)


def make_dit():
    from diffusers import WanTransformer3DModel

    cfg = dict(DIT_CONFIG)
    cfg["patch_size"] = tuple(cfg["patch_size"])
    return WanTransformer3DModel(**cfg)


# ----------------------------------------------------------------------------- stage 1: VAE


def train_vae(out: Path, seed: int, minutes: float) -> None:
    final = out / "vae.safetensors"
    if final.exists():
        log(out, "vae: done already")
        return
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    from analytic_vae import init_analytic

    vae = make_vae().train()
    init_analytic(vae)  # exact blocky autoencoder to start from (see analytic_vae.py)
    peak_lr = 5e-5  # fine-tuning: small, the start is already a working autoencoder
    eval_rng = np.random.default_rng(seed + 99)
    eval_x = to_pixels(
        np.stack(
            [
                ToyScene(int(eval_rng.integers(TRAIN_SEED_BASE, TRAIN_SEED_BASE + 100_000))).frames(
                    0, CLIP_FRAMES
                )
                for _ in range(4)
            ]
        )
    )

    def eval_l1() -> float:
        with torch.no_grad():
            return float(
                (vae.decode(vae.encode(eval_x).latent_dist.mean).sample - eval_x).abs().mean()
            )

    l1_start = eval_l1()
    start_state = {k: v.clone() for k, v in vae.state_dict().items()}
    log(out, f"vae: analytic init, eval L1 {l1_start:.4f}")
    opt = torch.optim.AdamW(vae.parameters(), lr=peak_lr, weight_decay=0.0)
    ckpt = out / "vae_ckpt.pt"
    step = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = int(state["step"])
        rng = np.random.default_rng(seed + step)
    spent = float(torch.load(ckpt, weights_only=True)["spent"]) if ckpt.exists() else 0.0
    t0, last_ck = time.time(), time.time()
    ch, cw, nf, bs = 32, 32, 5, 8
    h, w = TOY_WORLD.height, TOY_WORLD.width
    while spent + (time.time() - t0) < minutes * 60:
        clips = []
        for _ in range(bs):
            scene = ToyScene(int(rng.integers(TRAIN_SEED_BASE, TRAIN_SEED_BASE + 100_000)))
            v = scene.frames(int(rng.integers(0, 400)), nf)
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            clips.append(v[:, y0 : y0 + ch, x0 : x0 + cw])
        x = to_pixels(np.stack(clips))
        # Deterministic autoencoder (posterior mean, no sampling, no KL): with so few CPU
        # steps, latent noise or a KL pull drowns the small initial signal. The latent scale is
        # fixed afterwards by folding the Wan2.1 statistics in (fold_latent_stats).
        frac = min(1.0, (spent + time.time() - t0) / (minutes * 60))
        for g in opt.param_groups:  # warmup 20 steps, then cosine to peak / 10 over the budget
            g["lr"] = peak_lr * min(1.0, (step + 1) / 20) * (0.55 + 0.45 * math.cos(math.pi * frac))
        mu = vae.encode(x).latent_dist.mean
        rec = vae.decode(mu).sample
        l1 = (rec - x).abs().mean()
        mse = (rec - x).pow(2).mean()
        kl = 0.5 * mu.pow(2).mean()  # logged only
        loss = l1 + mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 10 == 0:
            log(out, f"vae step {step} l1 {l1.item():.4f} mse {mse.item():.4f} kl {kl.item():.3f}")
        if time.time() - last_ck > 180:
            s = spent + time.time() - t0
            torch.save(
                {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step, "spent": s}, ckpt
            )
            last_ck = time.time()
    vae.eval()
    l1_end = eval_l1()
    log(out, f"vae: eval L1 {l1_start:.4f} at the analytic start, {l1_end:.4f} after fine-tuning")
    if l1_end > l1_start:
        log(out, "vae: fine-tuning did not help; keeping the analytic weights")
        vae.load_state_dict(start_state)
    fold_latent_stats(vae, rng)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(final))
    log(out, f"vae: finished after {step} steps")


@torch.no_grad()
def fold_latent_stats(vae, rng: np.random.Generator) -> None:
    """Fold an affine into quant_conv / post_quant_conv so raw latent means/stds match Wan2.1."""
    clips = [
        ToyScene(int(rng.integers(TRAIN_SEED_BASE, TRAIN_SEED_BASE + 100_000))).frames(
            int(rng.integers(0, 400)), CLIP_FRAMES
        )
        for _ in range(16)
    ]
    mu = vae.encode(to_pixels(np.stack(clips))).latent_dist.mean  # [B, 16, T, h, w]
    m = mu.mean(dim=(0, 2, 3, 4))
    s = mu.std(dim=(0, 2, 3, 4)).clamp_min(1e-4)
    target_m = torch.tensor(WAN21_LATENT_MEAN)
    target_s = torch.tensor(WAN21_LATENT_STD)
    a = target_s / s  # new = a * old + b
    b = target_m - a * m
    zc = m.numel()
    qw, qb = vae.quant_conv.weight, vae.quant_conv.bias  # [32, 32, 1, 1, 1]: mean rows 0..15
    qw[:zc] *= a.view(-1, 1, 1, 1, 1)
    qb[:zc] = qb[:zc] * a + b
    qb[zc:] += 2.0 * torch.log(a)  # logvar rows: var scales by a^2
    pw, pb = vae.post_quant_conv.weight, vae.post_quant_conv.bias  # input old = (new - b) / a
    pb += (pw[:, :, 0, 0, 0] @ (-b / a)).view(-1)
    pw /= a.view(1, -1, 1, 1, 1)


# ------------------------------------------------------------------------ stage 2: latent cache


@torch.no_grad()
def build_cache(out: Path, seed: int, n_clips: int) -> None:
    final = out / "latents.safetensors"
    if final.exists():
        log(out, "cache: done already")
        return
    vae = make_vae().eval()
    vae.load_state_dict(load_file(str(out / "vae.safetensors")))
    rng = np.random.default_rng(seed + 1)
    xs, cs = [], []
    bs = 8
    for i in range(0, n_clips, bs):
        clips = [
            ToyScene(int(rng.integers(TRAIN_SEED_BASE, TRAIN_SEED_BASE + 100_000))).frames(
                int(rng.integers(0, 400)), CLIP_FRAMES
            )
            for _ in range(bs)
        ]
        pix = to_pixels(np.stack(clips))
        cond = pix.clone()
        cond[:, :, 1:] = 0.0
        xs.append(normalise(vae.encode(pix).latent_dist.mode()))
        cs.append(normalise(vae.encode(cond).latent_dist.mode()))
        if (i // bs) % 5 == 0:
            log(out, f"cache {i + bs}/{n_clips} x0 std {xs[-1].std().item():.3f}")
    x0 = torch.cat(xs)
    c = torch.cat(cs)
    save_file({"x0": x0.contiguous(), "cond": c.contiguous()}, str(final))
    log(out, f"cache: {x0.shape[0]} clips, x0 mean {x0.mean():.3f} std {x0.std():.3f}")


# ----------------------------------------------------------------------------- stage 3: DiT


def sample_sigma(n: int, gen: torch.Generator, shift: float = 5.0) -> torch.Tensor:
    """s' of the shift-``shift`` schedule at a uniform position in (0, 1]."""
    u = 1.0 - torch.rand(n, generator=gen)  # (0, 1]
    return shift * u / (1.0 + (shift - 1.0) * u)


def train_dit(out: Path, seed: int, minutes: float) -> None:
    final = out / "dit.safetensors"
    if final.exists():
        log(out, "dit: done already")
        return
    data = load_file(str(out / "latents.safetensors"))
    x0_all, cond_all = data["x0"], data["cond"]
    n = x0_all.shape[0]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 2)
    dit = make_dit().train()
    opt = torch.optim.AdamW(dit.parameters(), lr=3e-4, weight_decay=0.01)
    ckpt = out / "dit_ckpt.pt"
    step, spent = 0, 0.0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        dit.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, spent = int(state["step"]), float(state["spent"])
        gen = torch.Generator().manual_seed(seed + 2 + step)
    bs = 8
    t_lat = x0_all.shape[2]
    mask = torch.zeros(1, 4, t_lat, *x0_all.shape[3:])
    mask[:, :, 0] = 1.0
    text = torch.zeros(bs, TEXT_TOKENS, TEXT_DIM)
    image = torch.zeros(bs, IMAGE_TOKENS, IMAGE_DIM)
    t0, last_ck, ema = time.time(), time.time(), None
    while spent + (time.time() - t0) < minutes * 60:
        idx = torch.randint(0, n, (bs,), generator=gen)
        x0, cond = x0_all[idx], cond_all[idx]
        noise = torch.randn(x0.shape, generator=gen)
        s = sample_sigma(bs, gen)
        sv = s.view(-1, 1, 1, 1, 1)
        xt = (1 - sv) * x0 + sv * noise
        inp = torch.cat([xt, mask.expand(bs, -1, -1, -1, -1), cond], dim=1)
        lr = 3e-4 * min(1.0, (step + 1) / 100)
        for g in opt.param_groups:
            g["lr"] = lr
        pred = dit(inp, s * 1000.0, text, encoder_hidden_states_image=image, return_dict=False)[0]
        loss = (pred.float() - (noise - x0)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 20 == 0:
            log(out, f"dit step {step} loss {loss.item():.4f} ema {ema:.4f}")
        if time.time() - last_ck > 180:
            sp = spent + time.time() - t0
            torch.save(
                {"model": dit.state_dict(), "opt": opt.state_dict(), "step": step, "spent": sp},
                ckpt,
            )
            save_file(
                {k: v.contiguous() for k, v in dit.state_dict().items()},
                str(out / "dit_latest.safetensors"),
            )
            last_ck = time.time()
    save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, str(final))
    log(out, f"dit: finished after {step} steps, loss ema {ema}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--vae-minutes", type=float, default=5.0)
    p.add_argument("--cache-clips", type=int, default=240)
    p.add_argument("--dit-minutes", type=float, default=16.0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "configs.json").write_text(
        json.dumps({"vae": VAE_CONFIG, "dit": DIT_CONFIG}, indent=1)
    )
    log(a.out, f"pretrain seed {a.seed} -> {a.out}")
    train_vae(a.out, a.seed, a.vae_minutes)
    build_cache(a.out, a.seed, a.cache_clips)
    train_dit(a.out, a.seed, a.dit_minutes)
    log(a.out, "all stages done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
