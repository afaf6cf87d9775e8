"""Loading speech for SVI-Talk: any audio (or video) file -> 16 kHz mono float32, loudness-normalised.

The official pipeline (``utils/audio_process.py:67-75``) does ``librosa.load(path, sr=16000)`` (decode,
mono = mean of the channels, soxr "HQ" resampling, float32) and then normalises to -23 LUFS
(:mod:`svi_core.talk.loudness`). Here the decoding and resampling go through the ffmpeg binary shipped
with imageio-ffmpeg, driven only through its Python API (``imageio_ffmpeg.read_frames``; this module
starts no process itself): ffmpeg decodes the first audio stream, resamples it with its soxr resampler
(``aresample=16000:resampler=soxr``; ffmpeg's default resampler when soxr is not built in, with a log
line) keeping every channel, and writes a float32 WAV into a temporary folder; the channels are then
averaged here, as librosa does. A second, tiny ffmpeg output (a 16x16 waveform picture at 5 fps, drawn
from the same audio) is what ``read_frames`` reads from its pipe, so ffmpeg ends exactly when the audio
does. Any container ffmpeg reads works: wav, mp3, flac, m4a/aac, ogg/opus, and the audio of mp4/mov/mkv.

Differences from the official loader: soxr through ffmpeg instead of python-soxr (the same library; on a
44.1 kHz stereo test tone the two 16 kHz results differ by at most 4.7e-8, float32 rounding), ffmpeg's
decoders instead of libsndfile/audioread (mp3/aac decoders may differ by rounding). A 16 kHz input is
resampled by neither, so a 16 kHz WAV loads bit-identically. The filter graph pins the samples to float
(``aformat=sample_fmts=flt``): without it the waveform branch negotiates the whole graph down to 16-bit.
"""

from __future__ import annotations

import math
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import SVIError
from ..log import logger
from .loudness import TARGET_LUFS, integrated_loudness, normalise_loudness
from .windows import AUDIO_FPS, feature_frame_count

SAMPLE_RATE = 16000
"""wav2vec2's sample rate (``utils/audio_process.py:67`` ``sample_rate=16000``)."""

_WAVE_FORMAT_PCM = 1
_WAVE_FORMAT_FLOAT = 3
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE


@dataclass(frozen=True)
class AudioTrack:
    """Speech ready for wav2vec2.

    Attributes:
        samples: ``[N]`` float32 mono at ``sample_rate``, loudness-normalised when ``normalised``.
        sample_rate: 16000 for wav2vec2.
        source: where it came from (file path or a description), for messages.
        channels: channels of the source before the mono mix.
        loudness: integrated loudness of the mono mix before normalisation (LUFS; -inf = silence).
        normalised: whether the official -23 LUFS gain was applied.
        unnormalised: ``[N]`` float32 mono before the gain (what a clip's audio window is
            identified by, so that a longer recording of the same speech keeps the finished
            clips; the gain depends on the whole recording). None when not kept.
    """

    samples: np.ndarray
    sample_rate: int
    source: str
    channels: int
    loudness: float
    normalised: bool
    unnormalised: np.ndarray | None = None

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate

    def feature_frames(self, fps: float = AUDIO_FPS) -> int:
        """wav2vec2 feature frames at ``fps``: ``int(N / sample_rate * fps)`` (official)."""
        return feature_frame_count(len(self.samples), self.sample_rate, fps)


def _ffmpeg():
    try:
        import imageio_ffmpeg
    except ImportError as e:  # pragma: no cover - a runtime dependency
        raise SVIError("reading audio needs imageio-ffmpeg: pip install imageio-ffmpeg") from e
    return imageio_ffmpeg


def _last_lines(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip() and "===" not in ln]
    return " | ".join(lines[-n:]) if lines else "no output"


def _ffmpeg_to_wav(src: Path, out: Path, sample_rate: int, soxr: bool) -> None:
    """Decode ``src``'s first audio stream to a float32 WAV ``out`` at ``sample_rate`` (all channels)."""
    ff = _ffmpeg()
    resample = f"aresample={sample_rate}" + (":resampler=soxr" if soxr else "")
    graph = f"[0:a:0]{resample},aformat=sample_fmts=flt,asplit=2[wav][vis];[vis]showwaves=s=16x16:rate=5[v]"
    output = ["-filter_complex", graph, "-map", "[wav]", "-c:a", "pcm_f32le", "-f", "wav", str(out)]
    pipe = ["-map", "[v]", "-f", "image2pipe", "-pix_fmt", "rgb24", "-vcodec", "rawvideo"]
    gen = ff.read_frames(str(src), input_params=["-y", "-nostdin"], output_params=output + pipe)
    try:
        next(gen)
        for _ in gen:
            pass
    finally:
        gen.close()


