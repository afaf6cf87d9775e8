"""The speech track of the finished SVI-Talk mp4.

Interval values are read off the official code: every frame of every clip is kept
(``test_svi_talk.py:304-308``), clip k > 0 is driven from feature frame ``81k - m``
(``test_svi_talk.py:277-280``), 25 fps (``:319``), audio muxed from 0 s (``:324-333``).
"""

from __future__ import annotations

import numpy as np
import pytest

from svi_core.errors import SVIError
from svi_core.talk import load_audio, write_wav
from svi_core.talk.mux import audio_segments, mux_audio
from svi_core.video_io import read_video_frames, write_segment

pytest.importorskip("imageio_ffmpeg")


def test_official_alignment_is_the_audio_from_zero_for_the_whole_video() -> None:
    assert audio_segments(50) == [(0.0, 162.0)]  # 50 clips x 81 frames at 25 fps


def test_frame_alignment_repeats_the_motion_frames_audio_once() -> None:
    assert audio_segments(1, align="frames") == [(0.0, 3.24)]
    # clip 1 is driven by frames 80..160, clip 2 by 161..241: contiguous from clip 1 on
    assert audio_segments(3, align="frames") == [(0.0, 3.24), (3.2, 9.68)]
    segs = audio_segments(50, align="frames")
    assert segs == [(0.0, 3.24), (3.2, 161.96)]
    assert sum(b - a for a, b in segs) == pytest.approx(162.0)
    assert audio_segments(3, motion_frames=5, align="frames") == [(0.0, 3.24), (3.04, 9.52)]
    with pytest.raises(ValueError):
        audio_segments(2, align="late")


def _video(tmp_path, frames: int = 18):
    rng = np.random.default_rng(0)
    px = rng.integers(0, 255, size=(frames, 32, 32, 3), dtype=np.uint8)
    return write_segment(tmp_path / "video.mp4", px, fps=25)


def _tone(tmp_path, seconds: float, rate: int = 44100):
    t = np.arange(int(seconds * rate)) / rate
    x = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t)])
    return write_wav(tmp_path / "speech.wav", x.astype(np.float32), rate)


@pytest.mark.parametrize("align", ["official", "frames"])
def test_mux_copies_the_video_and_adds_audio_of_the_video_length(tmp_path, align) -> None:
    video, audio = _video(tmp_path), _tone(tmp_path, 2.0)
    out = mux_audio(video, audio, tmp_path / "talk.mp4", audio_segments(2, frames=9, align=align))
    before = np.stack(list(read_video_frames(video)))
    after = np.stack(list(read_video_frames(out)))
    np.testing.assert_array_equal(after, before)  # stream copy: same frames
    track = load_audio(out, loudness_target=None)
    assert track.channels == 2
    assert abs(track.duration - 18 / 25) < 0.05


def test_audio_shorter_than_the_video_is_padded_not_the_video_cut(tmp_path) -> None:
    video, audio = _video(tmp_path, frames=36), _tone(tmp_path, 0.5)
    out = mux_audio(video, audio, tmp_path / "talk.mp4", audio_segments(4, frames=9))
    assert len(list(read_video_frames(out))) == 36
    track = load_audio(out, loudness_target=None)
    assert abs(track.duration - 36 / 25) < 0.05
    assert np.abs(track.samples[-3000:]).max() < 1e-3  # the padding is silence


def test_missing_or_bad_inputs_are_refused(tmp_path) -> None:
    video = _video(tmp_path)
    with pytest.raises(SVIError, match="audio file .*nope.wav does not exist"):
        mux_audio(video, tmp_path / "nope.wav", tmp_path / "o.mp4", [(0.0, 0.72)])
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio at all\n" * 20)
    with pytest.raises(SVIError, match="could not add the audio of .*bad.wav"):
        mux_audio(video, bad, tmp_path / "o.mp4", [(0.0, 0.72)])
    assert not (tmp_path / "o.mp4").exists()


def _block_rms(samples: np.ndarray, rate: int = 16000, fps: int = 25) -> np.ndarray:
    n = rate // fps
    blocks = samples[: len(samples) // n * n].reshape(-1, n)[:, 64:-64]  # skip block edges
    return np.sqrt((blocks**2).mean(axis=1))


@pytest.mark.parametrize("align", ["official", "frames"])
def test_each_frame_gets_the_audio_of_its_window(tmp_path, align) -> None:
    # source: a 1 kHz tone whose amplitude steps up every 40 ms (one video frame at 25 fps)
    rate, n = 16000, 640
    steps = np.repeat(0.02 * (np.arange(30) + 1), n)
    t = np.arange(len(steps)) / rate
    audio = write_wav(
        tmp_path / "ramp.wav", (steps * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), rate
    )
    out = mux_audio(
        _video(tmp_path), audio, tmp_path / "t.mp4", audio_segments(2, frames=9, align=align)
    )
    rms = _block_rms(load_audio(out, loudness_target=None).samples)
    src = _block_rms(load_audio(audio, loudness_target=None).samples)
    # video frame 9 (clip 1, frame 0) was generated from feature frame 9 * 1 - 1 = 8
    expected_source_block = {"official": 9, "frames": 8}[align]
    assert rms[9] == pytest.approx(src[expected_source_block], rel=0.03)
    assert rms[12] == pytest.approx(src[12 if align == "official" else 11], rel=0.03)


def test_the_muxed_file_is_checked_before_it_replaces_the_output(tmp_path) -> None:
    from svi_core.video_io import mp4_track_seconds

    video, audio = _video(tmp_path), _tone(tmp_path, 2.0)
    assert "soun" not in mp4_track_seconds(video)
    out = tmp_path / "talk.mp4"
    out.write_bytes(b"previous")
    segments = audio_segments(2, frames=9)
    with pytest.raises(SVIError, match="has 18 frames, expected 20"):
        mux_audio(video, audio, out, segments, expected_frames=20)
    assert out.read_bytes() == b"previous"  # a failed mux keeps the previous file
    mux_audio(video, audio, out, segments, expected_frames=18)
    tracks = mp4_track_seconds(out)
    assert tracks["vide"] == pytest.approx(18 / 25) and abs(tracks["soun"] - 18 / 25) < 0.1
    # the output may be the video itself (a second finishing step)
    mux_audio(out, audio, out, segments, expected_frames=18)
    assert len(list(read_video_frames(out))) == 18
