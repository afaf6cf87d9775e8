"""Wan2.1 VAE: diffusers route (encode mean, decode) vs the ComfyUI reference outputs."""

from __future__ import annotations

import json

from parity_support import fixture, report, tensor

from svi_core.checkpoints import inspect_vae, load_state_dict

TOL = 2e-5


def test_inspect_vae_matches_config_json() -> None:
    cfg_json = json.loads(fixture("wan21_vae", "config.json").read_text())
    cfg = inspect_vae(load_state_dict(fixture("wan21_vae", "model.safetensors")))
    expected = {k: v for k, v in cfg_json["diffusers_equivalent"].items() if k != "class"}
    ours = cfg.diffusers_kwargs()
    for key, value in expected.items():
        assert ours[key] == value, key


def test_vae_encode_decode_match_reference() -> None:
    from svi_core.standalone.models import load_wan_vae, vae_decode, vae_encode

    vae = load_wan_vae(fixture("wan21_vae", "model.safetensors"))
    pixels = tensor("wan21_vae", "pixels.safetensors", key="pixels")
    mean = vae_encode(vae, pixels)
    expected_mean = tensor("wan21_vae", "expected_latent_mean.safetensors", key="latent_mean")
    assert mean.shape == expected_mean.shape
    enc_diff = (mean - expected_mean).abs().max().item()
    report("wan21 VAE encode (raw mean)", enc_diff, TOL)

    latent = tensor("wan21_vae", "latent.safetensors", key="latent")
    decoded = vae_decode(vae, latent)
    expected = tensor("wan21_vae", "expected_decoded.safetensors", key="decoded").clamp(-1, 1)
    assert decoded.shape == expected.shape
    assert decoded.min() >= -1 and decoded.max() <= 1
    dec_diff = (decoded - expected).abs().max().item()
    report("wan21 VAE decode (clamped)", dec_diff, TOL)
    assert enc_diff <= TOL and dec_diff <= TOL


def test_official_pth_layout_loads_the_same_weights(tmp_path) -> None:
    import torch

    from svi_core.standalone.models import load_wan_vae

    src = fixture("wan21_vae", "model.safetensors")
    pth = tmp_path / "Wan2.1_VAE.pth"
    torch.save(load_state_dict(src), str(pth))
    a, b = load_wan_vae(src).state_dict(), load_wan_vae(pth).state_dict()
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
