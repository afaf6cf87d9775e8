"""Run store safety: locks, verified joins, damaged segments, full disks, writability, logs."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from _svi_fakes import FakeBackend
from test_loop import PROMPTS, reference, settings

from svi_core import run_store as rs
from svi_core import video_io
from svi_core.errors import RunInUseError, RunStoreError
from svi_core.loop import LoopInputs, open_run, run_clips
from svi_core.video_io import count_frames, mp4_frame_count, read_video_frames, write_segment

ROOT = Path(__file__).resolve().parents[1]


def go(tmp, s, **kw):
    be = FakeBackend(clip_vision=s.mode.clip_vision)
    res = run_clips(
        be, s, LoopInputs(reference(), PROMPTS), tmp / "run", output=tmp / "out.mp4", **kw
    )
    return be, res


def frames_of(path):
    return np.stack(list(read_video_frames(path)))


# ----- locks ---------------------------------------------------------------------------------


def test_a_second_run_on_the_same_directory_is_refused(tmp_path):
    s = settings("tom", clips=2)
    store = open_run(tmp_path / "run", s, LoopInputs(reference(), PROMPTS))
    try:
        be = FakeBackend()
        with pytest.raises(RunInUseError, match=r"in use by another run \(pid \d+"):
            run_clips(be, s, LoopInputs(reference(), PROMPTS), tmp_path / "run")
        assert be.denoise_calls == 0
    finally:
        store.close()
    go(tmp_path, s)  # released on close


def test_the_lock_dies_with_the_process(tmp_path):
    """A crashed run (killed process) never leaves a stale lock."""
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "tests")!r}]
        from test_loop import PROMPTS, reference, settings
        from svi_core.loop import LoopInputs, open_run
        store = open_run({str(tmp_path / "run")!r}, settings("tom", clips=2),
                         LoopInputs(reference(), PROMPTS))
        print("locked", flush=True)
        sys.stdin.readline()
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUseError):
            open_run(tmp_path / "run", settings("tom", clips=2), LoopInputs(reference(), PROMPTS))
    finally:
        child.kill()
        child.wait()
    open_run(tmp_path / "run", settings("tom", clips=2), LoopInputs(reference(), PROMPTS)).close()


# ----- verified joins ------------------------------------------------------------------------


def test_a_truncated_segment_is_re_encoded_from_the_clip_latent(tmp_path):
    s = settings("film", clips=3)
    _, res = go(tmp_path, s)
    good = frames_of(res.video)
    seg = res.run_dir / "segments" / "clip_00001.mp4"
    data = seg.read_bytes()
    seg.write_bytes(data[: len(data) // 2])
    # the rerun (nothing to generate) verifies, re-encodes clip 1 from its latent, rejoins
    be, again = go(tmp_path, s)
    assert be.denoise_calls == 0
    assert count_frames(again.video) == again.frames == good.shape[0]
    assert np.array_equal(frames_of(again.video), good)
    rec = json.loads((res.run_dir / "manifest.json").read_text())["clips"][1]
    assert rec["segment_bytes"] == seg.stat().st_size


def test_a_damaged_segment_without_a_backend_is_named(tmp_path):
    s = settings("tom", clips=2)
    _, res = go(tmp_path, s)
    (res.run_dir / "segments" / "clip_00000.mp4").write_bytes(b"\0" * 100)
    store = open_run(res.run_dir, s, LoopInputs(reference(), PROMPTS))
    try:
        with pytest.raises(RunStoreError, match=r"segments/clip_00000\.mp4 of clip 0 is damaged"):
            store.build_video(tmp_path / "x.mp4", 2, fps=s.mode.fps)
    finally:
        store.close()


def test_a_failed_join_keeps_the_previous_video_and_every_clip(tmp_path, monkeypatch):
    s2, s3 = settings("tom", clips=2), settings("tom", clips=3)
    _, res = go(tmp_path, s2)
    before = res.video.read_bytes()
    real = video_io.concat_segments

    def short_join(segments, out, *, expected_frames=None):
        # the join ends early, as with a full disk: the last segment never makes it in
        return real(segments[:-1], out, expected_frames=expected_frames)

    monkeypatch.setattr(rs, "concat_segments", short_join)
    with pytest.raises(RunStoreError, match="previous out.mp4 .* is unchanged.*3 finished"):
        go(tmp_path, s3)
    assert res.video.read_bytes() == before
    assert len(json.loads((res.run_dir / "manifest.json").read_text())["clips"]) == 3
    monkeypatch.setattr(rs, "concat_segments", real)
    _, done = go(tmp_path, s3)
    assert count_frames(done.video) == done.frames == 3 * 9 - 2 * 1


def test_a_full_disk_while_writing_a_clip_says_what_is_kept(tmp_path, monkeypatch):
    s = settings("tom", clips=3)
    real = rs.write_segment
    calls = {"n": 0}

    def full(path, frames, fps, crf):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, frames, fps, crf)

    monkeypatch.setattr(rs, "write_segment", full)
    with pytest.raises(RunStoreError, match=r"no space left.*clip 1.*1 finished clip\(s\).*kept"):
        go(tmp_path, s)
    monkeypatch.setattr(rs, "write_segment", real)
    be, res = go(tmp_path, s)
    assert [r.index for r in be.requests] == [1, 2]


def test_an_unwritable_output_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    be = FakeBackend()
    with pytest.raises(RunStoreError, match="cannot write to the output folder"):
        run_clips(
            be,
            settings("tom", clips=1),
            LoopInputs(reference(), PROMPTS),
            tmp_path / "run",
            output=blocker / "video.mp4",
        )
    assert be.denoise_calls == 0 and not (tmp_path / "run").exists()


# ----- small pieces --------------------------------------------------------------------------


def test_mp4_frame_count_reads_the_tables_and_catches_truncation(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (11, 32, 48, 3), dtype=np.uint8)
    path = write_segment(tmp_path / "a.mp4", frames, 16)
    assert mp4_frame_count(path) == 11 == count_frames(path)
    data = path.read_bytes()
    for cut in (len(data) - 10, len(data) // 2, 40):
        (tmp_path / "t.mp4").write_bytes(data[:cut])
        with pytest.raises(ValueError):
            mp4_frame_count(tmp_path / "t.mp4")
    (tmp_path / "n.mp4").write_text("not a video")
    with pytest.raises(ValueError):
        mp4_frame_count(tmp_path / "n.mp4")


def test_file_fingerprint_sees_content_not_just_name_and_size(tmp_path):
    rng = np.random.default_rng(1)
    for size in (1000, 6 << 20):  # hashed whole / sampled
        a, b = tmp_path / f"a{size}", tmp_path / f"b{size}"
        a.write_bytes(rng.bytes(size))
        b.write_bytes(rng.bytes(size))
        assert rs.file_fingerprint(a) != rs.file_fingerprint(b)
        b.write_bytes(a.read_bytes())
        assert rs.file_fingerprint(a) == rs.file_fingerprint(b)


def test_a_same_named_model_file_with_other_weights_is_refused(tmp_path):
    from svi_core.cli import ModelFiles

    model = tmp_path / "dit.safetensors"
    model.write_bytes(b"A" * 4096)
    files = ModelFiles(model=model, vae=model)
    s = settings("tom", clips=1)
    inputs = LoopInputs(reference(), PROMPTS, fingerprints=files.fingerprints())
    open_run(tmp_path / "run", s, inputs).close()
    model.write_bytes(b"B" * 4096)  # same name, same size, other content
    inputs = LoopInputs(reference(), PROMPTS, fingerprints=files.fingerprints())
    with pytest.raises(RunStoreError, match=r"input model\.content="):
        open_run(tmp_path / "run", s, inputs)


def test_log_says_new_resumed_or_finished(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="svi")
    go(tmp_path, settings("tom", clips=1))
    assert "new run" in caplog.text and "resuming" not in caplog.text
    caplog.clear()
    go(tmp_path, settings("tom", clips=2))
    assert "resuming run" in caplog.text and "after 1 finished clips" in caplog.text
    caplog.clear()
    go(tmp_path, settings("tom", clips=2))
    assert "already has 2 clips; nothing to generate" in caplog.text
    assert "resuming" not in caplog.text


@pytest.mark.parametrize("name", ["film", "v2_pro", "v2_w22"])
def test_last_frames_come_from_the_run_store(tmp_path, name):
    s = settings(name, clips=3)
    _, res = go(tmp_path, s)
    video = frames_of(res.video)
    n = res.last_frames.shape[0]
    assert n == max(1, s.mode.motion_frames, s.mode.overlap_frames)
    # the carry frames are exact (pixel carry); H.264 frames are close
    diff = np.abs(video[-n:].astype(int) - res.last_frames.numpy().astype(int)).mean()
    assert diff < 3.0
    assert res.last_latent.shape == (1, 16, s.mode.latent_frames, 4, 6)
    assert os.path.exists(res.video)
    assert torch.is_tensor(res.last_frames) and res.last_frames.dtype == torch.uint8