def _read_float_wav(path: Path, source: str) -> tuple[np.ndarray, int]:
    """Parse a WAV written by ffmpeg (32-bit float or 16-bit PCM): ``(samples [N, C] float32, rate)``."""
    data = path.read_bytes()
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise SVIError(f"{source}: ffmpeg produced no WAV data; is it an audio file?")
    pos, fmt, payload = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if cid == b"fmt ":
            fmt = body
        elif cid == b"data":
            if len(body) != size:
                raise SVIError(
                    f"{source}: the decoded audio is truncated ({len(body)} of {size} bytes)"
                )
            payload = body
            break
        pos += 8 + size + (size & 1)
    if fmt is None or payload is None:
        raise SVIError(f"{source}: ffmpeg produced an incomplete WAV (no fmt/data chunk)")
    tag, channels, rate = struct.unpack("<HHI", fmt[:8])
    bits = struct.unpack("<H", fmt[14:16])[0]
    if tag == _WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]
    if tag == _WAVE_FORMAT_FLOAT and bits == 32:
        arr = np.frombuffer(payload, dtype="<f4")
    elif tag == _WAVE_FORMAT_PCM and bits == 16:
        arr = np.frombuffer(payload, dtype="<i2").astype(np.float32) / 32768.0
    else:  # pragma: no cover - we always ask ffmpeg for pcm_f32le
        raise SVIError(f"{source}: unexpected WAV sample format (tag {tag}, {bits} bits)")
    if channels < 1 or len(arr) % channels:
        raise SVIError(f"{source}: malformed WAV ({len(arr)} samples for {channels} channels)")
    return arr.reshape(-1, channels).astype(np.float32, copy=False), int(rate)


def _decode(path: Path, sample_rate: int) -> tuple[np.ndarray, int]:
    """Decode + resample to ``[N, C]`` float32 at ``sample_rate``; clear errors for non-audio."""
    with tempfile.TemporaryDirectory(prefix="svi_audio_") as tmp:
        out = Path(tmp) / "decoded.wav"
        for soxr in (True, False):
            try:
                _ffmpeg_to_wav(path, out, sample_rate, soxr)
                break
            except (OSError, RuntimeError) as e:
                text = str(e)
                if soxr and ("resampling engine" in text or "option 'resampler'" in text):
                    logger.warning("ffmpeg has no soxr resampler; using its default resampler")
                    continue
                if "matches no streams" in text or "Stream specifier" in text:
                    raise SVIError(
                        f"{path} has no audio stream; pass a speech recording (wav, mp3, flac, m4a) or "
                        "a video file with sound"
                    ) from None
                raise SVIError(
                    f"{path} cannot be decoded as audio (ffmpeg: {_last_lines(text)}); pass a speech "
                    "recording (wav, mp3, flac, m4a) or a video file with sound"
                ) from None
        if not out.is_file():
            raise SVIError(f"{path}: ffmpeg wrote no audio; is it an audio file?")
        samples, rate = _read_float_wav(out, str(path))
    if rate != sample_rate:
        raise SVIError(f"{path}: ffmpeg resampled to {rate} Hz instead of {sample_rate} Hz")
    return samples, rate


def _to_track(
    mixed: np.ndarray, channels: int, source: str, sample_rate: int, loudness_target: float | None
) -> AudioTrack:
    if len(mixed) == 0:
        raise SVIError(f"{source} contains no audio samples; pass a speech recording")
    if not np.isfinite(mixed).all():
        raise SVIError(f"{source} contains NaN/inf samples; re-export the audio")
    if len(mixed) < 0.4 * sample_rate:
        raise SVIError(
            f"{source} is {len(mixed) / sample_rate:.2f} s long; a talking video needs speech of at "
            "least one clip (3.24 s for 81 frames at 25 fps)"
        )
    loudness = integrated_loudness(mixed, sample_rate)
    if loudness == -math.inf:
        raise SVIError(
            f"{source} is silent (no 400 ms block is louder than -70 LUFS, peak "
            f"{float(np.max(np.abs(mixed))):.2e}); SVI-Talk needs speech. (The official code would keep "
            "the silence unnormalised and animate a face that does not talk.)"
        )
    if loudness_target is None:
        out, normalised = mixed.astype(np.float32, copy=False), False
    else:
        out, loudness = normalise_loudness(mixed, sample_rate, loudness_target)
        normalised = abs(loudness) <= 100.0
        if not normalised:
            logger.warning(
                "%s: loudness %.1f LUFS is out of range; left unnormalised", source, loudness
            )
    return AudioTrack(
        samples=out,
        sample_rate=sample_rate,
        source=source,
        channels=channels,
        loudness=float(loudness),
        normalised=normalised,
        unnormalised=mixed.astype(np.float32, copy=False),
    )


