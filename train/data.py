"""Training videos: listing a dataset folder, reading clips, augmenting one training sample.

Two dataset layouts (mixable, searched recursively):

* official: folders holding a CSV with columns ``Filename`` and ``Video Description`` next to
  the videos it names (``data/toy_train/svi-film-shot/<category>/<category>.csv``). Every
  file a CSV names must exist. A video in such a folder that the CSV does not name gets the
  official fallback caption ``"A video from <folder> category"``.
* plain: a folder of videos with same-name ``.txt`` captions (``a.mp4`` + ``a.txt``); a video
  without caption uses ``TrainConfig.default_caption`` (a warning says how many).

One sample (official ``train_svi.py``): ``num_frames`` consecutive frames from a random start
in ``[0, total - num_frames - 5]`` (a shorter video repeats its last frame), one random crop
for the whole clip to the target aspect, bilinear resize to ``height x width``; motion frames
(m > 1: the first m frames with probability ``p_motion``, else frame 0) and the padding frame
(``random_frame``: a frame of the clip drawn uniformly; ``zeros``: none). The talk and dance
presets add: a centred square crop of landscape frames first (``center_square``), the whole
frame stretched instead of the random crop (``resize="stretch"``), and the pose frames of the
same frame indices, fitted like the frames (:attr:`VideoItem.pose`). Their dataset layouts are
listed by :mod:`train.talk` and :mod:`train.dance`.

Frames are uint8 ``[F, H, W, 3]`` (RGB); pixels ``[1, 3, F, H, W]`` float32 in [-1, 1].
"""

from __future__ import annotations

import csv
import random
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from svi_core.errors import SVIError
from svi_core.log import logger

from .config import TrainConfig

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
CSV_FILENAME = "Filename"
CSV_CAPTION = "Video Description"


class VideoReadError(SVIError):
    """A video file cannot be decoded (skipped with a warning during training)."""


@dataclass(frozen=True)
class VideoItem:
    """One training video and its caption.

    audio: where its speech is decoded from (talk: the video itself or a sound file beside it).
    audio_features: precomputed wav2vec2 features (talk, a safetensors file) instead of audio.
    pose: its skeleton video, frame i = the pose of video frame i (dance).
    """

    path: Path
    caption: str
    audio: Path | None = None
    audio_features: Path | None = None
    pose: Path | None = None


