"""LoRA key spellings, validation errors, merge rule and the canonical round trip."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from svi_core.errors import CheckpointError
from svi_core.lora import (
    LoraEntry,
    apply_lora_to_diffusers,
    diffusers_target_shapes,
    load_lora,
    lora_delta,
    normalise_lora_keys,
    official_target_shapes_from_state_dict,
    save_lora_canonical,
    validate_lora,
)

RANK, DIM, FFN = 2, 8, 16
# official module path -> (out, in)
LAYERS = {
    "blocks.0.self_attn.q": (DIM, DIM),
    "blocks.0.cross_attn.o": (DIM, DIM),
    "blocks.1.ffn.0": (FFN, DIM),
    "blocks.1.ffn.2": (DIM, FFN),
}
TARGETS = {m: s for m, s in LAYERS.items()} | {"blocks.1.self_attn.k": (DIM, DIM)}


def _pairs(seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {
        m: (torch.randn(RANK, i, generator=g), torch.randn(o, RANK, generator=g))
        for m, (o, i) in LAYERS.items()
    }


def _tiny_dit(num_layers: int) -> torch.nn.Module:
    """A seeded diffusers Wan DiT with hidden size DIM and ffn size FFN (text-to-video, no image)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=4,
        in_channels=4,
        out_channels=4,
        text_dim=8,
        freq_dim=8,
        ffn_dim=FFN,
        num_layers=num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
    )


def _kohya(module: str) -> str:
    return "lora_unet_" + module.replace(".", "_")


DIFFUSERS_NAMES = {
    "blocks.0.self_attn.q": "blocks.0.attn1.to_q",
    "blocks.0.cross_attn.o": "blocks.0.attn2.to_out.0",
    "blocks.1.ffn.0": "blocks.1.ffn.net.0.proj",
    "blocks.1.ffn.2": "blocks.1.ffn.net.2",
}

SPELLINGS = {
    "bare_peft": lambda m, p: f"{m}.lora_{p}.weight",
    "pipe_dit": lambda m, p: f"pipe.dit.{m}.lora_{p}.weight",
    "default_infix": lambda m, p: f"{m}.lora_{p}.default.weight",
    "pipe_dit_default": lambda m, p: f"pipe.dit.{m}.lora_{p}.default.weight",
    "model_diffusion_model": lambda m, p: f"model.diffusion_model.{m}.lora_{p}.weight",
    "diffusion_model": lambda m, p: f"diffusion_model.{m}.lora_{p}.weight",
    "kohya": lambda m, p: f"{_kohya(m)}.lora_{'down' if p == 'A' else 'up'}.weight",
    "wan_fun_kohya": lambda m, p: (
        f"lora_unet__{m.replace('.', '_')}.lora_{'down' if p == 'A' else 'up'}.weight"
    ),
    "diffusers": lambda m, p: f"transformer.{DIFFUSERS_NAMES[m]}.lora_{p}.weight",
    "diffusion_model_down_up": lambda m, p: (
        f"diffusion_model.{m}.lora_{'down' if p == 'A' else 'up'}.weight"
    ),
}


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_every_spelling_normalises_to_official_modules(spelling: str) -> None:
    pairs = _pairs()
    make = SPELLINGS[spelling]
    sd = {}
    for m, (a, b) in pairs.items():
        sd[make(m, "A")] = a
        sd[make(m, "B")] = b
    lora = normalise_lora_keys(sd, f"{spelling}.safetensors")
    assert set(lora.entries) == set(LAYERS)
    assert lora.rank == RANK
    for m, (a, b) in pairs.items():
        assert torch.equal(lora.entries[m].lora_a, a)
        assert torch.equal(lora.entries[m].lora_b, b)
        assert lora.entries[m].alpha is None
    validate_lora(lora, TARGETS, lora_path=f"{spelling}.safetensors")


def test_kohya_alpha_sets_scale() -> None:
    pairs = _pairs()
    sd = {}
    for m, (a, b) in pairs.items():
        sd[f"{_kohya(m)}.lora_down.weight"] = a
        sd[f"{_kohya(m)}.lora_up.weight"] = b
        sd[f"{_kohya(m)}.alpha"] = torch.tensor(1.0)
    lora = normalise_lora_keys(sd, "kohya.safetensors")
    entry = lora.entries["blocks.0.self_attn.q"]
    assert entry.alpha == 1.0
    a, b = pairs["blocks.0.self_attn.q"]
    # strength 0.8, alpha 1, rank 2 -> scale 0.4
    torch.testing.assert_close(lora_delta(entry, 0.8), 0.4 * (b @ a))


def test_no_alpha_scale_is_strength() -> None:
    a, b = torch.randn(RANK, DIM), torch.randn(DIM, RANK)
    torch.testing.assert_close(lora_delta(LoraEntry(a, b), 0.7), 0.7 * (b @ a))


def test_canonical_round_trip(tmp_path) -> None:
    pairs = _pairs(3)
    sd = {f"pipe.dit.{m}.lora_{p}.default.weight": t for m, (a, b) in pairs.items()
          for p, t in (("A", a), ("B", b))}  # fmt: skip
    sd["pipe.dit.blocks.0.self_attn.q.alpha"] = torch.tensor(4.0)
    src = tmp_path / "official.safetensors"
    save_file(sd, str(src))
    lora = load_lora(src)
    out = save_lora_canonical(lora, tmp_path / "canonical.safetensors")
    from safetensors.torch import load_file

    keys = set(load_file(str(out)))
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in keys
    assert "diffusion_model.blocks.1.ffn.2.lora_B.weight" in keys
    assert "diffusion_model.blocks.0.self_attn.q.alpha" in keys
    assert all(k.startswith("diffusion_model.blocks.") for k in keys)
    back = load_lora(out)
    assert set(back.entries) == set(lora.entries)
    for m, e in lora.entries.items():
        assert torch.equal(back.entries[m].lora_a, e.lora_a)
        assert torch.equal(back.entries[m].lora_b, e.lora_b)
        assert back.entries[m].alpha == e.alpha
    assert back.entries["blocks.0.self_attn.q"].alpha == 4.0


