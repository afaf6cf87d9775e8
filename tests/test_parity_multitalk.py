"""MultiTalk audio modules on diffusers' Wan DiT vs ComfyUI core's ``model_multitalk`` (tiny, fp32, CPU).

The fixture ``tests/fixtures/multitalk/`` was produced by ``tests/fixtures/make_multitalk_fixture.py``
running ComfyUI 0.33's own classes: ``project_audio_features`` (ComfyUI's windowing + audio projection),
``WanMultiTalkAttentionBlock`` (40 heads) and ``WanModel`` with ``MultiTalkCrossAttnPatch`` as its
``attn2_patch``. Tolerance 1e-4 in float32 (DESIGN/fixtures README).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from parity_support import report
from safetensors.torch import load_file, save_file

from svi_core.errors import CheckpointError
from svi_core.talk import clip_audio_windows, null_audio_windows
from svi_core.talk.multitalk_file import (
    MultiTalkConfig,
    check_features_fit_multitalk,
    inspect_multitalk,
)

pytest.importorskip("diffusers")

FIX = Path(__file__).resolve().parent / "fixtures" / "multitalk"
TOL = 1e-4


@pytest.fixture(scope="module")
def setup():
    from svi_core.standalone.models import load_wan_transformer
    from svi_core.standalone.multitalk import load_multitalk

    torch.set_num_threads(1)
    cfg = json.loads((FIX / "config.json").read_text())
    model = load_wan_transformer(FIX / "dit.safetensors")
    modules = load_multitalk(FIX / "multitalk.safetensors")
    return (
        cfg,
        model,
        modules,
        load_file(str(FIX / "inputs.safetensors")),
        load_file(str(FIX / "expected.safetensors")),
    )


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def test_fixture_config_is_what_the_loader_reads(setup) -> None:
    cfg, _model, modules, _i, _e = setup
    mt = cfg["multitalk"]
    assert modules.cfg == MultiTalkConfig(
        dim=cfg["dim"],
        num_layers=cfg["num_layers"],
        intermediate_dim=mt["intermediate_dim"],
        token_dim=mt["token_dim"],
        context_tokens=mt["context_tokens"],
        window=mt["window"],
        vae_scale=mt["vae_scale"],
        feature_width=mt["wav2vec_layers"] * mt["wav2vec_channels"],
    )


def test_windows_and_projection_match_comfyui(setup) -> None:
    cfg, _model, modules, inputs, expected = setup
    with torch.no_grad():
        for s in cfg["starts"]:
            first, latter = clip_audio_windows(inputs["features"], s, frames=cfg["frames"])
            diff = _diff(modules.project(first, latter), expected[f"tokens_start{s}"])
            report(f"multitalk audio tokens (start {s})", diff, TOL)
            assert diff <= TOL
        mt = cfg["multitalk"]
        null = modules.project(
            *null_audio_windows(mt["wav2vec_layers"], mt["wav2vec_channels"], frames=cfg["frames"])
        )
    diff = _diff(null, expected["tokens_null"])
    report("multitalk null audio tokens", diff, TOL)
    assert diff <= TOL
    assert null.abs().max() > 0.1  # the projected null audio is not zero


def test_audio_attention_block_matches_comfyui(setup) -> None:
    cfg, _model, modules, inputs, expected = setup
    with torch.no_grad():
        out = modules.blocks[0](inputs["block_x"], expected[f"tokens_start{cfg['starts'][1]}"])
    diff = _diff(out, expected["block0_audio"])
    report("multitalk block 0 audio attention (norm_x eps 1e-6 vs ComfyUI 1e-5)", diff, TOL)
    assert diff <= TOL


def test_dit_forward_with_audio_matches_comfyui_attn2_patch(setup) -> None:
    from svi_core.standalone.multitalk import attach_multitalk

    cfg, model, modules, inputs, expected = setup
    tokens = expected[f"tokens_start{cfg['starts'][1]}"]
    null = expected["tokens_null"]
    handle = attach_multitalk(model, modules)

    def run(x, audio):
        b = x.shape[0]
        with torch.no_grad(), handle.audio(audio):
            return model(
                hidden_states=x,
                timestep=inputs["timestep"].expand(b),
                encoder_hidden_states=inputs["context"].expand(b, -1, -1),
                encoder_hidden_states_image=inputs["clip_fea"].expand(b, -1, -1),
                return_dict=False,
            )[0]

    try:
        x = inputs["x"]
        plain, with_audio, with_null = run(x, None), run(x, tokens), run(x, null)
        batch = run(torch.cat([x, x]), torch.cat([tokens, null]))
    finally:
        handle.remove()
    for name, ours in [
        ("out_plain", plain),
        ("out_audio", with_audio),
        ("out_null", with_null),
        ("out_batch_audio_null", batch),
    ]:
        diff = _diff(ours, expected[name])
        report(f"multitalk DiT forward {name}", diff, TOL)
        assert diff <= TOL, name
    # the audio path changes the output far beyond the tolerance, so the checks above can fail
    assert _diff(expected["out_audio"], expected["out_plain"]) > 100 * TOL
    assert _diff(expected["out_audio"], expected["out_null"]) > 100 * TOL
    with torch.no_grad():  # hooks removed: the DiT is plain again
        again = model(
            hidden_states=x,
            timestep=inputs["timestep"],
            encoder_hidden_states=inputs["context"],
            encoder_hidden_states_image=inputs["clip_fea"],
            return_dict=False,
        )[0]
    assert torch.equal(again, plain)


def test_core_single_audio_cannot_serve_a_batch_of_two() -> None:
    # recorded by the generator: core's MultiTalkCrossAttnPatch with one [1, T, M, C] audio and a
    # batch of 2 (cond + uncond) fails, so SVI-Talk must hand each batch chunk its own audio.
    cfg = json.loads((FIX / "config.json").read_text())
    assert cfg["single_audio_batch2"].startswith("RuntimeError")


# ----- bad input ------------------------------------------------------------------------------


def test_multitalk_for_another_width_is_refused(setup) -> None:
    from svi_core.standalone.multitalk import MultiTalkAudioModules, attach_multitalk

    _cfg, model, modules, _i, _e = setup
    other = MultiTalkAudioModules(MultiTalkConfig(**{**modules.cfg.__dict__, "dim": 120}))
    with pytest.raises(CheckpointError, match="width 120, but .* has width 80"):
        attach_multitalk(model, other)


def test_a_dit_file_is_not_a_multitalk_file() -> None:
    from svi_core.standalone.multitalk import load_multitalk

    with pytest.raises(CheckpointError, match=r"dit\.safetensors' is not a MultiTalk"):
        load_multitalk(FIX / "dit.safetensors")


def test_missing_and_misshapen_tensors_are_named(tmp_path) -> None:
    from svi_core.standalone.multitalk import load_multitalk

    sd = load_file(str(FIX / "multitalk.safetensors"))
    cut = {k: v for k, v in sd.items() if k != "blocks.1.norm_x.bias"}
    save_file(cut, str(tmp_path / "cut.safetensors"))
    with pytest.raises(CheckpointError, match=r"'blocks\.1\.norm_x\.bias' is missing"):
        load_multitalk(tmp_path / "cut.safetensors")
    bad = dict(sd)
    bad["blocks.0.audio_cross_attn.kv_linear.weight"] = torch.zeros(160, 30)
    with pytest.raises(CheckpointError, match="kv_linear.weight' is \\(160, 30\\)"):
        inspect_multitalk(bad, "bad.safetensors")


def test_prefixed_keys_load_the_same(tmp_path) -> None:
    from svi_core.standalone.multitalk import load_multitalk

    sd = load_file(str(FIX / "multitalk.safetensors"))
    save_file({"diffusion_model." + k: v for k, v in sd.items()}, str(tmp_path / "p.safetensors"))
    a, b = load_multitalk(FIX / "multitalk.safetensors"), load_multitalk(tmp_path / "p.safetensors")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_wav2vec_of_another_size_is_refused(setup) -> None:
    _cfg, _model, modules, _i, _e = setup
    check_features_fit_multitalk(modules.cfg, 2, 16, "mt.safetensors", "w2v")
    with pytest.raises(CheckpointError, match=r"12 layers x 768 channels = 9216 .* reads 32"):
        check_features_fit_multitalk(
            modules.cfg, 12, 768, "mt.safetensors", "chinese-wav2vec2-base"
        )