def list_videos(
    dataset: str | Path, default_caption: str = "", warn_uncaptioned: bool = True
) -> list[VideoItem]:
    """Every video under ``dataset`` with its caption, sorted by path.

    Raises SVIError for a missing folder, a folder with no videos, a CSV without the
    ``Filename`` / ``Video Description`` columns, or a CSV naming files that do not exist.
    """
    root = Path(dataset)
    if not str(dataset) or not root.is_dir():
        raise SVIError(
            f"dataset folder '{dataset}' does not exist; set `dataset` to a folder of videos "
            "(official layout: sub-folders with a CSV of Filename, Video Description)"
        )
    csv_captions: dict[Path, str] = {}
    csv_dirs: set[Path] = set()
    for csv_path in sorted(root.rglob("*.csv")):
        captions = _read_csv(csv_path)
        csv_dirs.add(csv_path.parent)
        missing = [name for name in captions if not (csv_path.parent / name).is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (
                f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
            )
            raise SVIError(
                f"dataset CSV '{csv_path}' names {len(missing)} file(s) that do not exist in "
                f"'{csv_path.parent}': {shown}. Fix the Filename column or add the videos."
            )
        for name, caption in captions.items():
            csv_captions[(csv_path.parent / name).resolve()] = caption
    items: list[VideoItem] = []
    uncaptioned = 0
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in VIDEO_EXTENSIONS:
            continue
        caption = csv_captions.get(path.resolve())
        if caption is None:
            txt = path.with_suffix(".txt")
            if txt.is_file():
                caption = txt.read_text(encoding="utf-8").strip()
            elif path.parent in csv_dirs:
                caption = f"A video from {path.parent.name} category"
            else:
                caption = default_caption
                uncaptioned += 1
        items.append(VideoItem(path=path, caption=caption))
    if not items:
        raise SVIError(
            f"dataset folder '{root}' holds no videos ({', '.join(VIDEO_EXTENSIONS)}); add "
            "videos with a CSV (Filename, Video Description) or same-name .txt captions"
        )
    if uncaptioned and warn_uncaptioned:
        logger.warning(
            "%d video(s) in '%s' have no caption (.txt or CSV); using default_caption %r",
            uncaptioned,
            root,
            default_caption,
        )
    return items


def _read_csv(path: Path) -> dict[str, str]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if CSV_FILENAME not in fields or CSV_CAPTION not in fields:
            raise SVIError(
                f"dataset CSV '{path}' has columns {fields}; expected '{CSV_FILENAME}' and "
                f"'{CSV_CAPTION}' (the official layout)"
            )
        return {row[CSV_FILENAME]: row[CSV_CAPTION] or "" for row in reader if row[CSV_FILENAME]}


def read_clip(path: Path, num_frames: int, rng: random.Random) -> np.ndarray:
    """``num_frames`` consecutive RGB frames, uint8 ``[F, h, w, 3]`` at the file's size.

    The start is uniform in ``[0, total - num_frames - 5]`` (official), with ``total``
    estimated from the container's duration x fps; the file is streamed, keeping only the
    last ``num_frames`` frames. A video shorter than ``num_frames`` repeats its last frame.
    Raises VideoReadError when the file cannot be decoded.
    """
    return read_clip_at(path, num_frames, rng)[0]


def read_clip_at(path: Path, num_frames: int, rng: random.Random) -> tuple[np.ndarray, int, int]:
    """:func:`read_clip` plus where the clip is: ``(frames, start, real)`` with ``start`` the
    index of its first frame in the file and ``real`` how many frames are the file's own (the
    rest repeat the last one)."""
    import imageio_ffmpeg

    start = 0
    try:
        gen = imageio_ffmpeg.read_frames(str(path))
        meta = next(gen)
        w, h = (int(v) for v in meta["size"])
        total = int(round(float(meta.get("duration") or 0) * float(meta.get("fps") or 0)))
        start = rng.randint(0, max(0, total - num_frames - 5)) if total > num_frames else 0
        window: deque[np.ndarray] = deque(maxlen=num_frames)
        for i, raw in enumerate(gen):
            window.append(np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3))
            if i + 1 >= start + num_frames:
                break
        gen.close()
    except (OSError, RuntimeError, ValueError, StopIteration, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise VideoReadError(f"cannot read video '{path}': {first}") from e
    if not window:
        raise VideoReadError(f"video '{path}' has no frames")
    frames = list(window)
    real = len(frames)
    first = i + 1 - real  # the index of window[0] in the file (the last frame read was i)
    while len(frames) < num_frames:
        frames.append(frames[-1])
    return np.stack(frames), first, real


def read_frames_range(path: Path, start: int, count: int) -> np.ndarray:
    """Frames ``start .. start + count - 1`` of a video, uint8 ``[k, h, w, 3]`` (k < count when
    the file ends first; k = 0 gives ``[0, h, w, 3]``). Raises VideoReadError."""
    import imageio_ffmpeg

    frames: list[np.ndarray] = []
    try:
        gen = imageio_ffmpeg.read_frames(str(path))
        meta = next(gen)
        w, h = (int(v) for v in meta["size"])
        for i, raw in enumerate(gen):
            if i >= start:
                frames.append(np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3))
            if i + 1 >= start + count:
                break
        gen.close()
    except (OSError, RuntimeError, ValueError, StopIteration, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise VideoReadError(f"cannot read video '{path}': {first}") from e
    if not frames:
        return np.zeros((0, h, w, 3), dtype=np.uint8)
    return np.stack(frames)


def center_square(frames: np.ndarray) -> np.ndarray:
    """Landscape frames ``[F, h, w, 3]`` (w > h) cropped to the centred ``h x h`` square; other
    frames unchanged. The official talk preprocessing (prepare_video_audio.py:168-171) keeps
    ``[margin : w - margin]`` with ``margin = (w - h) // 2``: one column wider when w - h is odd
    and an empty frame when w = h + 1; this keeps exactly h columns from the same start."""
    h, w = frames.shape[1], frames.shape[2]
    if w <= h:
        return frames
    x = (w - h) // 2
    return frames[:, :, x : x + h]


def crop_box(
    width: int, height: int, target_h: int, target_w: int, jitter: int, rng: random.Random
) -> tuple[int, int, int, int]:
    """Random crop ``(x, y, crop_w, crop_h)`` of a ``width x height`` frame with the target
    aspect ``target_h / target_w`` (official): the limiting side is drawn uniformly in
    ``[side - side // jitter, side]``, the other follows from the aspect, the position is
    uniform."""
    aspect = target_h / target_w
    if width * aspect <= height:
        crop_w = rng.randint(width - width // jitter, width)
        crop_h = int(crop_w * aspect)
    else:
        crop_h = rng.randint(height - height // jitter, height)
        crop_w = int(crop_h / aspect)
    crop_w, crop_h = max(1, min(crop_w, width)), max(1, min(crop_h, height))
    x = rng.randint(0, width - crop_w)
    y = rng.randint(0, height - crop_h)
    return x, y, crop_w, crop_h


def crop_resize(
    frames: np.ndarray, box: tuple[int, int, int, int], height: int, width: int
) -> torch.Tensor:
    """Crop every frame of uint8 ``[F, h, w, 3]`` to ``box`` and resize (PIL bilinear, as the
    official torchvision-on-PIL resize) to uint8 ``[F, height, width, 3]``."""
    from PIL import Image

    x, y, cw, ch = box
    out = np.empty((frames.shape[0], height, width, 3), dtype=np.uint8)
    for i, f in enumerate(frames):
        img = Image.fromarray(np.ascontiguousarray(f[y : y + ch, x : x + cw]))
        out[i] = np.asarray(img.resize((width, height), Image.BILINEAR))
    return torch.from_numpy(out)


@dataclass(frozen=True)
class Sample:
    """One augmented training sample (before encoding).

    frames: uint8 ``[F, H, W, 3]``, the clip the model learns to produce.
    motion: uint8 ``[k, H, W, 3]`` (k = m or 1), the conditioning motion frames.
    padding_frame: uint8 ``[H, W, 3]`` for ``random_frame`` padding, None for zeros.
    """

    video: str
    draw: int
    caption: str
    frames: torch.Tensor
    motion: torch.Tensor
    padding_frame: torch.Tensor | None
    start: int = 0
    pose: torch.Tensor | None = None


def draw_sample(item: VideoItem, config: TrainConfig, draw: int, rng: random.Random) -> Sample:
    """Read and augment one sample of ``item`` (raises VideoReadError if unreadable).

    ``start`` is the clip's first frame in the file (talk: where its audio window starts).
    With ``item.pose``, ``pose`` holds the skeleton frames of the same indices, uint8
    ``[F, H, W, 3]``, cropped / resized like the frames (official dance: stretched bilinearly,
    train_svi_dance.py:606-616); past the end of the pose video the frames are black and past
    the end of the video the last pose repeats, as the official loader does (:447-465, 571-575).
    """
    raw, start, real = read_clip_at(item.path, config.num_frames, rng)
    if config.center_square:
        raw = center_square(raw)
    if config.resize == "stretch":
        box = (0, 0, raw.shape[2], raw.shape[1])
    else:
        box = crop_box(
            raw.shape[2], raw.shape[1], config.height, config.width, config.crop_jitter, rng
        )
    frames = crop_resize(raw, box, config.height, config.width)
    pose = None
    if item.pose is not None:
        pose = _pose_frames(item.pose, start, real, raw.shape[1:3], config, box)
    m = config.num_motion_frames
    k = m if m > 1 and rng.random() < config.p_motion else 1
    pad = None
    if config.padding == "random_frame":
        pad = frames[rng.randint(0, frames.shape[0] - 1)].clone()
    return Sample(
        video=str(item.path),
        draw=draw,
        caption=config.fixed_caption or item.caption,
        frames=frames,
        motion=frames[:k].clone(),
        padding_frame=pad,
        start=start,
        pose=pose,
    )


def _pose_frames(
    path: Path,
    start: int,
    real: int,
    size: tuple[int, int],
    config: TrainConfig,
    box: tuple[int, int, int, int],
) -> torch.Tensor:
    """The pose frames of video frames ``start .. start + real - 1``, fitted like the frames
    (a pose video of another size gets the crop box scaled to it; the official loader resizes
    both to the training size independently)."""
    raw = read_frames_range(path, start, real)
    if config.center_square:
        raw = center_square(raw)
    h, w = size
    ph, pw = (raw.shape[1], raw.shape[2]) if raw.shape[0] else (h, w)
    if raw.shape[0] < real:  # the pose video ends first: black frames (official dummy pose)
        black = np.zeros((real - raw.shape[0], ph, pw, 3), dtype=np.uint8)
        raw = np.concatenate([raw, black])
    raw = np.concatenate([raw, np.repeat(raw[-1:], config.num_frames - real, axis=0)])
    if (ph, pw) != (h, w):
        x, y, cw, ch = box
        box = (x * pw // w, y * ph // h, max(1, cw * pw // w), max(1, ch * ph // h))
    return crop_resize(raw, box, config.height, config.width)


def conditioning_pixels(sample: Sample, config: TrainConfig) -> torch.Tensor:
    """The conditioning video ``V = [motion, padding]`` ``[1, 3, F, H, W]`` in [-1, 1], built by
    the inference builder (:func:`svi_core.conditioning.conditioning_video`): ``random_frame``
    padding goes in as the 'reference' that pads, ``zeros`` pads with mid-grey zeros."""
    from svi_core.conditioning import conditioning_video
    from svi_core.modes import get_mode

    mode = get_mode(
        _CONDITIONING_MODE.get(config.mode, config.mode),
        frames=config.num_frames,
        padding="reference" if config.padding == "random_frame" else "zeros",
    )
    pad = sample.padding_frame if sample.padding_frame is not None else sample.frames[0]
    return conditioning_video(mode, pad, sample.motion)


_CONDITIONING_MODE = {"talk": "shot", "dance": "shot"}
"""Talk and dance build y exactly like shot (``encode_images_adaptive`` with one motion frame and
``ref_pad_num -1``: train_svi_talk.py:954-956, train_svi_dance.py:1029-1036)."""
