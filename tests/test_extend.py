"""Extend any video: the carry from its end, stitching, the prefix segment (stream copy or
one re-encode), resume, and the refusals of bad videos."""

import json
import logging

import numpy as np
import pytest
import torch
from _svi_fakes import FakeBackend
from safetensors.torch import load_file

from svi_core.conditioning import frames_to_pixels
from svi_core.errors import Cancelled, RunMismatchError, SVIError
from svi_core.extend import load_video_start, resize_frame, video_start_from_frames
from svi_core.loop import LoopInputs, RunSettings, run_clips
from svi_core.modes import get_mode
from svi_core.video_io import mp4_video_track, read_video_frames, write_segment

H, W = 32, 48
PROMPTS = ["a red fox runs", "the fox jumps"]


def settings(name="film", clips=2, **over):
    over.setdefault("frames", 13)  # film continuing a video: F >= 2 * 5 + 1
    over.setdefault("steps", 2)
    over.setdefault("fps", 16.0)
    if name in ("v2_pro", "v2_w22"):
        over.setdefault("width", W)
        over.setdefault("height", H)
    return RunSettings(mode=get_mode(name, **over), width=W, height=H, num_clips=clips)


def reference():
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (H, W, 3), generator=g, dtype=torch.uint8)


def run(tmp, s, start=None, backend=None, name="run", **kw):
    be = backend or FakeBackend(clip_vision=s.mode.clip_vision)
    ref = start.first if start is not None else reference()
    res = run_clips(
        be,
        s,
        LoopInputs(ref, PROMPTS, start=start),
        tmp / name,
        output=tmp / f"{name}.mp4",
        **kw,
    )
    return be, res


def frames_of(path):
    return np.stack(list(read_video_frames(path)))


def some_video(path, n=7, h=H, w=W, fps=16.0, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    write_segment(path, frames, fps)
    return frames_of(path)  # what a decoder reads back


@pytest.mark.parametrize("name", ["film", "v2_pro", "v2_w22"])
def test_an_extended_run_has_the_length_of_a_longer_run_and_keeps_the_original(tmp_path, name):
    """A 2-clip run extended by 2 clips from its mp4 equals a 4-clip run in length, and the
    original's frames are untouched (its mp4 is joined by stream copy, bit for bit)."""
    _, short = run(tmp_path, settings(name, clips=2), name="short")
    _, long = run(tmp_path, settings(name, clips=4), name="long")
    s = settings(name, clips=2)
    start = load_video_start(short.video, s.mode, (W, H))
    _, ext = run(tmp_path, s, start=start, name="ext")
    assert ext.frames == long.frames == mp4_video_track(ext.video).frames
    original = frames_of(short.video)
    extended = frames_of(ext.video)
    assert len(extended) == long.frames
    assert np.array_equal(extended[: len(original)], original)
    manifest = json.loads((ext.run_dir / "manifest.json").read_text())
    assert manifest["prefix"]["stream_copy"] is True
    assert (ext.run_dir / "segments/prefix.mp4").read_bytes() == short.video.read_bytes()
    assert manifest["inputs"]["extend"] == start.fingerprint
    # the drift report sees the original as span 0, then the new clips
    from svi_core.report import layout_from_run

    spans, _, _ = layout_from_run(str(ext.run_dir))
    assert (spans[0].start, spans[0].end) == (0, len(original)) and len(spans) == 3
    assert spans[-1].end == len(extended)


def test_pixel_carry_comes_from_the_videos_last_frames(tmp_path):
    frames = some_video(tmp_path / "in.mp4", n=7)
    s = settings("film", clips=1)
    start = load_video_start(tmp_path / "in.mp4", s.mode, (W, H))
    be, res = run(tmp_path, s, start=start)
    # clip 0 is conditioned on the last 5 decoded frames of the video (uint8, as stored)
    assert torch.equal(be.encoded[0][:, :, :5], frames_to_pixels(torch.from_numpy(frames[-5:])))
    assert torch.equal(
        be.clip_frames[0], frames_to_pixels(torch.from_numpy(frames[-5:-4]))[:, :, 0]
    )
    # the anchor is the first frame; clip 0 drops the 5 frames it re-renders
    assert torch.equal(start.first, torch.from_numpy(frames[0]))
    assert res.frames == 7 + 13 - 5


def test_frames_are_resized_as_the_reference_is(tmp_path):
    frames = some_video(tmp_path / "big.mp4", n=6, h=64, w=96)
    s = settings("film", clips=1)
    start = load_video_start(tmp_path / "big.mp4", s.mode, (W, H))
    assert start.source_size == (96, 64) and tuple(start.last.shape) == (5, H, W, 3)
    assert np.array_equal(start.last[-1].numpy(), resize_frame(frames[-1], (W, H)))


def test_latent_carry_encodes_the_videos_last_4k_plus_1_frames(tmp_path):
    frames = some_video(tmp_path / "in.mp4", n=14)
    s = settings("v2_pro", clips=1, frames=9)
    start = load_video_start(tmp_path / "in.mp4", s.mode, (W, H))
    be, res = run(tmp_path, s, start=start)
    # the last 5 frames (4k + 1, k = 1) in one causal encode; the carry is its last latent
    want = be.encode(frames_to_pixels(torch.from_numpy(frames[-5:])))
    assert want.shape[2] == 2
    assert torch.equal(be.requests[0].cond_latent[:, :, 1:2], want[:, :, -1:])
    assert res.frames == 14 + 9 - 5  # the first new clip drops the 1 + 4k re-rendered frames
    s2 = settings("v2_pro", clips=1, frames=13, motion_latents=2)
    start = load_video_start(tmp_path / "in.mp4", s2.mode, (W, H))
    carry = start.carry(FakeBackend(clip_vision=False), s2.mode)
    assert carry.latent.shape[2] == 3  # 9 frames -> 3 latent frames, the last 2 carried


def test_a_video_that_does_not_join_by_stream_copy_is_re_encoded_once(tmp_path, caplog):
    some_video(tmp_path / "in.mp4", n=7, fps=25.0)
    s = settings("film", clips=1)  # the run's frame rate is 16
    start = load_video_start(tmp_path / "in.mp4", s.mode, (W, H))
    with caplog.at_level(logging.INFO, logger="svi"):
        _, res = run(tmp_path, s, start=start)
    assert "cannot be joined by stream copy" in caplog.text and "25 fps" in caplog.text
    manifest = json.loads((res.run_dir / "manifest.json").read_text())
    assert manifest["prefix"]["stream_copy"] is False
    assert mp4_video_track(res.video).frames == res.frames == 7 + 13 - 5
    assert mp4_video_track(res.video).fps == pytest.approx(16.0)


def test_frames_given_as_images_are_encoded_in_front(tmp_path):
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (6, 40, 60, 3), generator=g, dtype=torch.uint8)
    s = settings("film", clips=1)
    start = video_start_from_frames(images, s.mode, (W, H), name="extend_images")
    be, res = run(tmp_path, s, start=start)
    want = torch.from_numpy(np.stack([resize_frame(f.numpy(), (W, H)) for f in images[-5:]]))
    assert torch.equal(be.encoded[0][:, :, :5], frames_to_pixels(want))
    assert mp4_video_track(res.video).frames == 6 + 13 - 5


