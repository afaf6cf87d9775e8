"""The clip loop on a fake backend: seeds, noise, carry, stitching, streaming, resume."""

import json

import numpy as np
import pytest
import torch
from _svi_fakes import FakeBackend
from safetensors.torch import load_file

from svi_core import run_store as run_store_mod
from svi_core.conditioning import frames_to_pixels, quantise_frames
from svi_core.errors import Cancelled, RunStoreError, SVIError
from svi_core.loop import LoopInputs, RunSettings, clip_noise, run_clips
from svi_core.modes import get_mode
from svi_core.video_io import count_frames, read_video_frames

H, W = 32, 48
PROMPTS = ["a red fox runs", "the fox jumps", "the fox sleeps"]


def reference():
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (H, W, 3), generator=g, dtype=torch.uint8)


def settings(name="film", clips=3, **over):
    over.setdefault("frames", 9)
    over.setdefault("steps", 3)
    if name in ("v2_pro", "v2_w22"):
        over.setdefault("width", W)
        over.setdefault("height", H)
    return RunSettings(mode=get_mode(name, **over), width=W, height=H, num_clips=clips)


def run(tmp, s, backend=None, **kw):
    be = backend or FakeBackend(clip_vision=s.mode.clip_vision)
    res = run_clips(
        be, s, LoopInputs(reference(), PROMPTS), tmp / "run", output=tmp / "out.mp4", **kw
    )
    return be, res


def latents(run_dir):
    m = json.loads((run_dir / "manifest.json").read_text())
    return [load_file(str(run_dir / c["state"]))["latent"] for c in m["clips"]]


def video(path):
    return np.stack(list(read_video_frames(path)))


