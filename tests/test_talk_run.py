"""An SVI-Talk run end to end on tiny models: the audio condition through the loop, the standalone
backend's MultiTalk hook, cancel + resume bit for bit, extension with a longer recording, and the
speech muxed into the mp4 at the join.

Tiny random models: diffusers' WanTransformer3DModel (2 heads of 8), AutoencoderKLWan, MultiTalk
audio modules of the same width, a 2-layer x 16 wav2vec2 (transformers) saved to a folder and loaded
by ``svi_core.standalone.wav2vec``. Values checked against the official code: windows start at
``81 k - m`` (``test_svi_talk.py:277-280``), every frame kept (``:304-308``), the three passes
(``svi_video_talk.py:455-458``: cond + audio, negative + audio, negative + null audio).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
pytest.importorskip("imageio_ffmpeg")

from test_standalone_backend import image, text, tiny_dit, tiny_vae  # noqa: E402
from test_talk_wav2vec import _config, _save  # noqa: E402

from svi_core.errors import Cancelled, RunMismatchError, SVIError  # noqa: E402
from svi_core.loop import LoopInputs, RunSettings, prepare_run, run_clips  # noqa: E402
from svi_core.modes import get_mode  # noqa: E402
from svi_core.standalone.backend import DiffusersBackend  # noqa: E402
from svi_core.standalone.multitalk import MultiTalkAudio, MultiTalkAudioModules  # noqa: E402
from svi_core.standalone.wav2vec import load_wav2vec2  # noqa: E402
from svi_core.talk import MultiTalkConfig, load_audio, write_wav  # noqa: E402
from svi_core.talk.condition import AudioCondition, AudioFeatureSettings  # noqa: E402
from svi_core.video_io import mp4_frame_count, mp4_track_seconds, read_video_frames  # noqa: E402

F, SIZE, RATE = 9, 32, 16000


@pytest.fixture(autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    x = 0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 1.7 * t) > 0)
    return (x + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def w2v(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("w2v") / "chinese-wav2vec2-base"
    _save(folder, transformers.Wav2Vec2Model(_config()).train(False))
    return load_wav2vec2(folder)


def modules(seed: int = 3) -> MultiTalkAudioModules:
    torch.manual_seed(seed)
    cfg = MultiTalkConfig(
        dim=16, num_layers=1, intermediate_dim=8, token_dim=8, context_tokens=4, feature_width=32
    )
    return MultiTalkAudioModules(cfg, num_heads=2).train(False)


def condition(path: Path, w2v, **kw) -> AudioCondition:
    settings = AudioFeatureSettings(encoder="tiny wav2vec2", layers=w2v.layers, channels=16)
    return AudioCondition.from_track(
        load_audio(path), w2v.features, settings, audio_file=path, **kw
    )


def reference() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (SIZE, SIZE, 3), generator=g, dtype=torch.uint8)


class Spy(MultiTalkAudio):
    """Records which batch rows got the clip's audio in every DiT forward."""

    def __init__(self, *a):
        super().__init__(*a)
        self.rows: list[list[bool]] = []
        self.starts: list[int] = []

    def prepare(self, payload, device, dtype):
        self.starts.append(payload.start)
        return super().prepare(payload, device, dtype)

    def apply(self, prepared, model, active):
        self.rows.append(list(active))
        return super().apply(prepared, model, active)


def backend(seed_audio: int = 3, spy: bool = False):
    dit = tiny_dit(1)
    hook = (Spy if spy else MultiTalkAudio)(dit, modules(seed_audio))
    be = DiffusersBackend(
        dit, tiny_vae(), text_encoder=text, image_encoder=image, extras={"audio": hook}
    )
    return be, hook


def talk_run(tmp: Path, cond: AudioCondition, clips: int | None = None, be=None, **kw):
    mode = get_mode("talk", frames=F, steps=2)
    n = clips if clips is not None else mode.clip_count(1, cond.feature_frames)
    s = RunSettings(mode=mode, width=SIZE, height=SIZE, num_clips=n)
    inputs = LoopInputs(reference(), [mode.default_prompt], conditions=(cond,))
    be = be or backend()[0]
    return run_clips(be, s, inputs, tmp / "run", output=tmp / "talk.mp4", **kw)


def latents(run_dir: Path) -> list[torch.Tensor]:
    m = json.loads((run_dir / "manifest.json").read_text())
    return [load_file(str(run_dir / c["state"]))["latent"] for c in m["clips"]]


def frames(path: Path) -> np.ndarray:
    return np.stack(list(read_video_frames(path)))


