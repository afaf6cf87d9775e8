"""Stream clips to disk as H.264 segments and join them into one mp4 without re-encoding.

Only imageio-ffmpeg's Python API is used (``write_frames`` / ``read_frames`` /
``count_frames_and_secs``); this module starts no process itself. Segments on disk are the truth: the final
mp4 is a stream copy of them (the concat demuxer), rebuilt whenever asked, so a crash never
loses finished clips. Frames are uint8 ``[N, H, W, 3]`` RGB throughout; memory per call is one
segment's frames at most (reading is a generator).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import SVIError
from .log import logger

DEFAULT_CRF = 16
"""x264 constant rate factor of the segments (0 lossless .. 51 worst; 16 is visually lossless)."""


def _ffmpeg():
    try:
        import imageio_ffmpeg
    except ImportError as e:  # pragma: no cover - a runtime dependency
        raise RuntimeError("writing video needs imageio-ffmpeg: pip install imageio-ffmpeg") from e
    return imageio_ffmpeg


def _as_uint8_frames(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [N, H, W, 3]; got {arr.dtype} {arr.shape}")
    return arr


def tmp_path_for(path: Path) -> Path:
    """A sibling temporary name that keeps the extension (ffmpeg picks the muxer from it)."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def write_segment(
    path: str | Path, frames: torch.Tensor | np.ndarray, fps: float, crf: int = DEFAULT_CRF
) -> Path:
    """Encode uint8 frames ``[N, H, W, 3]`` as one H.264 (yuv420p) mp4, atomically.

    The file appears under ``path`` only once complete (written to a temporary sibling, then
    ``os.replace``). H and W must be even (SVI sizes are multiples of 16).
    """
    ff = _ffmpeg()
    arr = _as_uint8_frames(frames)
    n, h, w, _ = arr.shape
    if n == 0:
        raise ValueError("a segment needs at least one frame")
    if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs an even size; got {w}x{h}")
    path = Path(path)
    tmp = tmp_path_for(path)
    tmp.unlink(missing_ok=True)
    writer = ff.write_frames(
        str(tmp),
        (w, h),
        fps=float(fps),
        codec="libx264",
        pix_fmt_out="yuv420p",
        quality=None,
        macro_block_size=2,
        ffmpeg_log_level="error",
        output_params=["-crf", str(int(crf)), "-preset", "medium", "-bf", "0", "-threads", "1"],
    )
    writer.send(None)
    try:
        for frame in arr:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()
    os.replace(tmp, path)
    return path


class VideoReadError(SVIError):
    """A file cannot be decoded as a video (not a video, no video stream, truncated)."""


_DECODE_ERRORS = (OSError, RuntimeError, ValueError, KeyError, StopIteration)
"""What imageio-ffmpeg raises for a file ffmpeg cannot decode (its message holds ffmpeg's
whole log, banner included)."""


_FFMPEG_REASONS = (
    ("moov atom not found", "no index (moov atom): the file is truncated"),
    (
        "does not contain any stream",
        "no video stream it can decode: audio only, empty or truncated",
    ),
    ("invalid data found", "not a video file"),
)


def _ffmpeg_reason(exc: BaseException) -> str:
    """One line saying why ffmpeg could not read a file (imageio-ffmpeg's error holds ffmpeg's
    whole log, banner included)."""
    text = str(exc)
    low = text.lower()
    for needle, reason in _FFMPEG_REASONS:
        if needle in low:
            return reason
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if "error" in line.lower():
            return line
    return lines[0] if lines else type(exc).__name__


def _unreadable(path: Path, exc: BaseException) -> VideoReadError:
    return VideoReadError(
        f"{path} cannot be read as a video (ffmpeg: {_ffmpeg_reason(exc)}); pass a video file "
        "with a video stream (e.g. an mp4 written by SVI)"
    )


