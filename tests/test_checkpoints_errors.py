"""Checkpoint loading: formats, prefixes, fp8 upcast, size inference and bad-input errors."""

from __future__ import annotations

import collections
import json

import pytest
import torch
from safetensors.torch import save_file

from svi_core.checkpoints import (
    detect_kind,
    dit_overrides_from_config,
    inspect_dit,
    inspect_vae,
    load_dit_state_dict,
    load_state_dict,
    require_kind,
)
from svi_core.errors import CheckpointError


def _tiny_dit(dim: int = 16, layers: int = 2, img: int | None = 12) -> dict[str, torch.Tensor]:
    """Official-named Wan DiT tensors of the given sizes (values irrelevant)."""
    sd = {
        "patch_embedding.weight": torch.zeros(dim, 36, 1, 2, 2),
        "patch_embedding.bias": torch.zeros(dim),
        "text_embedding.0.weight": torch.zeros(dim, 24),
        "text_embedding.2.weight": torch.zeros(dim, dim),
        "time_embedding.0.weight": torch.zeros(dim, 20),
        "time_embedding.2.weight": torch.zeros(dim, dim),
        "time_projection.1.weight": torch.zeros(6 * dim, dim),
        "head.head.weight": torch.zeros(16 * 4, dim),
        "head.modulation": torch.zeros(1, 2, dim),
    }
    for i in range(layers):
        sd[f"blocks.{i}.self_attn.q.weight"] = torch.zeros(dim, dim)
        sd[f"blocks.{i}.self_attn.norm_q.weight"] = torch.zeros(dim)
        sd[f"blocks.{i}.norm3.weight"] = torch.zeros(dim)
        sd[f"blocks.{i}.ffn.0.weight"] = torch.zeros(3 * dim, dim)
        sd[f"blocks.{i}.modulation"] = torch.zeros(1, 6, dim)
    if img is not None:
        sd["img_emb.proj.0.weight"] = torch.zeros(img)
    return sd


def _tiny_vae() -> dict[str, torch.Tensor]:
    return {
        "encoder.conv1.weight": torch.zeros(4, 3, 3, 3, 3),
        "decoder.middle.0.residual.0.gamma": torch.zeros(16, 1, 1, 1),
        "conv2.weight": torch.zeros(16, 16, 1, 1, 1),
    }


def test_missing_file(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"not found: '.*nope\.safetensors'"):
        load_state_dict(tmp_path / "nope.safetensors")


def test_truncated_safetensors(tmp_path) -> None:
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(good))
    data = good.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors.*truncated or corrupt"):
        load_state_dict(bad)


def test_pth_with_python_objects_is_refused(tmp_path) -> None:
    p = tmp_path / "objects.pth"
    torch.save({"w": torch.zeros(2), "cfg": collections.OrderedDict(a=argparse_like())}, str(p))
    with pytest.raises(CheckpointError, match=r"objects\.pth.*Python objects.*safetensors"):
        load_state_dict(p)


class argparse_like:  # noqa: N801 - a stand-in for the argparse.Namespace some .pth files hold
    pass


def test_pth_plain_and_wrapped(tmp_path) -> None:
    w = torch.randn(3, 4)
    plain, wrapped = tmp_path / "plain.pth", tmp_path / "wrapped.pt"
    torch.save({"a.weight": w}, str(plain))
    torch.save({"state_dict": {"a.weight": w}, "epoch": 3}, str(wrapped))
    assert torch.equal(load_state_dict(plain)["a.weight"], w)
    assert torch.equal(load_state_dict(wrapped)["a.weight"], w)


