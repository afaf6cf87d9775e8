"""Wan2.1 I2V and Wan2.2 expert DiT: diffusers route vs the ComfyUI reference outputs."""

from __future__ import annotations

import json

import pytest
import torch
from parity_support import fixture, report, tensor
from safetensors.torch import load_file

from svi_core.checkpoints import dit_overrides_from_config, inspect_dit, load_dit_state_dict

TOL = 1e-4


@pytest.mark.parametrize("name", ["wan21_i2v_dit", "wan22_i2v_dit"])
def test_inspect_dit_matches_config_json(name: str) -> None:
    cfg_json = json.loads(fixture(name, "config.json").read_text())
    sd = load_dit_state_dict(fixture(name, "model.safetensors"))
    cfg = inspect_dit(sd, dit_overrides_from_config(cfg_json, dim=cfg_json["dim"]))
    for field in ("dim", "ffn_dim", "num_layers", "in_dim", "out_dim", "text_dim", "freq_dim"):
        assert getattr(cfg, field) == cfg_json[field], field
    assert cfg.num_heads == cfg_json["num_heads"]
    assert list(cfg.patch_size) == cfg_json["patch_size"]
    assert cfg.qk_norm == cfg_json["qk_norm"] and cfg.cross_attn_norm == cfg_json["cross_attn_norm"]
    assert cfg.image_dim == cfg_json.get("clip_dim")
    expected = {k: v for k, v in cfg_json["diffusers_equivalent"].items() if k != "class"}
    ours = cfg.diffusers_kwargs()
    ours["patch_size"] = list(ours["patch_size"])
    for key, value in expected.items():
        assert ours[key] == value, key


@pytest.mark.parametrize("name", ["wan21_i2v_dit", "wan22_i2v_dit"])
def test_dit_forward_matches_reference(name: str) -> None:
    from svi_core.standalone.models import load_wan_transformer

    model = load_wan_transformer(fixture(name, "model.safetensors"))
    inputs = load_file(str(fixture(name, "inputs.safetensors")))
    expected = tensor(name, "expected.safetensors", key="out")
    with torch.no_grad():
        out = model(
            hidden_states=inputs["x"],
            timestep=inputs["timestep"],
            encoder_hidden_states=inputs["context"],
            encoder_hidden_states_image=inputs.get("clip_fea"),
            return_dict=False,
        )[0]
    assert out.shape == expected.shape
    diff = (out - expected).abs().max().item()
    report(f"{name} DiT forward", diff, TOL)
    assert diff <= TOL


def test_dit_bf16_keeps_diffusers_fp32_modules_and_stays_close() -> None:
    from svi_core.standalone.models import load_wan_transformer

    name = "wan21_i2v_dit"
    model = load_wan_transformer(fixture(name, "model.safetensors"), dtype=torch.bfloat16)
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert model.scale_shift_table.dtype == torch.float32  # diffusers' _keep_in_fp32_modules
    assert model.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    inputs = load_file(str(fixture(name, "inputs.safetensors")))
    expected = tensor(name, "expected.safetensors", key="out")
    with torch.no_grad():
        out = model(
            hidden_states=inputs["x"].bfloat16(),
            timestep=inputs["timestep"],
            encoder_hidden_states=inputs["context"].bfloat16(),
            encoder_hidden_states_image=inputs["clip_fea"].bfloat16(),
            return_dict=False,
        )[0]
    diff = (out.float() - expected).abs().max().item()
    report(f"{name} DiT forward in bf16 (informative)", diff, 0.05 * expected.abs().max().item())
    assert diff <= 0.05 * expected.abs().max().item()


def test_i2v_without_clip_feature_is_refused_since_comfy_differs() -> None:
    """``expected_no_clip``: ComfyUI's Wan2.1 I2V DiT called without ``clip_fea`` (it then runs
    the image branch of every cross-attention over the embedded text). The diffusers route
    drops the image branch instead, and the two disagree far beyond the parity tolerance, so
    the standalone backend must refuse an I2V DiT without a CLIP feature (as the nodes do for
    the Wan2.1 modes) rather than give a result ComfyUI would not."""
    from svi_core.backend import ClipRequest
    from svi_core.errors import SVIError
    from svi_core.guidance import Guidance
    from svi_core.loop import clip_noise
    from svi_core.standalone.backend import DiffusersBackend
    from svi_core.standalone.models import load_wan_transformer, load_wan_vae

    name = "wan21_i2v_dit"
    model = load_wan_transformer(fixture(name, "model.safetensors"))
    inputs = load_file(str(fixture(name, "inputs.safetensors")))
    comfy_no_clip = tensor(name, "expected_no_clip.safetensors", key="out")
    with torch.no_grad():
        ours = model(
            hidden_states=inputs["x"],
            timestep=inputs["timestep"],
            encoder_hidden_states=inputs["context"],
            encoder_hidden_states_image=None,
            return_dict=False,
        )[0]
    diff = (ours - comfy_no_clip).abs().max().item()
    report(f"{name} without clip_fea (must differ)", diff, TOL)
    assert diff > 100 * TOL

    backend = DiffusersBackend(
        model,
        load_wan_vae(fixture("wan21_vae", "model.safetensors")),
        text_encoder=lambda _: inputs["context"],
    )
    _, _, t, h, w = inputs["x"].shape
    mask = torch.zeros(1, 4, t, h, w)
    mask[:, :, 0] = 1
    request = ClipRequest(
        index=0, seed=0, noise=clip_noise(0, t, h, w), cond_latent=inputs["x"][:, 20:], mask=mask,
        positive="p", negative="n", clip_vision=None, steps=2, guidance=Guidance(scale=1.0), shift=5.0, boundary=None,
    )  # fmt: skip
    with pytest.raises(SVIError, match="no CLIP-vision"):
        backend.denoise(request)