def test_talk_run_passes_windows_and_muxes_the_speech(tmp_path, w2v):
    wav = write_wav(tmp_path / "speech.wav", speech(1.2), RATE)
    cond = condition(wav, w2v)
    assert cond.feature_frames == 30  # int(1.2 * 25)
    be, spy = backend(spy=True)
    res = talk_run(tmp_path, cond, be=be)
    # clips = 0 rule: ceil((30 + 1) / 9) = 4 clips; windows start at 0 and F k - m
    assert res.clips_done == 4
    assert spy.starts == [0, 8, 17, 26]
    # every step runs the three passes as one batch; only the last (uncond) row gets null audio
    assert spy.rows and all(r == [True, True, False] for r in spy.rows)
    # every frame kept; the speech muxed over the whole video, the video-only join kept
    assert mp4_frame_count(res.video) == 4 * F
    tracks = mp4_track_seconds(res.video)
    assert tracks["vide"] == pytest.approx(4 * F / 25)
    assert abs(tracks["soun"] - 4 * F / 25) < 0.1
    only = res.run_dir / "video_only.mp4"
    assert "soun" not in mp4_track_seconds(only)
    np.testing.assert_array_equal(frames(only), frames(res.video))
    manifest = json.loads((res.run_dir / "manifest.json").read_text())
    assert manifest["settings"]["clip_conditions"]["audio"]["order"] == "official"
    assert manifest["settings"]["guidance"] == "text_audio"
    assert len({c["plan"]["extra.audio"] for c in manifest["clips"]}) == 4


def test_talk_run_is_resumed_bit_exactly_after_cancel(tmp_path, w2v):
    wav = write_wav(tmp_path / "speech.wav", speech(1.2), RATE)
    full = talk_run(tmp_path / "a", condition(wav, w2v), clips=3)

    def cancel(clip, done, total):
        if clip == 1 and done == 1:
            raise Cancelled()

    with pytest.raises(Cancelled):
        talk_run(tmp_path / "b", condition(wav, w2v), clips=3, on_step=cancel)
    partial = tmp_path / "b" / "talk.mp4"
    assert mp4_frame_count(partial) == F and "soun" in mp4_track_seconds(partial)
    resumed = talk_run(tmp_path / "b", condition(wav, w2v), clips=3)
    assert resumed.clips_generated == 2
    for a, b in zip(latents(full.run_dir), latents(resumed.run_dir), strict=True):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(frames(full.video), frames(resumed.video))
    assert abs(mp4_track_seconds(resumed.video)["soun"] - 3 * F / 25) < 0.1


def test_the_audio_drives_the_clips(tmp_path, w2v):
    a = write_wav(tmp_path / "a.wav", speech(1.0, seed=0), RATE)
    b = write_wav(tmp_path / "b.wav", 0.5 * speech(1.0, seed=0)[::-1].copy(), RATE)
    la = latents(talk_run(tmp_path / "a", condition(a, w2v), clips=1).run_dir)[0]
    lb = latents(talk_run(tmp_path / "b", condition(b, w2v), clips=1).run_dir)[0]
    assert (la - lb).abs().max() > 1e-4


def test_a_longer_recording_extends_the_run(tmp_path, w2v):
    long = speech(2.0)
    short = write_wav(tmp_path / "short.wav", long[: int(1.2 * RATE)], RATE)
    full = write_wav(tmp_path / "full.wav", long, RATE)
    talk_run(tmp_path, condition(short, w2v), clips=2)
    res = talk_run(tmp_path, condition(full, w2v))  # clips = 0: cover the 2 s
    assert res.clips_done == 6 and res.clips_generated == 4


def test_a_clip_that_ran_past_the_end_cannot_change(tmp_path, w2v):
    long = speech(2.0)
    short = write_wav(tmp_path / "short.wav", long[: int(0.6 * RATE)], RATE)
    full = write_wav(tmp_path / "full.wav", long, RATE)
    talk_run(tmp_path, condition(short, w2v), clips=2)  # clip 1 reads frames 8..18 of 15
    with pytest.raises(RunMismatchError, match=r"clip 1 is already made with extra\.audio="):
        talk_run(tmp_path, condition(full, w2v), clips=3)


def test_talk_inputs_refused_before_any_work(tmp_path, w2v):
    wav = write_wav(tmp_path / "speech.wav", speech(1.2), RATE)
    mode = get_mode("talk", frames=F, steps=2)
    ok = RunSettings(mode=mode, width=SIZE, height=SIZE, num_clips=2)
    with pytest.raises(SVIError, match="needs the per-clip condition"):
        prepare_run(ok, LoopInputs(reference(), ["a person is talking"]))
    cond = condition(wav, w2v)
    for bad, message in (
        (get_mode("talk", frames=F, fps=16.0), "set fps 25"),
        (get_mode("shot", frames=F), "does not use it"),
        (get_mode("talk", frames=41), "one clip needs 1.64 s"),
    ):
        s = RunSettings(mode=bad, width=SIZE, height=SIZE, num_clips=1)
        with pytest.raises(SVIError, match=message):
            prepare_run(s, LoopInputs(reference(), ["x"], conditions=(cond,)))
    assert not cond.features.ready  # planning and checking computed no features
    frames_cond = condition(wav, w2v, align="frames")
    drop = get_mode("talk", frames=F, overlap=1)
    with pytest.raises(SVIError, match="alignment 'frames' needs every frame"):
        prepare_run(
            RunSettings(mode=drop, width=SIZE, height=SIZE, num_clips=1),
            LoopInputs(reference(), ["x"], conditions=(frames_cond,)),
        )