def read_video_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Decode a video file frame by frame: yields uint8 ``[H, W, 3]`` RGB arrays.

    Raises:
        FileNotFoundError: no such file. VideoReadError: ffmpeg cannot decode it (one line
            naming the file and ffmpeg's reason).
    """
    ff = _ffmpeg()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video {path} does not exist")
    try:
        gen = ff.read_frames(str(path), pix_fmt="rgb24")
        meta = next(gen)
        w, h = (int(v) for v in meta["size"])
    except _DECODE_ERRORS as e:
        raise _unreadable(path, e) from None
    try:
        while True:
            try:
                raw = next(gen)
            except StopIteration:
                return
            except _DECODE_ERRORS as e:
                raise _unreadable(path, e) from None
            yield np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3)
    finally:
        gen.close()


def video_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of a video file, from its header (no frame decoded).

    Raises FileNotFoundError / VideoReadError like :func:`read_video_frames`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video {path} does not exist")
    try:
        gen = _ffmpeg().read_frames(str(path), pix_fmt="rgb24")
        try:
            meta = next(gen)
        finally:
            gen.close()
        w, h = (int(v) for v in meta["size"])
    except _DECODE_ERRORS as e:
        raise _unreadable(path, e) from None
    return h, w


def read_last_frames(path: str | Path, count: int) -> np.ndarray:
    """The last ``count`` frames of a video as uint8 ``[count, H, W, 3]`` (constant memory)."""
    kept: list[np.ndarray] = []
    for frame in read_video_frames(path):
        kept.append(frame.copy())
        if len(kept) > count:
            kept.pop(0)
    if len(kept) < count:
        raise ValueError(f"video {path} has {len(kept)} frames, fewer than {count}")
    return np.stack(kept)


def count_frames(path: str | Path) -> int:
    """Number of frames in a video file (decodes it; no frames are kept)."""
    return int(_ffmpeg().count_frames_and_secs(str(path))[0])


def concat_segments(segments: Sequence[str | Path], out: str | Path) -> Path:
    """Join H.264 segments (same size, fps and encoder settings) into ``out`` by stream copy.

    Uses the ffmpeg concat demuxer through ``imageio_ffmpeg.read_frames`` with a second,
    stream-copied output; only one frame is decoded. All segments must be in one directory.
    The file appears under ``out`` only once complete.
    """
    ff = _ffmpeg()
    paths = [Path(s).resolve() for s in segments]
    if not paths:
        raise ValueError("no segments to join")
    folder = paths[0].parent
    for p in paths:
        if p.parent != folder:
            raise ValueError(f"segment {p} is not in {folder}; keep segments in one folder")
        if not p.is_file():
            raise FileNotFoundError(f"segment {p} is missing")
        if "'" in p.name or "\n" in p.name:
            raise ValueError(f"segment name {p.name!r} cannot go in a concat list")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    listing = folder / ".concat.txt"
    listing.write_text("".join(f"file '{p.name}'\n" for p in paths), encoding="utf-8")
    tmp = tmp_path_for(out)
    tmp.unlink(missing_ok=True)
    copy_output = ["-map", "0:v", "-c:v", "copy", "-f", "mp4", "-movflags", "+faststart"]
    probe_output = ["-map", "0:v", "-frames:v", "1"]
    probe = ["-pix_fmt", "rgb24", "-vcodec", "rawvideo", "-f", "image2pipe"]
    gen = ff.read_frames(
        str(listing),
        input_params=["-y", "-f", "concat", "-safe", "1"],
        output_params=copy_output + [str(tmp.resolve())] + probe_output + probe,
    )
    try:
        for _ in gen:
            pass
    finally:
        gen.close()
        listing.unlink(missing_ok=True)
    if not tmp.is_file() or tmp.stat().st_size == 0:
        raise RuntimeError(f"ffmpeg did not write {tmp} while joining {len(paths)} segments")
    os.replace(tmp, out)
    logger.info("joined %d segments into %s", len(paths), out)
    return out
