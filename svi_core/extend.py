"""Extend any video: continue an existing video file (or frames) instead of starting from an image.

The video plays the part of the clips before clip 0:

* what clip 0 continues from comes from the video's end. Pixel carry (SVI 1.0 / 2.0): its
  last m frames, stretched to the run size as the reference image is (PIL bicubic, never
  cropped) and kept as uint8, exactly what the loop stores for a generated clip. Latent carry
  (SVI 2.0 Pro): the official loop carries ``prev_last_latent[:, -k:]``, the last k frames of
  the previous clip's denoised latent (``inference_svi_2.0_pro.py`` passes
  ``video_clip_dict["prev_last_latent"]``; ``wan_video_svi_pro.py`` keeps
  ``inputs_shared["latents"]`` and slices ``[:, -num_motion_latent:]``, branch svi_wan22).
  A video has no latent, so its last ``4k + 1`` frames are encoded in one causal encode
  (``k + 1`` latent frames: the first encodes one frame alone, each later one four) and the
  last k of them are the carry (:func:`latent_carry_frames`). Encoding a whole clip's worth
  of frames instead (so the carried frames sit where a generated clip's last latent frames
  sit) was measured on the toy VAE and came out no closer to the generated latent (relative
  error 0.266 against 0.252 for ``4k + 1`` frames, README "Extend any video"), so the cheaper
  encode is used.
* clip 0 then drops the frames it re-renders from that carry (like any later clip), and the
  video is kept whole: the output is the original followed by the new clips.
* the original becomes the run's prefix segment (:meth:`svi_core.run_store.RunStore.prefix`):
  copied byte for byte when its H.264 stream can be joined to the new clips by stream copy
  (same size, frame rate and decoder configuration, checked in the mp4 tables), otherwise
  re-encoded once with the clips' encoder settings (logged).
* the anchor / reference defaults to the video's first frame (or a given image).

The video's content fingerprint (SHA-256 of the file, or of the frames) is part of the run
identity, so a resume needs the same video and a different one is refused.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backend import Backend
from .conditioning import Carry, frames_to_pixels, reference_size
from .errors import SVIError
from .log import logger
from .modes import ModeConfig
from .run_store import sha256_file, sha256_tensor
from .video_io import (
    mp4_video_track,
    probe_video,
    read_video_frames,
    stream_copy_problem,
    tmp_path_for,
    write_frames_stream,
    write_segment,
)


def min_frames(mode: ModeConfig) -> int:
    """The fewest frames a video must have to be continued in ``mode``: the m motion frames
    (pixel carry) or ``4k + 1`` frames to encode k carried latent frames (latent carry)."""
    if mode.carry == "latent":
        return 4 * mode.motion_latents + 1
    return mode.motion_frames


def latent_carry_frames(mode: ModeConfig, available: int) -> int:
    """How many of a video's last frames are encoded for the latent carry: ``4k + 1``
    (k = ``mode.motion_latents``)."""
    need = min_frames(mode)
    if available < need:
        raise ValueError(f"{available} frames, fewer than {need}")
    return need


def end_frames_needed(mode: ModeConfig) -> int:
    """How many of the video's last frames the carry reads."""
    return min_frames(mode)