def test_sharded_set_from_index_or_shard(tmp_path) -> None:
    a, b = torch.randn(2, 2), torch.randn(3)
    save_file({"x.weight": a}, str(tmp_path / "m-00001-of-00002.safetensors"))
    save_file({"y.bias": b}, str(tmp_path / "m-00002-of-00002.safetensors"))
    index = tmp_path / "m.safetensors.index.json"
    index.write_text(
        json.dumps(
            {
                "weight_map": {
                    "x.weight": "m-00001-of-00002.safetensors",
                    "y.bias": "m-00002-of-00002.safetensors",
                }
            }
        )
    )
    for path in (index, tmp_path / "m-00002-of-00002.safetensors"):
        sd = load_state_dict(path)
        assert set(sd) == {"x.weight", "y.bias"}
        assert torch.equal(sd["x.weight"], a)
    (tmp_path / "m-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="m-00002-of-00002.safetensors"):
        load_state_dict(index)


def test_vae_passed_as_dit_and_reverse(tmp_path) -> None:
    vae_path = tmp_path / "wan_2.1_vae.safetensors"
    save_file(_tiny_vae(), str(vae_path))
    with pytest.raises(CheckpointError, match=r"wan_2\.1_vae\.safetensors.*VAE.*DiT"):
        load_dit_state_dict(vae_path)
    dit = _tiny_dit()
    with pytest.raises(CheckpointError, match=r"dit\.safetensors.*DiT.*VAE was expected"):
        require_kind(dit, "wan_vae", "dit.safetensors")


def test_detect_kind_naming_schemes() -> None:
    assert detect_kind(_tiny_dit()) == "wan_dit"
    assert detect_kind({"model.diffusion_model." + k: v for k, v in _tiny_dit().items()}) == (
        "wan_dit"
    )
    assert detect_kind(_tiny_vae()) == "wan_vae"
    z = torch.zeros(1)
    assert detect_kind({"encoder.block.0.layer.0.SelfAttention.q.weight": z}) == "umt5"
    assert detect_kind({"token_embedding.weight": z, "blocks.0.attn.q.weight": z}) == "umt5"
    assert detect_kind({"vision_model.encoder.layers.0.mlp.fc1.weight": z}) == "clip_vision"
    assert detect_kind({"visual.transformer.0.attn.to_qkv.weight": z}) == "clip_vision"
    assert detect_kind({"blocks.0.ffn.0.lora_A.weight": z}) == "lora"
    assert detect_kind({"foo": z}) == "unknown"


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model.", "diffusion_model.", "model."])
def test_inspect_dit_reads_sizes_under_any_prefix(tmp_path, prefix: str) -> None:
    sd = {prefix + k: v for k, v in _tiny_dit(dim=32, layers=3, img=40).items()}
    sd["first_stage_model.conv1.weight"] = torch.zeros(1)  # an all-in-one file's VAE part
    path = tmp_path / "dit.safetensors"
    save_file(sd, str(path))
    loaded = load_dit_state_dict(path)
    assert "blocks.2.self_attn.q.weight" in loaded
    cfg = inspect_dit(loaded)
    assert (cfg.dim, cfg.num_layers, cfg.ffn_dim, cfg.in_dim, cfg.out_dim) == (32, 3, 96, 36, 16)
    assert (cfg.text_dim, cfg.freq_dim, cfg.patch_size) == (24, 20, (1, 2, 2))
    assert cfg.image_dim == 40 and cfg.has_img_emb and cfg.model_type == "i2v"
    assert cfg.num_heads == 1  # dim // 128, floored at 1, without a config
    assert inspect_dit(loaded, {"num_heads": 4}).head_dim == 8


def test_inspect_dit_expert_and_config_override(tmp_path) -> None:
    cfg = inspect_dit(_tiny_dit(img=None))
    assert cfg.model_type == "wan22_expert" and cfg.image_dim is None and not cfg.has_img_emb
    assert cfg.diffusers_kwargs()["added_kv_proj_dim"] is None
    official = {"dim": 16, "num_heads": 2, "eps": 1e-5}
    assert dit_overrides_from_config(official, dim=16) == {"num_heads": 2, "eps": 1e-5}
    diffusers_cfg = {"num_attention_heads": 4, "attention_head_dim": 4, "eps": 1e-6}
    assert dit_overrides_from_config(diffusers_cfg, dim=16) == {"num_heads": 4, "eps": 1e-6}
    assert dit_overrides_from_config(official, dim=5120) == {}  # another model's config
    with pytest.raises(CheckpointError, match="does not divide"):
        inspect_dit(_tiny_dit(), {"num_heads": 3})


def test_fp8_upcast_with_and_without_scale(tmp_path) -> None:
    w = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
    sd = {
        "a.weight": w.to(torch.float8_e4m3fn),
        "a.scale_weight": torch.tensor(3.0),
        "b.weight": w.to(torch.float8_e5m2),
        "c.bias": torch.ones(2, dtype=torch.float16),
        "scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn),
    }
    path = tmp_path / "fp8.safetensors"
    save_file(sd, str(path))
    out = load_state_dict(path, dtype=torch.bfloat16)
    assert set(out) == {"a.weight", "b.weight", "c.bias"}
    assert out["a.weight"].dtype == torch.bfloat16
    torch.testing.assert_close(out["a.weight"].float(), 3.0 * w)
    torch.testing.assert_close(out["b.weight"].float(), w)
    assert out["c.bias"].dtype == torch.bfloat16
    assert load_state_dict(path)["a.weight"].dtype == torch.float32


def test_inspect_vae_from_fixture_layout() -> None:
    sd: dict[str, torch.Tensor] = {
        "encoder.conv1.weight": torch.zeros(8, 3, 3, 3, 3),
        "decoder.middle.0.residual.0.gamma": torch.zeros(1),
        "conv2.weight": torch.zeros(16, 16, 1, 1, 1),
    }
    widths = [8, 16, 32]  # dim_mult 1, 2, 4; one residual block per level
    i = 0
    for level, width in enumerate(widths):
        sd[f"encoder.downsamples.{i}.residual.6.weight"] = torch.zeros(width, width, 3, 3, 3)
        i += 1
        if level < len(widths) - 1:
            sd[f"encoder.downsamples.{i}.resample.1.weight"] = torch.zeros(width, width, 3, 3)
            if level == 1:
                sd[f"encoder.downsamples.{i}.time_conv.weight"] = torch.zeros(1)
            i += 1
    cfg = inspect_vae(sd)
    assert cfg.base_dim == 8 and cfg.z_dim == 16
    assert cfg.dim_mult == (1, 2, 4) and cfg.num_res_blocks == 1
    assert cfg.temperal_downsample == (False, True)


def test_fp8_scale_in_another_shard(tmp_path) -> None:
    w = torch.tensor([[1.0, -2.0]])
    save_file(
        {"a.weight": w.to(torch.float8_e4m3fn)}, str(tmp_path / "s-00001-of-00002.safetensors")
    )
    save_file({"a.scale_weight": torch.tensor(0.5)}, str(tmp_path / "s-00002-of-00002.safetensors"))
    (tmp_path / "s.safetensors.index.json").write_text(
        json.dumps(
            {
                "weight_map": {
                    "a.weight": "s-00001-of-00002.safetensors",
                    "a.scale_weight": "s-00002-of-00002.safetensors",
                }
            }
        )
    )
    out = load_state_dict(tmp_path / "s-00001-of-00002.safetensors")
    assert set(out) == {"a.weight"}
    torch.testing.assert_close(out["a.weight"], 0.5 * w)


def test_folder_with_one_model_or_ambiguous(tmp_path) -> None:
    w = torch.randn(2)
    save_file({"x": w}, str(tmp_path / "only.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    assert torch.equal(load_state_dict(tmp_path)["x"], w)
    save_file({"y": w}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="several model files.*only.safetensors"):
        load_state_dict(tmp_path)


def test_diffusers_named_dit_round_trips_to_official() -> None:
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    from svi_core.checkpoints import strip_dit_prefix

    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=4,
        in_channels=36,
        out_channels=16,
        text_dim=8,
        freq_dim=8,
        ffn_dim=16,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        image_dim=12,
        added_kv_proj_dim=8,
    )
    diff_sd = model.state_dict()
    assert detect_kind(diff_sd) == "wan_dit"
    official = strip_dit_prefix(diff_sd)
    assert "blocks.1.norm3.weight" in official and "head.modulation" in official
    assert "blocks.0.cross_attn.k_img.weight" in official
    cfg = inspect_dit(official, {"num_heads": 2})
    assert (cfg.dim, cfg.image_dim, cfg.model_type, cfg.ffn_dim) == (8, 12, "i2v", 16)
    back = convert_wan_transformer_to_diffusers(dict(official))
    assert set(back) == set(diff_sd)
    assert all(torch.equal(back[k], diff_sd[k]) for k in diff_sd)
