"""Stream clips to disk as H.264 segments and join them into one mp4 without re-encoding.

Only imageio-ffmpeg's Python API is used (``write_frames`` / ``read_frames`` /
``count_frames_and_secs``); this module starts no process itself. Segments on disk are the truth: the final
mp4 is a stream copy of them (the concat demuxer), rebuilt whenever asked, so a crash never
loses finished clips. Frames are uint8 ``[N, H, W, 3]`` RGB throughout; memory per call is one
segment's frames at most (reading is a generator).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    arr = _as_uint8_frames(frames)
    n, h, w, _ = arr.shape
    if n == 0:
        raise ValueError("a segment needs at least one frame")
    write_frames_stream(path, iter(arr), w, h, fps, crf)
    return Path(path)


def write_frames_stream(
    path: str | Path,
    frames: Iterable[np.ndarray],
    width: int,
    height: int,
    fps: float,
    crf: int = DEFAULT_CRF,
) -> int:
    """Encode uint8 ``[H, W, 3]`` frames from an iterable as one H.264 (yuv420p) mp4, the
    encoder settings of :func:`write_segment`, atomically; one frame in memory at a time.

    Returns the number of frames written.

    Raises:
        ValueError: an odd size, a frame of another size or type, or no frame at all (then
            nothing is written).
    """
    ff = _ffmpeg()
    if height % 2 or width % 2:
        raise ValueError(f"H.264 yuv420p needs an even size; got {width}x{height}")
    path = Path(path)
    tmp = tmp_path_for(path)
    tmp.unlink(missing_ok=True)
    writer = ff.write_frames(
        str(tmp),
        (width, height),
        fps=float(fps),
        codec="libx264",
        pix_fmt_out="yuv420p",
        quality=None,
        macro_block_size=2,
        ffmpeg_log_level="error",
        output_params=["-crf", str(int(crf)), "-preset", "medium", "-bf", "0", "-threads", "1"],
    )
    writer.send(None)
    n = 0
    try:
        for frame in frames:
            if frame.dtype != np.uint8 or frame.shape != (height, width, 3):
                raise ValueError(
                    f"frame {n}: expected uint8 [{height}, {width}, 3]; got {frame.dtype} "
                    f"{tuple(frame.shape)}"
                )
            writer.send(np.ascontiguousarray(frame))
            n += 1
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    if n == 0:
        tmp.unlink(missing_ok=True)
        raise ValueError("a segment needs at least one frame")
    os.replace(tmp, path)
    return n


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


def concat_segments(
    segments: Sequence[str | Path], out: str | Path, *, expected_frames: int | None = None
) -> Path:
    """Join H.264 segments (same size, fps and encoder settings) into ``out`` by stream copy.

    Uses the ffmpeg concat demuxer through ``imageio_ffmpeg.read_frames`` with a second,
    stream-copied output; only one frame is decoded. All segments must be in one directory.
    The join is written beside ``out`` and checked (a complete mp4 whose frame data lies
    inside the file, with ``expected_frames`` frames when given) before it replaces ``out``;
    a failed join leaves ``out`` as it was.

    Raises:
        RuntimeError: ffmpeg failed or wrote an incomplete file or the wrong frame count.
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
        try:
            for _ in gen:
                pass
        finally:
            gen.close()
            listing.unlink(missing_ok=True)
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise RuntimeError(f"ffmpeg did not write {tmp} while joining {len(paths)} segments")
        try:
            frames = mp4_frame_count(tmp)
        except ValueError as e:
            raise RuntimeError(f"the joined file is not a complete video: {e}") from None
        if expected_frames is not None and frames != expected_frames:
            raise RuntimeError(f"the joined file has {frames} frames, expected {expected_frames}")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    logger.info("joined %d segments into %s", len(paths), out)
    return out


# ----- checking an mp4 without decoding it ------------------------------------------------

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}