def test_an_extended_run_resumes_bit_exact_and_refuses_another_video(tmp_path):
    some_video(tmp_path / "in.mp4", n=7)
    s = settings("film", clips=3)
    start = load_video_start(tmp_path / "in.mp4", s.mode, (W, H))
    _, full = run(tmp_path / "a", s, start=start)

    def cancel_in_clip_1(clip, done, total):
        if clip == 1:
            raise Cancelled()

    with pytest.raises(Cancelled):
        run(tmp_path / "b", s, start=start, on_step=cancel_in_clip_1)
    be, resumed = run(tmp_path / "b", s, start=start)
    assert [r.index for r in be.requests] == [1, 2]
    assert np.array_equal(frames_of(full.video), frames_of(resumed.video))
    for a, b in zip(
        sorted((full.run_dir / "clips").glob("*.safetensors")),
        sorted((resumed.run_dir / "clips").glob("*.safetensors")),
        strict=True,
    ):
        assert torch.equal(load_file(str(a))["latent"], load_file(str(b))["latent"])
    # a lost prefix segment is written again from the video
    (resumed.run_dir / "segments/prefix.mp4").unlink()
    _, again = run(tmp_path / "b", s, start=start)
    assert np.array_equal(frames_of(full.video), frames_of(again.video))
    some_video(tmp_path / "other.mp4", n=7, seed=1)
    other = load_video_start(tmp_path / "other.mp4", s.mode, (W, H))
    with pytest.raises(RunMismatchError, match="input extend"):
        run(tmp_path / "b", s, start=other)
    with pytest.raises(RunMismatchError, match="extend"):
        run(tmp_path / "b", s)  # the same run without the video


def test_bad_videos_are_refused_before_any_work_with_the_file_named(tmp_path):
    mode = settings("film").mode
    some_video(tmp_path / "in.mp4", n=7)
    with pytest.raises(SVIError, match="missing.mp4 does not exist"):
        load_video_start(tmp_path / "missing.mp4", mode)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    with pytest.raises(SVIError, match="junk.mp4 cannot be decoded"):
        load_video_start(junk, mode)
    some_video(tmp_path / "three.mp4", n=3)
    with pytest.raises(SVIError, match="three.mp4 has 3 frame.*continues from 5"):
        load_video_start(tmp_path / "three.mp4", mode)
    pro = settings("v2_pro").mode
    some_video(tmp_path / "four.mp4", n=4)
    with pytest.raises(SVIError, match="four.mp4 has 4 frame.*5"):
        load_video_start(tmp_path / "four.mp4", pro, (W, H))
    images = torch.zeros(2, H, W, 3, dtype=torch.uint8)
    with pytest.raises(SVIError, match="extend_images has 2 frame"):
        video_start_from_frames(images, mode, (W, H), name="extend_images")
    with pytest.raises(SVIError, match="at least 11 frames per clip"):
        load_video_start(tmp_path / "in.mp4", settings("film", frames=9).mode, (W, H))
    # a start read for another size is refused by the loop before any denoising
    start = load_video_start(tmp_path / "in.mp4", mode, (64, 48))
    be = FakeBackend()
    with pytest.raises(SVIError, match="read at 64x48, the run is 48x32"):
        run_clips(be, settings("film"), LoopInputs(reference(), PROMPTS, start=start), tmp_path)
    assert be.denoise_calls == 0