def test_lora_for_another_model_size_names_file_key_and_shapes() -> None:
    g = torch.Generator().manual_seed(1)
    sd = {  # made for a model 2x wider
        "blocks.0.self_attn.q.lora_A.weight": torch.randn(RANK, 2 * DIM, generator=g),
        "blocks.0.self_attn.q.lora_B.weight": torch.randn(2 * DIM, RANK, generator=g),
    }
    lora = normalise_lora_keys(sd, "svi-shot-14B.safetensors")
    with pytest.raises(CheckpointError) as err:
        validate_lora(lora, TARGETS, model_name="wan2.1_1.3B")
    msg = str(err.value)
    assert "svi-shot-14B.safetensors" in msg
    assert "blocks.0.self_attn.q.lora_A.weight" in msg
    assert "(8, 8)" in msg and "(2, 16)" in msg
    assert "wan2.1_1.3B" in msg


def test_lora_with_no_matching_key_is_an_error() -> None:
    sd = {
        "blocks.7.self_attn.q.lora_A.weight": torch.zeros(RANK, DIM),
        "blocks.7.self_attn.q.lora_B.weight": torch.zeros(DIM, RANK),
    }
    lora = normalise_lora_keys(sd, "deep.safetensors")
    with pytest.raises(CheckpointError, match=r"deep\.safetensors.*blocks\.7\.self_attn\.q"):
        validate_lora(lora, TARGETS)


def test_unreadable_and_empty_lora_files_are_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="cannot read key 'foo.bar'"):
        normalise_lora_keys({"foo.bar": torch.zeros(1)}, "x.safetensors")
    with pytest.raises(CheckpointError, match="no LoRA tensors"):
        normalise_lora_keys({}, "empty.safetensors")
    with pytest.raises(CheckpointError, match="no lora_B"):
        normalise_lora_keys({"blocks.0.ffn.0.lora_A.weight": torch.zeros(2, 8)}, "half")


def test_official_target_shapes_strip_prefix() -> None:
    sd = {
        "model.diffusion_model.patch_embedding.weight": torch.zeros(4, 3, 1, 2, 2),
        "model.diffusion_model.blocks.0.self_attn.q.weight": torch.zeros(4, 4),
        "model.diffusion_model.blocks.0.self_attn.q.bias": torch.zeros(4),
        "model.diffusion_model.head.modulation": torch.zeros(1, 2, 4),
    }
    shapes = official_target_shapes_from_state_dict(sd)
    assert shapes == {
        "patch_embedding": (4, 3, 1, 2, 2),
        "blocks.0.self_attn.q": (4, 4),
        "head.modulation": (1, 2, 4),
    }


def test_apply_to_diffusers_changes_exactly_the_targets() -> None:
    model = _tiny_dit(num_layers=2)
    shapes = diffusers_target_shapes(model)
    for m, s in LAYERS.items():
        assert shapes[m] == s
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pairs = _pairs(5)
    sd = {}
    for m, (a, b) in pairs.items():
        sd[f"diffusion_model.{m}.lora_A.weight"] = a
        sd[f"diffusion_model.{m}.lora_B.weight"] = b
    lora = normalise_lora_keys(sd, "t.safetensors")
    assert apply_lora_to_diffusers(model, lora, 0.5) == len(LAYERS)
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {f"{DIFFUSERS_NAMES[m]}.weight" for m in LAYERS}
    a, b = pairs["blocks.1.ffn.0"]
    torch.testing.assert_close(
        after["blocks.1.ffn.net.0.proj.weight"],
        before["blocks.1.ffn.net.0.proj.weight"] + 0.5 * b @ a,
    )


def test_diff_patches_for_norms_biases_and_modulation() -> None:
    model = _tiny_dit(num_layers=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(2)
    sd = {  # LightX2V-style full differences
        "diffusion_model.blocks.0.norm3.diff": torch.randn(DIM, generator=g),
        "diffusion_model.blocks.0.norm3.diff_b": torch.randn(DIM, generator=g),
        "diffusion_model.blocks.0.self_attn.norm_q.diff": torch.randn(DIM, generator=g),
        "diffusion_model.blocks.0.modulation.diff": torch.randn(1, 6, DIM, generator=g),
        "diffusion_model.head.head.diff_b": torch.randn(16, generator=g),
    }
    lora = normalise_lora_keys(sd, "lightx2v.safetensors")
    assert apply_lora_to_diffusers(model, lora, 0.5) == 4
    after = model.state_dict()
    pairs = {
        "blocks.0.norm2.weight": "blocks.0.norm3.diff",
        "blocks.0.norm2.bias": "blocks.0.norm3.diff_b",
        "blocks.0.attn1.norm_q.weight": "blocks.0.self_attn.norm_q.diff",
        "blocks.0.scale_shift_table": "blocks.0.modulation.diff",
        "proj_out.bias": "head.head.diff_b",
    }
    for diffusers_key, lora_key in pairs.items():
        torch.testing.assert_close(
            after[diffusers_key], before[diffusers_key] + 0.5 * sd["diffusion_model." + lora_key]
        )
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == set(pairs)
