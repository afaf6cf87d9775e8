"""SVI LoRA merged into the Wan2.1 I2V DiT at strengths 1.0 / 0.7, from both key spellings."""

from __future__ import annotations

import pytest
import torch
from parity_support import fixture, report, tensor
from safetensors.torch import load_file

from svi_core.lora import load_lora

TOL = 1e-4
CASES = [
    (file, strength, expected)
    for file in ("lora_peft_names", "lora_comfy_names")
    for strength, expected in ((1.0, "expected_strength_1"), (0.7, "expected_strength_0_7"))
]


@pytest.fixture(scope="module")
def base_model():
    from svi_core.standalone.models import load_wan_transformer

    model = load_wan_transformer(fixture("wan21_i2v_dit", "model.safetensors"))
    return model, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("file", "strength", "expected"), CASES)
def test_lora_forward_matches_reference(base_model, file: str, strength: float, expected: str):
    from svi_core.lora import apply_lora_to_diffusers

    model, base = base_model
    model.load_state_dict(base)
    lora = load_lora(fixture("svi_lora", f"{file}.safetensors"))
    n = apply_lora_to_diffusers(model, lora, strength)
    assert n == len(lora.entries) > 0
    inputs = load_file(str(fixture("wan21_i2v_dit", "inputs.safetensors")))
    with torch.no_grad():
        out = model(
            hidden_states=inputs["x"],
            timestep=inputs["timestep"],
            encoder_hidden_states=inputs["context"],
            encoder_hidden_states_image=inputs["clip_fea"],
            return_dict=False,
        )[0]
    ref = tensor("svi_lora", f"{expected}.safetensors", key="out")
    diff = (out - ref).abs().max().item()
    report(f"svi_lora {file} strength {strength}", diff, TOL)
    assert diff <= TOL