def _boxes(data: bytes | memoryview, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """ISO-BMFF boxes in ``data[start:end]``: yields (type, payload start, box end)."""
    pos = start
    while pos + 8 <= end:
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = bytes(data[pos + 4 : pos + 8])
        head = 8
        if size == 1:
            if pos + 16 > end:
                raise ValueError("truncated box header")
            size, head = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            raise ValueError(f"box {kind!r} runs past its parent")
        yield kind, pos + head, pos + size
        pos += size


def _video_track_samples(moov: bytes) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """(sample sizes, chunk offsets, stsc runs) of the first video track in a ``moov`` box."""

    def walk(start: int, end: int, found: dict[bytes, tuple[int, int]]) -> None:
        for kind, a, b in _boxes(moov, start, end):
            if kind in _CONTAINERS:
                walk(a, b, found)
            elif kind in (b"hdlr", b"stsz", b"stco", b"co64", b"stsc"):
                found.setdefault(kind, (a, b))

    for kind, a, b in _boxes(moov, 0, len(moov)):
        if kind != b"trak":
            continue
        found: dict[bytes, tuple[int, int]] = {}
        walk(a, b, found)
        hdlr = found.get(b"hdlr")
        if hdlr is None or moov[hdlr[0] + 8 : hdlr[0] + 12] != b"vide":
            continue
        if b"stsz" not in found or b"stsc" not in found:
            raise ValueError("the video track has no sample table")
        s = found[b"stsz"][0]
        fixed = int.from_bytes(moov[s + 4 : s + 8], "big")
        count = int.from_bytes(moov[s + 8 : s + 12], "big")
        if fixed:
            sizes = [fixed] * count
        else:
            sizes = np.frombuffer(moov, dtype=">u4", count=count, offset=s + 12).tolist()
        if b"stco" in found:
            c, width = found[b"stco"][0], 4
        elif b"co64" in found:
            c, width = found[b"co64"][0], 8
        else:
            raise ValueError("the video track has no chunk offsets")
        n = int.from_bytes(moov[c + 4 : c + 8], "big")
        dt = ">u4" if width == 4 else ">u8"
        offsets = np.frombuffer(moov, dtype=dt, count=n, offset=c + 8).tolist()
        t = found[b"stsc"][0]
        runs_n = int.from_bytes(moov[t + 4 : t + 8], "big")
        table = np.frombuffer(moov, dtype=">u4", count=3 * runs_n, offset=t + 8).reshape(-1, 3)
        runs = [(int(r[0]), int(r[1])) for r in table]
        return sizes, offsets, runs
    raise ValueError("no video track")


def _read_moov(path: Path) -> bytes:
    """The payload of the top-level ``moov`` box of an mp4 (ValueError when there is none or a
    top-level box runs past the end of the file)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        moov = None
        pos = 0
        while pos + 8 <= size:
            f.seek(pos)
            head = f.read(16)
            box = int.from_bytes(head[:4], "big")
            kind = head[4:8]
            if box == 1:
                box = int.from_bytes(head[8:16], "big")
            elif box == 0:
                box = size - pos
            if box < 8 or pos + box > size:
                raise ValueError(f"{path.name}: box {kind!r} at byte {pos} runs past the end")
            if kind == b"moov":
                f.seek(pos)
                data = f.read(box)
                start = 16 if int.from_bytes(data[:4], "big") == 1 else 8
                moov = data[start:]
            pos += box
    if moov is None:
        raise ValueError(f"{path.name}: no moov box (the file is incomplete or not an mp4)")
    return moov


def mp4_frame_count(path: str | Path) -> int:
    """Frames of the video track of an mp4, read from its sample tables (no decoding).

    Also checks that every frame's bytes lie inside the file, so a truncated or partly
    written file is caught (the sample tables of a stream copy promise frames the file no
    longer holds).

    Raises:
        ValueError: not an mp4, no ``moov`` box (a file cut off before ffmpeg finished), no
            video track, or frames past the end of the file.
    """
    path = Path(path)
    size = path.stat().st_size
    moov = _read_moov(path)
    sizes, offsets, runs = _video_track_samples(moov)
    sample = 0
    for i, offset in enumerate(offsets):
        chunk = i + 1
        per = 0
        for first, count in runs:
            if first <= chunk:
                per = count
            else:
                break
        end = offset + sum(sizes[sample : sample + per])
        if end > size:
            raise ValueError(
                f"{path.name}: frame data up to byte {end} but the file has {size} bytes "
                "(truncated)"
            )
        sample += per
    if sample != len(sizes):
        raise ValueError(f"{path.name}: chunk table covers {sample} of {len(sizes)} frames")
    return len(sizes)


def mp4_track_seconds(path: str | Path) -> dict[str, float]:
    """Duration in seconds of the first track of each kind of an mp4, from the track headers
    (``mdhd`` duration / timescale; no decoding): ``{"vide": 6.48, "soun": 6.5}``.

    An AAC track's header duration includes the encoder's priming samples and the padding of
    its last frame (a few tens of milliseconds more than what plays).

    Raises:
        ValueError: not an mp4 or no ``moov`` box.
    """
    moov = _read_moov(Path(path))
    out: dict[str, float] = {}

    def walk(data_start: int, end: int, found: dict[bytes, tuple[int, int]]) -> None:
        for kind, a, b in _boxes(moov, data_start, end):
            if kind in (b"mdia",):
                walk(a, b, found)
            elif kind in (b"hdlr", b"mdhd"):
                found.setdefault(kind, (a, b))

    for kind, a, b in _boxes(moov, 0, len(moov)):
        if kind != b"trak":
            continue
        found: dict[bytes, tuple[int, int]] = {}
        walk(a, b, found)
        if b"hdlr" not in found or b"mdhd" not in found:
            continue
        handler = moov[found[b"hdlr"][0] + 8 : found[b"hdlr"][0] + 12].decode("latin-1")
        m = found[b"mdhd"][0]
        if moov[m] == 1:  # version 1: 64-bit times
            scale = int.from_bytes(moov[m + 20 : m + 24], "big")
            duration = int.from_bytes(moov[m + 24 : m + 32], "big")
        else:
            scale = int.from_bytes(moov[m + 12 : m + 16], "big")
            duration = int.from_bytes(moov[m + 16 : m + 20], "big")
        if scale and handler not in out:
            out[handler] = duration / scale
    return out


# ----- what an mp4's video track is made of (for joining by stream copy) -------------------


@dataclass(frozen=True)
class Mp4VideoTrack:
    """The facts of an mp4's first video track that decide whether it can be joined to our
    segments by stream copy (read from the ``moov`` tables, no decoding).

    Attributes:
        codec: the sample entry type (``avc1`` for H.264).
        width, height: the coded picture size of the sample entry.
        frames: number of samples (frames).
        timescale: media time units per second (``mdhd``).
        deltas: the distinct sample durations in ``stts`` (one value: constant frame rate).
        decoder_config: the ``avcC`` box (SPS + PPS): H.264 streams with the same one decode
            with the same parameters; empty when the entry has none.
        edit_media_time: the first edit's media time (``elst``; 0 without an edit list).
        edits: number of edit list entries.
        has_audio: the file also holds an audio track.
    """

    codec: str
    width: int
    height: int
    frames: int
    timescale: int
    deltas: tuple[int, ...]
    decoder_config: bytes
    edit_media_time: int
    edits: int
    has_audio: bool

    @property
    def fps(self) -> float | None:
        """The constant frame rate, or None when the frame durations vary."""
        if len(self.deltas) != 1 or self.deltas[0] == 0:
            return None
        return self.timescale / self.deltas[0]


def _u32(data: bytes | memoryview, pos: int) -> int:
    return int.from_bytes(data[pos : pos + 4], "big")


def mp4_video_track(path: str | Path) -> Mp4VideoTrack:
    """Read the first video track's codec, size, timing and decoder configuration.

    Raises:
        ValueError: not an mp4 / no ``moov`` box / no video track, or a damaged table.
    """
    path = Path(path)
    moov = _read_moov(path)
    tracks: list[dict[bytes, tuple[int, int]]] = []
    nested = {b"trak", b"mdia", b"minf", b"stbl", b"edts"}

    def walk(start: int, end: int, found: dict[bytes, tuple[int, int]]) -> None:
        for kind, a, b in _boxes(moov, start, end):
            if kind in nested:
                walk(a, b, found)
            else:
                found.setdefault(kind, (a, b))

    for kind, a, b in _boxes(moov, 0, len(moov)):
        if kind == b"trak":
            found: dict[bytes, tuple[int, int]] = {}
            walk(a, b, found)
            tracks.append(found)

    def handler(t: dict[bytes, tuple[int, int]]) -> bytes:
        h = t.get(b"hdlr")
        return moov[h[0] + 8 : h[0] + 12] if h else b""

    video = [t for t in tracks if handler(t) == b"vide"]
    if not video:
        raise ValueError(f"{path.name}: no video track")
    t = video[0]
    for need in (b"mdhd", b"stsd", b"stts", b"stsz"):
        if need not in t:
            raise ValueError(f"{path.name}: the video track has no {need.decode()} table")
    m = t[b"mdhd"][0]
    timescale = _u32(moov, m + 20) if moov[m] == 1 else _u32(moov, m + 12)
    s = t[b"stsd"][0]
    entry = s + 8  # version/flags, entry count
    codec = bytes(moov[entry + 4 : entry + 8]).decode("latin-1")
    body = entry + 8  # the visual sample entry's fields
    width = int.from_bytes(moov[body + 24 : body + 26], "big")
    height = int.from_bytes(moov[body + 26 : body + 28], "big")
    config = b""
    for kind, a, b in _boxes(moov, body + 78, entry + _u32(moov, entry)):
        if kind == b"avcC":
            config = bytes(moov[a - 8 : b])
            break
    st = t[b"stts"][0]
    runs = _u32(moov, st + 4)
    table = np.frombuffer(moov, dtype=">u4", count=2 * runs, offset=st + 8).reshape(-1, 2)
    deltas = tuple(sorted({int(d) for c, d in table if c}))
    frames = _u32(moov, t[b"stsz"][0] + 8)
    edit_time, edits = 0, 0
    if b"elst" in t:
        e = t[b"elst"][0]
        edits = _u32(moov, e + 4)
        if edits:
            if moov[e] == 1:
                edit_time = int.from_bytes(moov[e + 16 : e + 24], "big", signed=True)
            else:
                edit_time = int.from_bytes(moov[e + 12 : e + 16], "big", signed=True)
    return Mp4VideoTrack(
        codec=codec,
        width=width,
        height=height,
        frames=frames,
        timescale=timescale,
        deltas=deltas,
        decoder_config=config,
        edit_media_time=edit_time,
        edits=edits,
        has_audio=any(handler(x) == b"soun" for x in tracks),
    )


def stream_copy_problem(source: Mp4VideoTrack, ours: Mp4VideoTrack) -> str | None:
    """Why ``source`` cannot be joined to segments like ``ours`` by stream copy, or None.

    Both must be H.264 with the same size, the same constant frame rate, the same decoder
    configuration (SPS/PPS: profile, level, frame-rate timing, entropy coding) and no edit
    list that hides frames.
    """
    if source.codec != ours.codec:
        return f"its codec is {source.codec!r}, the new clips are {ours.codec!r} (H.264)"
    if (source.width, source.height) != (ours.width, ours.height):
        return f"it is {source.width}x{source.height}, the new clips are {ours.width}x{ours.height}"
    if source.fps is None:
        return "its frame rate is not constant"
    if ours.fps is None or abs(source.fps - ours.fps) > 1e-6 * ours.fps:
        return f"it plays at {source.fps:g} fps, the new clips at {ours.fps:g} fps"
    if source.edits > 1 or source.edit_media_time != ours.edit_media_time:
        return "its edit list shifts or hides frames"
    if source.decoder_config != ours.decoder_config:
        return (
            "its H.264 parameters (profile, level or encoder settings) differ from the new clips'"
        )
    return None


def probe_video(path: str | Path) -> dict[str, Any]:
    """ffmpeg's view of a video file without decoding it: ``size`` (w, h), ``fps``, ``codec``,
    ``duration`` (imageio-ffmpeg's metadata).

    Raises:
        OSError / RuntimeError: ffmpeg cannot open it as a video.
    """
    ff = _ffmpeg()
    gen = ff.read_frames(str(path), pix_fmt="rgb24")
    try:
        return dict(next(gen))
    finally:
        gen.close()
