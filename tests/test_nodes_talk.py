"""Tier 1: the ComfyUI-free parts of SVI-Talk on ComfyUI (``nodes/talk_parts.py``) with stand-ins.

The per-chunk audio of the attention patch, the official-order features from a module tree laid
out like core's wav2vec2, core's AUDIO_ENCODER_OUTPUT at 25 fps, and the refusals of a patch or an
encoder of the wrong kind or size. Tier 2 runs the same code on ComfyUI's own modules.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_nodes_checks import _pack_module

parts = _pack_module("nodes.talk_parts")
errors = _pack_module("svi_core.errors")
MultiTalkConfig = _pack_module("svi_core.talk.multitalk_file").MultiTalkConfig


def test_each_chunk_gets_the_audio_of_its_pass():
    t, m, d = 3, 4, 2
    active, null = torch.ones(1, t, m, d), -torch.ones(1, t, m, d)
    seen = {}

    def inner(kwargs):
        seen["audio"] = kwargs["transformer_options"]["audio_embeds"]
        seen["other"] = kwargs["transformer_options"].get("block_index")
        return kwargs["x"] + 1

    patch = parts.PassAudioPatch(inner, active, null, frozenset({2}), models=["patch"])
    x = torch.zeros(3, 5, 8)
    options = {"cond_or_uncond": [2, 0, 1], "block_index": 7}
    out = patch({"x": x, "transformer_options": options})
    assert torch.equal(out, x + 1) and seen["other"] == 7
    # batch-major [B * T, M, D]: chunk 0 is pass 2 (null), chunks 1 and 2 the clip's audio
    audio = seen["audio"].view(3, t, m, d)
    assert seen["audio"].shape == (3 * t, m, d)
    assert torch.equal(audio[0], null[0]) and torch.equal(audio[1:], active.expand(2, -1, -1, -1))
    assert "audio_embeds" not in options  # the caller's options are not modified
    # a latent batch of 2 per chunk: each chunk's rows repeat its audio
    patch({"x": torch.zeros(4, 5, 8), "transformer_options": {"cond_or_uncond": [0, 2]}})
    audio = seen["audio"].view(4, t, m, d)
    assert torch.equal(audio[:2], active.expand(2, -1, -1, -1)) and torch.equal(
        audio[2:], -audio[:2]
    )
    assert patch.models() == ["patch"]
    with pytest.raises(errors.SVIError, match="cannot be split"):
        patch({"x": torch.zeros(3, 5, 8), "transformer_options": {"cond_or_uncond": [0, 1]}})


class CoreLayout(torch.nn.Module):
    """transformers' Wav2Vec2Model behind the interface of core's comfy.audio_encoders.wav2vec2
    (feature_extractor -> [B, N50, 512], feature_projection -> hidden, encoder -> (x, all_x))."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf
        self.do_normalize = False
        hf_self = self

        class FE(torch.nn.Module):
            def forward(self, x):
                return hf_self.hf.feature_extractor(x).transpose(1, 2)

        class FP(torch.nn.Module):
            def forward(self, x):
                return hf_self.hf.feature_projection(x)[0]

        class Enc(torch.nn.Module):
            def forward(self, x):  # core: (last, (input of layer 0, output of every layer))
                outs = []
                hooks = [
                    layer.register_forward_hook(
                        lambda _m, _a, o: outs.append(o[0] if isinstance(o, tuple) else o)
                    )
                    for layer in hf_self.hf.encoder.layers
                ]
                try:
                    last = hf_self.hf.encoder(x).last_hidden_state
                finally:
                    for h in hooks:
                        h.remove()
                return last, (x, *outs)

        self.feature_extractor, self.feature_projection, self.encoder = FE(), FP(), Enc()


