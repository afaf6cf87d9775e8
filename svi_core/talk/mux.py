"""Put the speech into the finished SVI-Talk mp4 (at the join, never per clip; video stream copied).

Official ``test_svi_talk.py:321-333``: ``ffmpeg -i video -i audio -c:v copy -c:a aac -shortest``, the
ORIGINAL audio file from t = 0. Because every frame of every clip is kept while clip k > 0 is driven
by feature frames from ``81k - m`` (``test_svi_talk.py:277-280``), video frame n shows the audio of
frame ``n - m`` from clip 1 on: a constant lag of m frames (40 ms at 25 fps for m = 1).

Two alignments (:data:`AudioAlign`):

* ``official``: the original audio from 0 s, continuous, cut (or padded with silence) to the video
  length. Matches the official mp4 except that a video longer than the audio keeps all its frames
  (``-shortest`` would cut the video).
* ``frames``: each video frame gets exactly the audio that drove it: ``[0, F/fps]`` then, per later
  clip k, ``[(F k - m)/fps, (F k - m + F)/fps]`` (contiguous for k >= 2); the m frames of audio at
  ``(F - m)/fps`` play twice (a 40 ms repeat at 3.2 s). Perfect lip sync, one tiny stutter.

The audio keeps its own sample rate and channels (it is read from the original file, not the 16 kHz
mono copy given to wav2vec2) and is encoded to AAC. ffmpeg runs through imageio-ffmpeg's
``read_frames`` only (no process is started here), with one decoded video frame as the pipe it reads
(like :func:`svi_core.video_io.concat_segments`; ffmpeg keeps that pipe open until the whole mux is
written: checked with a 10-minute AAC encode).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from ..errors import SVIError
from ..log import logger
from ..video_io import mp4_frame_count, mp4_track_seconds
from .windows import AUDIO_FPS, audio_window_start

AudioAlign = Literal["official", "frames"]
"""``official``: original audio from 0 s; ``frames``: the audio each frame was generated from."""

AAC_BITRATE = "192k"


def audio_segments(
    num_clips: int,
    frames: int = 81,
    motion_frames: int = 1,
    fps: float = AUDIO_FPS,
    align: AudioAlign = "official",
) -> list[tuple[float, float]]:
    """Source intervals ``[(start_s, end_s), ...]`` played one after the other to make the track.

    Their total length is the video's, ``num_clips * frames / fps`` (every frame kept). Contiguous
    intervals are merged. ``official`` is one interval from 0.
    """
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1; got {num_clips}")
    if align == "official":
        return [(0.0, num_clips * frames / fps)]
    if align != "frames":
        raise ValueError(f"align must be 'official' or 'frames'; got {align!r}")
    spans: list[list[int]] = []
    for k in range(num_clips):
        s = audio_window_start(k, frames, motion_frames)
        if spans and spans[-1][1] == s:
            spans[-1][1] = s + frames
        else:
            spans.append([s, s + frames])
    return [(a / fps, b / fps) for a, b in spans]


def _ffmpeg():
    try:
        import imageio_ffmpeg
    except ImportError as e:  # pragma: no cover - a runtime dependency
        raise SVIError("muxing audio needs imageio-ffmpeg: pip install imageio-ffmpeg") from e
    return imageio_ffmpeg


def _graph(segments: list[tuple[float, float]]) -> str:
    total = sum(b - a for a, b in segments)
    n = len(segments)
    parts = []
    if n == 1:
        a, b = segments[0]
        parts.append(f"[1:a:0]atrim=start={a!r}:end={b!r},asetpts=PTS-STARTPTS[cat]")
    else:
        labels = "".join(f"[i{i}]" for i in range(n))
        parts.append(f"[1:a:0]asplit={n}{labels}")
        for i, (a, b) in enumerate(segments):
            parts.append(f"[i{i}]atrim=start={a!r}:end={b!r},asetpts=PTS-STARTPTS[s{i}]")
        joined = "".join(f"[s{i}]" for i in range(n))
        parts.append(f"{joined}concat=n={n}:v=0:a=1[cat]")
    parts.append(f"[cat]apad=whole_dur={total!r},atrim=duration={total!r}[aout]")
    return ";".join(parts)


AUDIO_TOLERANCE = 0.1
"""Seconds the muxed audio track may differ from its planned length (AAC priming and frame
padding add a few tens of milliseconds)."""


def check_muxed(path: Path, frames: int | None, seconds: float) -> None:
    """Verify a muxed mp4: every video frame's data present (``frames`` of them when given) and
    an audio track of ``seconds`` (within :data:`AUDIO_TOLERANCE`).

    Raises:
        SVIError: naming the file and what is wrong.
    """
    try:
        got = mp4_frame_count(path)
        tracks = mp4_track_seconds(path)
    except (OSError, ValueError) as e:
        raise SVIError(f"the muxed video {path} is not a complete mp4 ({e})") from None
    if frames is not None and got != frames:
        raise SVIError(f"the muxed video {path} has {got} frames, expected {frames}")
    if "soun" not in tracks:
        raise SVIError(f"the muxed video {path} has no audio track")
    if abs(tracks["soun"] - seconds) > AUDIO_TOLERANCE:
        raise SVIError(
            f"the audio track of {path} lasts {tracks['soun']:.3f} s, expected {seconds:.3f} s"
        )


def mux_audio(
    video: str | Path,
    audio: str | Path,
    out: str | Path,
    segments: list[tuple[float, float]],
    *,
    bitrate: str = AAC_BITRATE,
    expected_frames: int | None = None,
) -> Path:
    """Write ``out`` = ``video``'s video stream (copied) + ``audio``'s first audio stream cut into
    ``segments`` (:func:`audio_segments`), padded with silence to their total length, AAC-encoded.
    The result is checked (:func:`check_muxed`: ``expected_frames`` video frames when given, an
    audio track of the segments' total length) before it appears under ``out``; a failed mux
    leaves ``out`` as it was. ``out`` may be ``video`` itself.

    Raises:
        SVIError: missing inputs, ffmpeg could not read / write them, or the result failed the
            check (the message names the files).
    """
    ff = _ffmpeg()
    video, audio, out = Path(video), Path(audio), Path(out)
    for p, what in ((video, "video"), (audio, "audio")):
        if not p.is_file():
            raise SVIError(f"{what} file {p} does not exist; cannot add the speech track")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.partial{out.suffix}")
    tmp.unlink(missing_ok=True)
    output = ["-filter_complex", _graph(segments), "-map", "0:v:0", "-map", "[aout]"]
    output += ["-c:v", "copy", "-c:a", "aac", "-b:a", bitrate, "-movflags", "+faststart"]
    output += ["-f", "mp4", str(tmp.resolve())]
    # the pipe read_frames needs: ONE decoded frame of the video (same size as the copied video stream,
    # so the header parse cannot pick the wrong stream); ffmpeg keeps it open until the mux is done
    pipe = ["-map", "0:v:0", "-frames:v", "1", "-f", "image2pipe", "-pix_fmt", "rgb24"]
    pipe += ["-vcodec", "rawvideo"]
    try:
        gen = ff.read_frames(
            str(audio),
            input_params=["-y", "-nostdin", "-i", str(video)],
            output_params=output + pipe,
        )
        try:
            next(gen)
            for _ in gen:
                pass
        finally:
            gen.close()
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and "===" not in ln]
        raise SVIError(
            f"could not add the audio of {audio} to {video} (ffmpeg: {' | '.join(lines[-3:])})"
        ) from None
    if not tmp.is_file() or tmp.stat().st_size == 0:
        raise SVIError(f"ffmpeg wrote no output while adding {audio} to {video}")
    try:
        check_muxed(tmp, expected_frames, sum(b - a for a, b in segments))
    except SVIError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    logger.info("muxed %s into %s (%d audio segment(s))", audio, out, len(segments))
    return out
