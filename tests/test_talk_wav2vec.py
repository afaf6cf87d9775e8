"""wav2vec2 features the official way (interpolate the CNN features to 25 fps BEFORE the transformer).

The reference is transformers' own ``Wav2Vec2Model.from_pretrained`` forward with
``output_hidden_states=True`` and the official subclass's single change (``wav2vec2.py:30-32``: the
feature-encoder output linearly interpolated to ``int(seconds * 25)`` frames) applied by a hook, then
``hidden_states[1:]`` (``audio_process.py:37``). Tiny random configs, saved to a temp folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from svi_core.errors import CheckpointError, SVIError

transformers = pytest.importorskip("transformers")

from train.tiny import save_wav2vec2_folder, tiny_wav2vec2_config  # noqa: E402

FIX = Path(__file__).resolve().parent / "fixtures" / "multitalk"


# the tiny wav2vec2 of train.tiny (other test modules import these names from here)
_config = tiny_wav2vec2_config
_save = save_wav2vec2_folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("w2v")
    plain = _save(root / "plain", transformers.Wav2Vec2Model(_config()).train(False))
    torch.manual_seed(1)
    pre = _save(
        root / "pretraining",
        transformers.Wav2Vec2ForPreTraining(_config()).train(False),
        do_normalize=True,
    )
    return plain, pre


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (
        0.3 * np.sin(2 * np.pi * 180 * t) * np.sin(2 * np.pi * 2.3 * t)
        + 0.02 * rng.standard_normal(len(t))
    ).astype(np.float32)


def _official(folder: Path, samples: np.ndarray) -> torch.Tensor:
    """transformers' forward + the official interpolation hook; ``hidden_states[1:]`` as [T_a, L, C]."""
    model = transformers.Wav2Vec2Model.from_pretrained(str(folder), local_files_only=True).train(
        False
    )
    fe = transformers.Wav2Vec2FeatureExtractor.from_pretrained(str(folder), local_files_only=True)
    values = torch.from_numpy(np.squeeze(fe(samples, sampling_rate=16000).input_values)).float()[
        None
    ]
    seq_len = int(len(samples) / 16000 * 25)
    hook = model.feature_extractor.register_forward_hook(
        lambda _m, _a, out: F.interpolate(out, size=seq_len, mode="linear", align_corners=True)
    )
    try:
        with torch.no_grad():
            hs = model(values, output_hidden_states=True).hidden_states
    finally:
        hook.remove()
    return torch.stack(hs[1:], dim=1).squeeze(0).permute(1, 0, 2)


@pytest.mark.parametrize("which", [0, 1])
def test_features_match_the_official_interpolate_before_encoder(tiny, which: int) -> None:
    from svi_core.standalone.wav2vec import load_wav2vec2

    folder = tiny[which]
    samples = _speech(3.7, seed=which)
    enc = load_wav2vec2(folder)
    assert enc.do_normalize == bool(which) and (enc.layers, enc.hidden_size) == (2, 16)
    ours = enc.features(samples)
    ref = _official(folder, samples)
    assert ours.shape == (92, 2, 16) == ref.shape  # int(3.7 * 25) frames
    assert (ours - ref).abs().max().item() <= 1e-5


def test_interpolating_after_the_encoder_gives_other_features(tiny) -> None:
    # ComfyUI core's order: transformer at 50 Hz, outputs interpolated to 25 fps afterwards
    from svi_core.standalone.wav2vec import load_wav2vec2

    enc = load_wav2vec2(tiny[0])
    samples = _speech(3.7)
    with torch.no_grad():
        hs = enc.model(torch.from_numpy(samples)[None], output_hidden_states=True).hidden_states
    core = torch.stack(hs[1:], 0)[:, 0]  # [L, N50, C]
    n50 = core.shape[1]
    core = F.interpolate(
        core.transpose(1, 2), size=int(n50 / 50 * 25), mode="linear", align_corners=True
    )
    core = core.permute(2, 0, 1)
    ours = enc.features(samples)
    n = min(len(core), len(ours))
    assert (core[:n] - ours[:n]).abs().max().item() > 1e-2


def test_features_feed_the_multitalk_projection(tiny, tmp_path) -> None:
    from svi_core.standalone.multitalk import load_multitalk
    from svi_core.standalone.wav2vec import load_wav2vec2
    from svi_core.talk import audio_window_start, clip_audio_windows, load_audio, write_wav
    from svi_core.talk.multitalk_file import check_features_fit_multitalk

    enc = load_wav2vec2(tiny[0])
    mt = load_multitalk(FIX / "multitalk.safetensors")
    check_features_fit_multitalk(mt.cfg, enc.layers, enc.hidden_size, "multitalk", enc.source)
    track = load_audio(write_wav(tmp_path / "s.wav", _speech(3.7), 16000))
    feats = enc.features(track.samples)
    first, latter = clip_audio_windows(feats, audio_window_start(1, frames=9), frames=9)
    with torch.no_grad():
        tokens = mt.project(first, latter)
    assert tokens.shape == (1, 3, 32, 24) and torch.isfinite(tokens).all()


# ----- bad input ------------------------------------------------------------------------------


def test_missing_folder_and_missing_files(tmp_path, tiny) -> None:
    from svi_core.standalone.wav2vec import load_wav2vec2

    with pytest.raises(CheckpointError, match="not found"):
        load_wav2vec2(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no wav2vec2 weights"):
        load_wav2vec2(tmp_path / "empty")
    partial = tmp_path / "nopre"
    partial.mkdir()
    for name in ("config.json", "model.safetensors"):
        (partial / name).write_bytes((tiny[0] / name).read_bytes())
    with pytest.raises(CheckpointError, match="no preprocessor_config.json"):
        load_wav2vec2(partial)


def test_a_config_of_another_kind_is_refused(tmp_path) -> None:
    from svi_core.standalone.wav2vec import load_wav2vec2

    folder = _save(tmp_path / "hubert", transformers.Wav2Vec2Model(_config()))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "hubert"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError, match=r"hubert.*config\.json' describes a model of type 'hubert'"
    ):
        load_wav2vec2(folder)
    cfg["model_type"] = "wav2vec2"
    cfg["do_stable_layer_norm"] = True
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="stable-layer-norm"):
        load_wav2vec2(folder)


def test_weights_of_another_size_are_refused_with_the_tensor(tmp_path, tiny) -> None:
    from svi_core.standalone.wav2vec import load_wav2vec2

    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (folder / name).write_bytes((tiny[0] / name).read_bytes())
    big = transformers.Wav2Vec2Model(_config(hidden_size=24, intermediate_size=48))
    save_file(
        {k: v.contiguous() for k, v in big.state_dict().items()}, str(folder / "model.safetensors")
    )
    with pytest.raises(CheckpointError, match=r"model\.safetensors': tensor '.*' is \(.*24"):
        load_wav2vec2(folder)
    sd = load_file(str(tiny[0] / "model.safetensors"))
    sd.pop("encoder.layers.1.feed_forward.output_dense.weight")
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match="missing 'encoder.layers.1.feed_forward.output_dense.weight'"
    ):
        load_wav2vec2(folder)


def test_other_sample_rates_and_stereo_are_refused(tiny) -> None:
    from svi_core.standalone.wav2vec import load_wav2vec2

    enc = load_wav2vec2(tiny[0])
    with pytest.raises(SVIError, match="16 kHz"):
        enc.features(_speech(2.0), sample_rate=44100)
    with pytest.raises(SVIError, match="mono"):
        enc.features(np.zeros((2, 32000), np.float32))