def test_official_features_from_a_core_layout_encoder_equal_the_standalone_ones():
    transformers = pytest.importorskip("transformers")
    from test_talk_wav2vec import _config, _speech

    from svi_core.standalone.wav2vec import Wav2Vec2Encoder, wav2vec2_features

    torch.manual_seed(0)
    hf = transformers.Wav2Vec2Model(_config()).train(False)
    samples = _speech(1.3)
    ours = parts.official_features(CoreLayout(hf), samples)
    ref = wav2vec2_features(Wav2Vec2Encoder(hf, False, "tiny"), samples)
    assert ours.shape == (32, 2, 16)  # int(1.3 * 25) frames, 2 layers x 16
    assert torch.equal(ours, ref)


def test_core_encoder_output_becomes_25_fps_layer_outputs():
    n50 = 101
    layers = [torch.full((1, n50, 3), float(i)) for i in range(13)]
    feats = parts.core_output_features({"encoded_audio_all_layers": layers})
    assert feats.shape == (50, 12, 3)  # int(101 / 50 * 25); the embedding (layer 0) dropped
    assert torch.equal(feats[:, 0], torch.ones(50, 3)) and float(feats[0, 11, 0]) == 12.0
    with pytest.raises(errors.SVIError, match="no encoded_audio_all_layers"):
        parts.core_output_features({"encoded_audio": torch.zeros(1, 4, 3)})


def _linear(out_f, in_f):
    return SimpleNamespace(weight=torch.zeros(out_f, in_f))


def _patch(dim=160, blocks=40, inter=8, token=16, width=9216):
    proj = SimpleNamespace(
        seq_len=5, context_tokens=32, proj1=_linear(inter, 5 * width),
        proj1_vf=_linear(inter, 8 * width), norm=SimpleNamespace(weight=torch.zeros(token)),
    )  # fmt: skip
    block = SimpleNamespace(audio_cross_attn=SimpleNamespace(q_linear=_linear(dim, dim)))
    return SimpleNamespace(model=SimpleNamespace(audio_proj=proj, blocks=[block] * blocks))


def _dit(width=160, blocks=2):
    dm = SimpleNamespace(patch_embedding=_linear(width, 36), blocks=[0] * blocks)
    return SimpleNamespace(model=SimpleNamespace(diffusion_model=dm))


def test_patch_sizes_and_refusals():
    cfg = parts.patch_config(_patch())
    assert cfg == MultiTalkConfig(dim=160, num_layers=40, intermediate_dim=8, token_dim=16,
                                  context_tokens=32, window=5, vae_scale=4, feature_width=9216)  # fmt: skip
    parts.check_patch_fits_model(cfg, _dit())
    with pytest.raises(errors.SVIError, match="is not a MultiTalk patch"):
        parts.patch_config(SimpleNamespace(model=torch.nn.Linear(2, 2)))
    with pytest.raises(errors.SVIError, match="for a DiT of width 160, but the MODEL is 5120"):
        parts.check_patch_fits_model(cfg, _dit(width=5120))
    with pytest.raises(errors.SVIError, match="40 blocks but the MODEL has 48"):
        parts.check_patch_fits_model(cfg, _dit(blocks=48))


def test_encoder_kind_is_checked():
    class Wav2Vec2Model:
        def __init__(self, stable=False):
            self.feature_extractor = self.feature_projection = object()
            self.encoder = SimpleNamespace(
                do_stable_layer_norm=stable, layers=[0] * 12,
                layer_norm=SimpleNamespace(weight=torch.zeros(768)),
            )  # fmt: skip

    class WhisperLargeV3:
        pass

    assert parts.encoder_shape(SimpleNamespace(model=Wav2Vec2Model())) == (12, 768)
    with pytest.raises(errors.SVIError, match="is a WhisperLargeV3 audio encoder"):
        parts.encoder_shape(SimpleNamespace(model=WhisperLargeV3()))
    with pytest.raises(errors.SVIError, match="large-style wav2vec2"):
        parts.encoder_shape(SimpleNamespace(model=Wav2Vec2Model(stable=True)))
