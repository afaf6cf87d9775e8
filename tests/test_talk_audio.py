"""SVI-Talk audio loading: decoding through imageio-ffmpeg, 16 kHz mono, BS.1770 loudness, bad input.

Expected values come from the definitions the official code relies on (librosa's mono = channel mean,
pyloudnorm's ITU-R BS.1770-4 meter: a full-scale 997 Hz sine reads -3.01 LUFS, the -70 LUFS absolute and
-10 dB relative gates, ``audio * 10 ** ((-23 - L) / 20)``), not from this code's own output.
"""

from __future__ import annotations

import math
import subprocess

import numpy as np
import pytest
import torch

from svi_core.errors import SVIError
from svi_core.talk import integrated_loudness, load_audio, normalise_loudness, prepare_waveform
from svi_core.talk.audio import write_wav

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")

RATE = 16000


def _speech_like(seconds: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """A tone switched on and off at ~0.7 Hz plus a little noise, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.2 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 0.7 * t) > 0)
    return (x + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def _ffmpeg(*args: str) -> None:
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run([exe, "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


# ----- loudness -----------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [48000, 16000])
def test_full_scale_997hz_sine_reads_minus_3_01_lufs(rate: int) -> None:
    t = np.arange(3 * rate) / rate
    loud = integrated_loudness(np.sin(2 * np.pi * 997 * t), rate)
    assert abs(loud - (-3.01)) < 0.1  # BS.1770 calibration (pyloudnorm's RBJ filters: -3.05)


def test_loudness_scales_by_20_db_per_decade_of_amplitude() -> None:
    x = _speech_like(3.0).astype(np.float64)
    assert integrated_loudness(0.1 * x, RATE) == pytest.approx(
        integrated_loudness(x, RATE) - 20, abs=1e-9
    )


def test_absolute_and_relative_gates_ignore_silence_and_quiet_parts() -> None:
    t = np.arange(3 * RATE) / RATE
    tone = np.sin(2 * np.pi * 997 * t)
    alone = integrated_loudness(tone, RATE)
    with_silence = integrated_loudness(np.concatenate([tone, np.zeros(2 * RATE)]), RATE)
    with_quiet = integrated_loudness(np.concatenate([tone, 0.1 * tone]), RATE)
    ungated = alone + 10 * math.log10(3 / 5)  # plain energy mean over 5 s
    assert abs(with_silence - alone) < 0.3 and with_silence > ungated + 1.5
    assert abs(with_quiet - alone) < 0.3
    assert integrated_loudness(np.zeros(RATE), RATE) == -math.inf
    assert integrated_loudness(1e-4 * np.ones(RATE) * 0, RATE) == -math.inf


def test_normalise_to_minus_23_lufs_is_one_gain_and_keeps_silence() -> None:
    x = _speech_like(4.0)
    out, measured = normalise_loudness(x, RATE)
    gain = 10 ** ((-23.0 - measured) / 20.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, x.astype(np.float64) * gain, rtol=1e-6, atol=1e-9)
    assert integrated_loudness(out, RATE) == pytest.approx(-23.0, abs=1e-4)
    silent, loud = normalise_loudness(np.zeros(RATE, np.float32), RATE)
    assert loud == -math.inf and not silent.any()
    with pytest.raises(ValueError, match="shorter than one"):
        integrated_loudness(np.ones(RATE // 4), RATE)


# ----- loading ------------------------------------------------------------------------------


def test_16k_wav_loads_bit_exact_and_stereo_is_the_channel_mean(tmp_path) -> None:
    left, right = _speech_like(3.5, seed=1), _speech_like(3.5, seed=2) * 0.5
    path = write_wav(tmp_path / "speech.wav", np.stack([left, right]), RATE)
    track = load_audio(path, loudness_target=None)
    assert track.sample_rate == RATE and track.channels == 2 and not track.normalised
    assert track.samples.dtype == np.float32
    np.testing.assert_array_equal(track.samples, (left + right) / np.float32(2))
    assert track.feature_frames() == int(len(left) / RATE * 25)


def test_load_applies_the_official_minus_23_lufs(tmp_path) -> None:
    x = _speech_like(3.5)
    track = load_audio(write_wav(tmp_path / "a.wav", x, RATE))
    assert track.normalised
    gain = 10 ** ((-23.0 - integrated_loudness(x, RATE)) / 20.0)
    np.testing.assert_allclose(track.samples, x * gain, rtol=1e-6, atol=1e-9)


def test_44k_audio_is_resampled_to_16k(tmp_path) -> None:
    t = np.arange(int(4 * 44100)) / 44100
    x = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    track = load_audio(write_wav(tmp_path / "tone44.wav", x, 44100), loudness_target=None)
    assert len(track.samples) == 64000
    ref = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(64000) / RATE)
    assert np.abs(track.samples[1000:-1000] - ref[1000:-1000]).max() < 1e-3


@pytest.mark.parametrize(
    ("ext", "args", "exact"),
    [
        ("flac", [], True),
        ("mp3", ["-c:a", "libmp3lame", "-b:a", "128k"], False),
        ("m4a", ["-c:a", "aac", "-b:a", "128k"], False),
    ],
)
def test_compressed_formats_decode(tmp_path, ext: str, args: list[str], exact: bool) -> None:
    x = np.round(_speech_like(3.5) * 32767) / 32768  # representable in 16-bit PCM
    wav = tmp_path / "s16.wav"
    _ffmpeg("-i", str(write_wav(tmp_path / "f.wav", x, RATE)), "-c:a", "pcm_s16le", str(wav))
    out = tmp_path / f"speech.{ext}"
    _ffmpeg("-i", str(wav), *args, str(out))
    ref = load_audio(wav, loudness_target=None).samples
    got = load_audio(out, loudness_target=None).samples
    if exact:
        np.testing.assert_array_equal(got, ref)
    else:
        assert abs(len(got) - len(ref)) <= 2048
        n = min(len(got), len(ref))
        corr = np.corrcoef(got[:n], ref[:n])[0, 1]
        assert corr > 0.95


def test_audio_of_a_video_file_loads(tmp_path) -> None:
    wav = write_wav(tmp_path / "a.wav", _speech_like(3.5), RATE)
    video = tmp_path / "talk.mp4"
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "color=s=32x32:d=3.5",
        "-i",
        str(wav),
        "-c:v",
        "libx264",
        "-c:a",
        "aac",
        "-shortest",
        str(video),
    )
    track = load_audio(video, loudness_target=None)
    assert abs(track.duration - 3.5) < 0.1


def test_waveform_input_goes_through_the_same_path(tmp_path) -> None:
    x = np.stack([_speech_like(3.5, seed=3), _speech_like(3.5, seed=4)])
    from_file = load_audio(write_wav(tmp_path / "w.wav", x, RATE))
    from_wave = prepare_waveform(torch.from_numpy(x)[None], RATE)
    np.testing.assert_array_equal(from_wave.samples, from_file.samples)
    t = np.arange(int(3.5 * 22050)) / 22050
    resampled = prepare_waveform(np.sin(2 * np.pi * 300 * t)[None].astype(np.float32), 22050)
    assert len(resampled.samples) == 56000


# ----- bad input ----------------------------------------------------------------------------


def test_missing_file_and_folder_are_refused(tmp_path) -> None:
    with pytest.raises(SVIError, match=r"nope\.wav does not exist"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(SVIError, match="is not a file"):
        load_audio(tmp_path)


def test_a_file_that_is_not_audio_is_refused(tmp_path) -> None:
    bad = tmp_path / "speech.wav"
    bad.write_text("this is not audio\n" * 50)
    with pytest.raises(SVIError, match=r"speech\.wav cannot be decoded as audio"):
        load_audio(bad)


def test_a_video_without_sound_is_refused(tmp_path) -> None:
    video = tmp_path / "mute.mp4"
    _ffmpeg("-f", "lavfi", "-i", "color=s=32x32:d=1", "-c:v", "libx264", str(video))
    with pytest.raises(SVIError, match=r"mute\.mp4 has no audio stream"):
        load_audio(video)


def test_silence_only_is_refused(tmp_path) -> None:
    silent = write_wav(tmp_path / "silence.wav", np.zeros(5 * RATE, np.float32), RATE)
    with pytest.raises(SVIError, match=r"silence\.wav is silent"):
        load_audio(silent)
    hiss = write_wav(
        tmp_path / "hiss.wav",
        (1e-5 * np.random.default_rng(0).standard_normal(5 * RATE)).astype(np.float32),
        RATE,
    )
    with pytest.raises(SVIError, match="-70 LUFS"):
        load_audio(hiss)


def test_a_fraction_of_a_second_is_refused(tmp_path) -> None:
    short = write_wav(tmp_path / "blip.wav", _speech_like(0.2), RATE)
    with pytest.raises(SVIError, match=r"blip\.wav is 0\.20 s long"):
        load_audio(short)