def test_film_loop_seeds_prompts_carry_and_length(tmp_path):
    s = settings("film", clips=3)
    be, res = run(tmp_path, s)
    assert [r.seed for r in be.requests] == [0, 42, 84]
    assert [r.positive for r in be.requests] == PROMPTS
    assert all(r.negative == s.mode.negative_prompt for r in be.requests)
    assert torch.equal(be.requests[1].noise, clip_noise(42, 3, H // 8, W // 8))
    assert be.requests[1].noise.dtype == torch.float32
    # clip 1 is conditioned on clip 0's last 5 decoded frames, quantised as stored
    lat0 = latents(res.run_dir)[0]
    frames0 = quantise_frames(be.decode(lat0))
    assert torch.equal(be.encoded[1][:, :, :5], frames_to_pixels(frames0[-5:]))
    assert torch.equal(be.clip_frames[1], frames_to_pixels(frames0[-5:-4])[:, :, 0])
    assert res.frames == 3 * 9 - 2 * 5 == count_frames(res.video)
    assert res.clips_generated == 3


def test_pro_loop_carries_latent(tmp_path):
    s = settings("v2_pro", clips=3)
    be, res = run(tmp_path, s)
    lat = latents(res.run_dir)
    assert torch.equal(be.requests[1].cond_latent[:, :, 1:2], lat[0][:, :, -1:])
    assert torch.equal(be.requests[2].cond_latent[:, :, 1:2], lat[1][:, :, -1:])
    assert torch.equal(be.requests[2].cond_latent[:, :, :1], be.requests[0].cond_latent[:, :, :1])
    assert all(r.clip_vision is None and r.boundary == 0.875 for r in be.requests)
    assert [r.positive for r in be.requests] == PROMPTS
    assert res.frames == 9 + 2 * (9 - 5) == count_frames(res.video)


def test_resume_after_cancel_is_bit_exact(tmp_path):
    s = settings("film", clips=3)
    _, full = run(tmp_path / "a", s)

    def cancel_in_clip_1(clip, done, total):
        if clip == 1 and done == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        run(tmp_path / "b", s, on_step=cancel_in_clip_1)
    assert json.loads((tmp_path / "b/run/manifest.json").read_text())["clips"][0]["index"] == 0
    assert count_frames(tmp_path / "b/out.mp4") == 9 - 5 + 5  # finished clip 0 (+ its tail)
    be, resumed = run(tmp_path / "b", s)
    assert [r.index for r in be.requests] == [1, 2] and resumed.clips_generated == 2
    for a, b in zip(latents(full.run_dir), latents(resumed.run_dir), strict=True):
        assert torch.equal(a, b)
    assert np.array_equal(video(full.video), video(resumed.video))


def test_extend_finished_run_equals_longer_run(tmp_path):
    _, long = run(tmp_path / "a", settings("v2", clips=3))
    run(tmp_path / "b", settings("v2", clips=2))
    be, ext = run(tmp_path / "b", settings("v2", clips=3))
    assert [r.index for r in be.requests] == [2]
    for a, b in zip(latents(long.run_dir), latents(ext.run_dir), strict=True):
        assert torch.equal(a, b)
    assert np.array_equal(video(long.video), video(ext.video))


def test_other_settings_are_refused(tmp_path):
    run(tmp_path, settings("film", clips=1))
    with pytest.raises(RunStoreError, match="cfg=5.0.*cfg=4.0"):
        run(tmp_path, settings("film", clips=2, cfg=4.0))
    be = FakeBackend()
    with pytest.raises(RunStoreError, match="input prompts"):
        run_clips(
            be, settings("film", clips=2), LoopInputs(reference(), ["other"]), tmp_path / "run"
        )
    assert be.denoise_calls == 0


def test_failing_write_leaves_store_consistent(tmp_path, monkeypatch):
    s = settings("tom", clips=3)
    _, full = run(tmp_path / "a", s)
    real = run_store_mod.write_segment
    calls = {"n": 0}

    def flaky(path, frames, fps, crf):
        calls["n"] += 1
        if calls["n"] == 2:  # clip 1's segment, written in the background writer thread
            raise OSError("disk full")
        return real(path, frames, fps, crf)

    monkeypatch.setattr(run_store_mod, "write_segment", flaky)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path / "b", s)
    monkeypatch.setattr(run_store_mod, "write_segment", real)
    assert len(json.loads((tmp_path / "b/run/manifest.json").read_text())["clips"]) == 1
    _, resumed = run(tmp_path / "b", s)
    for a, b in zip(latents(full.run_dir), latents(resumed.run_dir), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"num_clips": 0}, "num_clips=0 must be an integer in \\[1, 10000\\]"),
        ({"crf": 99}, "crf=99 must be an integer in \\[0, 51\\]"),
        ({"seed_base": 2**64 - 1}, "the last clip's seed"),
        ({"width": 500}, "width=500 \\(nearest valid: 496 or 512\\)"),
        ({"prompts": []}, "prompt stream is empty"),
        ({"reference": torch.zeros(16, 16, 3, dtype=torch.uint8)}, "resize it to the video size"),
    ],
)
def test_bad_input_refused_before_work(tmp_path, over, message):
    """run_clips itself refuses settings and inputs no model can run, before it encodes,
    denoises or creates the run folder. (A frame count that is not 4k + 1 never gets this far:
    ModeConfig refuses it when the mode is made, see test_modes.)"""
    be = FakeBackend()
    mode = get_mode("film", frames=9, steps=2, seed_base=over.get("seed_base", 0))
    s = RunSettings(
        mode=mode,
        width=over.get("width", W),
        height=H,
        num_clips=over.get("num_clips", 2),
        crf=over.get("crf", 16),
    )
    inputs = LoopInputs(over.get("reference", reference()), over.get("prompts", PROMPTS))
    with pytest.raises(SVIError, match=message):
        run_clips(be, s, inputs, tmp_path / "run")
    assert be.denoise_calls == 0 and not be.encoded and not (tmp_path / "run").exists()


def test_conditioning_items_fingerprint_by_content():
    from svi_core.run_store import fingerprint

    a = [[torch.ones(1, 4, 8), {"pooled_output": torch.zeros(1, 8)}]]
    b = [[torch.ones(1, 4, 8), {"pooled_output": torch.zeros(1, 8)}]]
    c = [[torch.ones(1, 4, 8), {"pooled_output": torch.ones(1, 8)}]]
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)
    assert fingerprint(["x", "y"]) != fingerprint(["y", "x"])
