"""The shipped toy models: official Wan key names, loadable, and actually trained."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from svi_core.latents import normalise
from svi_core.toy.models import TOY_DIT, TOY_DIT_CONFIG, load_toy_dit, load_toy_vae
from svi_core.toy.world import WorldConfig, toy_clip

pytestmark = pytest.mark.skipif(not TOY_DIT.is_file(), reason="toy assets not built")


def test_dit_file_uses_official_names_comfyui_can_detect():
    with safe_open(str(TOY_DIT), "pt") as f:
        keys = set(f.keys())
        dim = f.get_tensor("patch_embedding.weight").shape[0]
        text_in = f.get_tensor("text_embedding.0.weight").shape[1]
        img_in = f.get_tensor("img_emb.proj.1.weight").shape[1]
    # ComfyUI: Wan DiT from head.modulation, I2V from img_emb.proj.0.bias, heads = dim // 128,
    # text_dim fixed at 4096, CLIP width fixed at 1280
    assert {"head.modulation", "img_emb.proj.0.bias", "blocks.0.self_attn.q.weight"} <= keys
    assert not any(k.startswith(("blocks.0.attn1", "condition_embedder")) for k in keys)
    cfg = json.loads(TOY_DIT_CONFIG.read_text())
    assert cfg["dim"] == dim and cfg["num_heads"] == dim // 128
    assert text_in == 4096 and img_in == 1280


def test_vae_reconstructs_toy_video_and_latents_are_normalised():
    vae = load_toy_vae()
    cfg = WorldConfig(height=48, width=64)
    clip = toy_clip(12345, 5, config=cfg)  # a scene not in the training seed range
    x = torch.from_numpy(clip).float().permute(3, 0, 1, 2)[None] / 127.5 - 1.0
    with torch.no_grad():
        raw = vae.encode(x).latent_dist.mean
        rec = vae.decode(raw).sample.clamp(-1, 1)
    assert raw.shape == (1, 16, 2, 6, 8)
    z = normalise(raw)
    assert abs(z.mean().item()) < 0.5 and 0.4 < z.std().item() < 2.5
    err = (rec - x).abs().mean().item()
    flat = (x - x.mean(dim=(2, 3, 4), keepdim=True)).abs().mean().item()  # predicting the mean
    assert err < 0.6 * flat, (err, flat)


def test_dit_predicts_velocity_better_than_zero():
    """On a held-out toy clip, the trained DiT's flow-matching loss beats predicting v = 0."""
    dit = load_toy_dit()
    vae = load_toy_vae()
    cfg = WorldConfig(height=48, width=64)
    clip = toy_clip(54321, 5, config=cfg)
    x = torch.from_numpy(clip).float().permute(3, 0, 1, 2)[None] / 127.5 - 1.0
    cond = x.clone()
    cond[:, :, 1:] = 0.0
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x0 = normalise(vae.encode(x).latent_dist.mean)
        c = normalise(vae.encode(cond).latent_dist.mean)
        mask = torch.zeros(1, 4, *x0.shape[2:])
        mask[:, :, 0] = 1.0
        losses, zero = [], []
        for s in (0.3, 0.6, 0.9):
            n = torch.randn(x0.shape, generator=gen)
            xt = (1 - s) * x0 + s * n
            v = dit(
                torch.cat([xt, mask, c], 1),
                torch.tensor([1000.0 * s]),
                torch.zeros(1, 512, 4096),
                encoder_hidden_states_image=torch.zeros(1, 257, 1280),
                return_dict=False,
            )[0]
            losses.append(float(((v - (n - x0)) ** 2).mean()))
            zero.append(float(((n - x0) ** 2).mean()))
    assert np.mean(losses) < 0.8 * np.mean(zero), (losses, zero)
