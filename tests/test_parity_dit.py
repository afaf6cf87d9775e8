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