def encode_latent_carry(backend: Backend, mode: ModeConfig, frames: torch.Tensor) -> torch.Tensor:
    """Latent carry from decoded frames: one causal encode of the last ``4k + 1`` of uint8
    ``frames`` ``[N, H, W, 3]`` (:func:`latent_carry_frames`); returns the NORMALISED latent
    ``[1, 16, k + 1, H/8, W/8]`` (the loop carries its last ``motion_latents`` frames)."""
    n = latent_carry_frames(mode, int(frames.shape[0]))
    return backend.encode(frames_to_pixels(frames[-n:])).float()


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``[h, w, 3]`` -> uint8 ``[H, W, 3]`` at ``size = (W, H)``: stretched with PIL
    bicubic, never cropped (as the reference image is); unchanged when already that size."""
    if (frame.shape[1], frame.shape[0]) == tuple(size):
        return np.ascontiguousarray(frame)
    from PIL import Image

    return np.array(Image.fromarray(frame).resize(tuple(size), Image.BICUBIC), dtype=np.uint8)


@dataclass(frozen=True)
class VideoStart:
    """A video to continue, checked and read at its ends (see the module docstring).

    Attributes:
        name: what error messages and the log call it (the file path, or "the IMAGE input").
        fingerprint: SHA-256 of the file's bytes (or of the frames): the run identity.
        frames: the video's frame count (decoded).
        fps: its frame rate (None when unknown, e.g. IMAGE frames).
        source_size: its frame size ``(w, h)``.
        size: the run's size ``(W, H)``: first and last frames are at this size.
        first: the first frame, uint8 ``[H, W, 3]`` (the default anchor).
        last: the last frames the carry needs, uint8 ``[n, H, W, 3]``.
        path: the file (None for frames given in memory).
        has_audio: the file has an audio track (not carried into the output).
    """

    name: str
    fingerprint: str
    frames: int
    fps: float | None
    source_size: tuple[int, int]
    size: tuple[int, int]
    first: torch.Tensor
    last: torch.Tensor
    path: Path | None = None
    has_audio: bool = False
    _memory: torch.Tensor | None = field(default=None, repr=False)

    def check(self, mode: ModeConfig, width: int, height: int) -> None:
        """Refuse a video that cannot start a run of ``mode`` at ``width x height``."""
        if self.size != (width, height):
            raise SVIError(
                f"{self.name}: read at {self.size[0]}x{self.size[1]}, the run is "
                f"{width}x{height}; load the video for the run's size"
            )
        need = min_frames(mode)
        if self.frames < need:
            raise SVIError(
                f"{self.name} has {self.frames} frame(s); mode {mode.name!r} continues from "
                f"{need} ({'4k + 1 frames for the carried latent' if mode.carry == 'latent' else 'the motion frames'}). "
                "Use a longer video"
            )
        o = mode.overlap_frames
        if mode.stitch == "drop_tail" and mode.frames - 2 * o < 1:
            raise SVIError(
                f"{self.name}: a {mode.frames}-frame clip that continues a video drops the {o} "
                f"frames it re-renders and its {o}-frame tail, which leaves no frame; use at "
                f"least {2 * o + 1} frames per clip (81 official)"
            )
        have = int(self.last.shape[0])
        if have < min(end_frames_needed(mode), self.frames):
            raise SVIError(
                f"{self.name}: {have} end frames were read, mode {mode.name!r} needs "
                f"{min(end_frames_needed(mode), self.frames)}; load it again for this mode"
            )

    def carry(self, backend: Backend, mode: ModeConfig) -> Carry:
        """What clip 0 continues from (see the module docstring)."""
        if mode.carry == "latent":
            return Carry(latent=encode_latent_carry(backend, mode, self.last).cpu())
        return Carry(motion_frames=self.last[-mode.motion_frames :].clone())

    def resized_frames(self) -> Iterator[np.ndarray]:
        """Every frame at the run size, uint8 ``[H, W, 3]``, one at a time (for re-encoding)."""
        if self._memory is not None:
            for frame in self._memory:
                yield resize_frame(frame.numpy(), self.size)
            return
        assert self.path is not None
        for frame in read_video_frames(self.path):
            yield resize_frame(frame, self.size)

    def write_prefix(self, target: Path, fps: float, crf: int, probe_dir: Path) -> bool:
        """Write the video as the run's prefix segment ``target`` (atomically).

        Copied byte for byte when it is an mp4 whose H.264 stream joins the new clips by
        stream copy (:func:`svi_core.video_io.stream_copy_problem` against a one-frame probe
        encoded with the clips' settings in ``probe_dir``), otherwise re-encoded once. Returns
        whether it was copied.
        """
        problem = self._copy_problem(fps, crf, probe_dir)
        if problem is None:
            tmp = tmp_path_for(target)
            shutil.copyfile(self.path, tmp)  # type: ignore[arg-type]
            tmp.replace(target)
            logger.info("extend: %s joins the new clips by stream copy (unchanged)", self.name)
            if self.has_audio:
                logger.warning("extend: the audio track of %s is not carried over", self.name)
            return True
        logger.warning(
            "extend: %s cannot be joined by stream copy (%s); re-encoding it once at %dx%d, "
            "%g fps, crf %d",
            self.name,
            problem,
            self.size[0],
            self.size[1],
            fps,
            crf,
        )
        n = write_frames_stream(target, self.resized_frames(), *self.size, fps, crf)
        if n != self.frames:
            raise SVIError(f"{self.name}: re-encoding read {n} frames, expected {self.frames}")
        return False

    def _copy_problem(self, fps: float, crf: int, probe_dir: Path) -> str | None:
        if self.path is None:
            return "the frames came as images, not a file"
        if self.path.suffix.lower() not in (".mp4", ".m4v", ".mov"):
            return f"it is a {self.path.suffix or 'suffix-less'} file, not an mp4"
        try:
            source = mp4_video_track(self.path)
        except (OSError, ValueError) as e:
            return f"its mp4 tables cannot be read ({e})"
        if source.frames != self.frames:
            return f"its tables list {source.frames} frames, {self.frames} decode"
        probe = probe_dir / ".svi-probe.mp4"
        try:
            write_segment(probe, np.zeros((1, self.size[1], self.size[0], 3), np.uint8), fps, crf)
            ours = mp4_video_track(probe)
        finally:
            probe.unlink(missing_ok=True)
        return stream_copy_problem(source, ours)


def _open_error(name: str, e: BaseException) -> SVIError:
    return SVIError(
        f"the video to extend {name} cannot be decoded ({e}); pass a video file ffmpeg can read "
        "(mp4, mov, webm, mkv, ...)"
    )


def load_video_start(
    path: str | Path, mode: ModeConfig, size: tuple[int, int] | None = None
) -> VideoStart:
    """Read a video file to continue: its first frame, its last frames, its frame count,
    frame rate and content fingerprint (decodes it once, one frame in memory at a time).

    ``size`` ``(W, H)``: the run size; default: the mode's rule applied to the video's size
    (as for a reference image of that size).

    Raises:
        SVIError: the file is missing, cannot be decoded, or is shorter than ``mode`` needs.
    """
    p = Path(path)
    name = str(p)
    if not p.is_file():
        raise SVIError(f"the video to extend {name} does not exist; pass an existing video file")
    try:
        meta = probe_video(p)
        w, h = (int(v) for v in meta["size"])
    except Exception as e:  # imageio-ffmpeg raises OSError / RuntimeError / StopIteration
        raise _open_error(name, e) from None
    target = tuple(size) if size is not None else reference_size(mode, w, h)
    keep = max(1, end_frames_needed(mode))
    first: np.ndarray | None = None
    tail: list[np.ndarray] = []
    count = 0
    try:
        for frame in read_video_frames(p):
            if first is None:
                first = resize_frame(frame, target)
            tail.append(frame.copy())
            if len(tail) > keep:
                tail.pop(0)
            count += 1
    except Exception as e:
        raise _open_error(name, e) from None
    if first is None:
        raise SVIError(f"the video to extend {name} has no frames; pass a video with frames")
    has_audio = False
    try:
        has_audio = mp4_video_track(p).has_audio
    except (OSError, ValueError):
        pass
    fps = meta.get("fps")
    start = VideoStart(
        name=name,
        fingerprint=sha256_file(p),
        frames=count,
        fps=float(fps) if fps else None,
        source_size=(w, h),
        size=(int(target[0]), int(target[1])),
        first=torch.from_numpy(first.copy()),
        last=torch.from_numpy(np.stack([resize_frame(f, target) for f in tail])),
        path=p,
        has_audio=has_audio,
    )
    start.check(mode, *start.size)
    return start


def video_start_from_frames(
    frames: torch.Tensor,
    mode: ModeConfig,
    size: tuple[int, int],
    fps: float | None = None,
    name: str = "the video to extend",
) -> VideoStart:
    """A video given as uint8 frames ``[N, h, w, 3]`` (e.g. a ComfyUI IMAGE batch) to continue
    at ``size = (W, H)``. Its prefix segment is always encoded (there is no file to copy)."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise SVIError(
            f"{name}: expected uint8 frames [N, H, W, 3]; got {frames.dtype} {tuple(frames.shape)}"
        )
    if frames.shape[0] == 0:
        raise SVIError(f"{name} has no frames; connect a video with frames")
    frames = frames.detach().cpu().contiguous()
    keep = min(max(1, end_frames_needed(mode)), int(frames.shape[0]))
    start = VideoStart(
        name=name,
        fingerprint=sha256_tensor(frames),
        frames=int(frames.shape[0]),
        fps=fps,
        source_size=(int(frames.shape[2]), int(frames.shape[1])),
        size=(int(size[0]), int(size[1])),
        first=torch.from_numpy(resize_frame(frames[0].numpy(), size)),
        last=torch.from_numpy(np.stack([resize_frame(f.numpy(), size) for f in frames[-keep:]])),
        _memory=frames,
    )
    start.check(mode, *start.size)
    return start


def prefix_identity(start: VideoStart | None) -> dict[str, Any]:
    """The input fingerprints a video to continue adds to the run identity."""
    return {} if start is None else {"extend": start.fingerprint}
