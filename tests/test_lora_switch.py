"""Per-clip LoRA strengths on a diffusers Wan DiT: unmerged LoRAs whose strength can change
between clips, equal to a merged LoRA at that strength and independent of the order of
changes (so a resumed run equals an uninterrupted one)."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("diffusers")

from test_lora import DIFFUSERS_NAMES, LAYERS, _pairs, _tiny_dit  # noqa: E402

from svi_core.errors import SVIError  # noqa: E402
from svi_core.lora import apply_lora_to_diffusers, normalise_lora_keys  # noqa: E402
from svi_core.standalone.lora_switch import SwitchableLoras  # noqa: E402


def low_rank(seed: int):
    sd = {}
    for m, (a, b) in _pairs(seed).items():
        sd[f"diffusion_model.{m}.lora_A.weight"] = a * 0.3
        sd[f"diffusion_model.{m}.lora_B.weight"] = b * 0.3
    return normalise_lora_keys(sd, f"lora{seed}.safetensors")


def diffs(seed: int):
    g = torch.Generator().manual_seed(seed)
    sd = {
        "diffusion_model.blocks.0.norm3.diff": torch.randn(8, generator=g),
        "diffusion_model.blocks.0.norm3.diff_b": torch.randn(8, generator=g),
        "diffusion_model.blocks.0.modulation.diff": torch.randn(1, 6, 8, generator=g) * 0.1,
        "diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.randn(2, 8, generator=g),
        "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.randn(8, 2, generator=g),
        "diffusion_model.head.head.diff_b": torch.randn(16, generator=g),
    }
    return normalise_lora_keys(sd, "speed.safetensors")


def run(model):
    torch.manual_seed(3)
    x = torch.randn(1, 4, 3, 4, 4)
    ctx = torch.randn(1, 5, 8)
    with torch.no_grad():
        return model(
            hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=ctx,
            return_dict=False,
        )[0]  # fmt: skip


def merged(strengths):
    model = _tiny_dit(num_layers=2).eval()
    for lora, s in strengths:
        if s:
            apply_lora_to_diffusers(model, lora, s)
    return run(model)


def test_switched_strengths_equal_merged_ones_in_any_order():
    svi, speed = low_rank(5), diffs(7)
    model = _tiny_dit(num_layers=2).eval()
    switch = SwitchableLoras(model, {"svi": (svi, 1.0), "speed": (speed, 0.5)})
    outs = {}
    for strengths in [{}, {"svi": 0.0}, {"speed": 1.0, "svi": 0.25}, {"svi": 0.0}, {}]:
        switch.set(strengths)
        out = run(model)
        want = merged([(svi, strengths.get("svi", 1.0)), (speed, strengths.get("speed", 0.5))])
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
        key = tuple(sorted(strengths.items()))
        if key in outs:  # the same strengths give the same output bit for bit, whatever came before
            assert torch.equal(outs[key], out)
        outs[key] = out
    assert not torch.equal(outs[()], outs[(("svi", 0.0),)])


def test_strength_zero_is_the_base_model_and_remove_restores():
    model = _tiny_dit(num_layers=2).eval()
    base = run(copy.deepcopy(model))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    switch = SwitchableLoras(model, {"svi": (low_rank(5), 1.0), "speed": (diffs(7), 1.0)})
    switch.set({"svi": 0.0, "speed": 0.0})
    assert torch.equal(run(model), base)
    switch.set({})
    assert not torch.equal(run(model), base)
    switch.remove()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(run(model), base)


def test_unknown_key_is_refused():
    switch = SwitchableLoras(_tiny_dit(num_layers=2), {"svi": (low_rank(5), 1.0)})
    with pytest.raises(SVIError, match="no switchable LoRA 'svl'.*have: svi"):
        switch.set({"svl": 0.0})


def test_only_the_lora_layers_are_hooked():
    model = _tiny_dit(num_layers=2)
    switch = SwitchableLoras(model, {"svi": (low_rank(5), 1.0)})
    names = {n for n, m in model.named_modules() if m in switch._low_rank}
    assert names == set(DIFFUSERS_NAMES[m] for m in LAYERS)