def load_audio(
    path: str | Path,
    *,
    sample_rate: int = SAMPLE_RATE,
    loudness_target: float | None = TARGET_LUFS,
) -> AudioTrack:
    """Load a speech file as the official SVI-Talk pipeline sees it.

    ``path``: any file ffmpeg can read with an audio stream (wav, mp3, flac, m4a, ogg, mp4, ...).
    Returns 16 kHz mono float32 (the mean of the channels), normalised to ``loudness_target`` LUFS
    (official -23; None skips it).

    Raises:
        SVIError: missing file, no audio stream, not decodable, empty, shorter than 0.4 s, or silent
            (no 400 ms block above -70 LUFS), each naming the file.
    """
    p = Path(path)
    if not p.exists():
        raise SVIError(f"audio file {p} does not exist; pass an existing speech recording")
    if not p.is_file():
        raise SVIError(
            f"audio path {p} is not a file; pass a speech recording (wav, mp3, flac, m4a)"
        )
    samples, _ = _decode(p, sample_rate)
    mixed = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    track = _to_track(mixed, samples.shape[1], str(p), sample_rate, loudness_target)
    logger.info(
        "audio %s: %.2f s, %d channel(s), %.1f LUFS%s",
        p,
        track.duration,
        track.channels,
        track.loudness,
        " -> normalised" if track.normalised else "",
    )
    return track


def write_wav(path: str | Path, samples: np.ndarray | torch.Tensor, sample_rate: int) -> Path:
    """Write float audio ``[N]`` or ``[C, N]`` (channels first) as a 32-bit float WAV."""
    arr = (
        samples.detach().cpu().numpy() if isinstance(samples, torch.Tensor) else np.asarray(samples)
    )
    arr = arr.astype("<f4")
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise ValueError(f"expected audio [N] or [C, N]; got shape {arr.shape}")
    channels = arr.shape[0]
    payload = np.ascontiguousarray(arr.T).tobytes()
    fmt = struct.pack(
        "<HHIIHH",
        _WAVE_FORMAT_FLOAT,
        channels,
        int(sample_rate),
        int(sample_rate) * 4 * channels,
        4 * channels,
        32,
    )
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(payload)) + payload
    p = Path(path)
    p.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return p


def prepare_waveform(
    waveform: torch.Tensor | np.ndarray,
    source_rate: int,
    *,
    source: str = "audio input",
    sample_rate: int = SAMPLE_RATE,
    loudness_target: float | None = TARGET_LUFS,
) -> AudioTrack:
    """An in-memory waveform (e.g. ComfyUI's AUDIO ``[B, C, N]`` / ``[C, N]`` / ``[N]``, float in [-1, 1])
    through the same path as :func:`load_audio` (ffmpeg soxr resampling, channel mean, -23 LUFS), so
    files and ComfyUI audio give the same features. Only the first batch item is used.
    """
    w = (
        waveform.detach().cpu().float().numpy()
        if isinstance(waveform, torch.Tensor)
        else np.asarray(waveform, dtype=np.float32)
    )
    if w.ndim == 3:
        w = w[0]
    if w.ndim == 1:
        w = w[None]
    if w.ndim != 2 or w.shape[1] == 0:
        raise SVIError(
            f"{source}: expected a waveform [channels, samples]; got shape {tuple(w.shape)}"
        )
    if source_rate <= 0:
        raise SVIError(f"{source}: sample rate must be positive; got {source_rate}")
    if source_rate == sample_rate:
        channels = w.shape[0]
        mixed = w.T.mean(axis=1) if channels > 1 else w[0]
    else:
        with tempfile.TemporaryDirectory(prefix="svi_wave_") as tmp:
            src = write_wav(Path(tmp) / "input.wav", w, source_rate)
            samples, _ = _decode(src, sample_rate)
        channels = samples.shape[1]
        mixed = samples.mean(axis=1) if channels > 1 else samples[:, 0]
    return _to_track(mixed.astype(np.float32), channels, source, sample_rate, loudness_target)
