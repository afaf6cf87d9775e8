"""SVI-Dance pose (skeleton) condition: pose frames, the pose window of clip k, the embedding.

Everything here follows the official ``test_svi_dance.py`` and
``diffsynth/pipelines/svi_video_dance.py`` (vita-epfl/Stable-Video-Infinity); the path:line of
each rule is in the docstring that implements it.

Layouts: pose frames are uint8 ``[N, H, W, 3]`` RGB at the GENERATION size (after
:func:`fit_pose_frame`); one clip's window is uint8 ``[F, H, W, 3]``; the embedding input is
float32 ``[1, 3, F + 3, H, W]`` in [0, 1] (NOT [-1, 1]); the embedding output ("pose tokens") is
``[1, dim, (F - 1) / 4 + 1, H / 16, W / 16]``, i.e. one vector per DiT patch token, added to the
patch tokens right after the DiT's patch embedding (see ``svi_core.standalone.pose`` and
``nodes.pose_patch``).

Colours: the official pose frames are drawn with the OpenPose colour list through OpenCV, i.e.
in BGR order (the neck->nose limb is red in RGB). Skeletons drawn in RGB (ComfyUI's SDPose
nodes, comfyui_controlnet_aux DWPose) need ``swap_rb=True`` to match what the model was
trained on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError, SVIError
from .log import logger

LoopPolicy = Literal["loop", "pingpong", "hold"]
"""How the pose sequence continues past its end. ``loop`` (official, test_svi_dance.py:285):
back to pose 0. ``pingpong``: play it backwards, then forwards again (no jump at the loop
point). ``hold``: keep the last pose."""

LOOP_POLICIES: tuple[str, ...] = ("loop", "pingpong", "hold")

POSE_KEY_MARKER = "dwpose_embedding."
"""Pose-embedding tensors in an SVI-Dance / UniAnimate file are ``dwpose_embedding.<i>.<p>``
(train_svi_dance.py:666 + 1290-1300; loaded by svi_video_dance.py:270-275 after the marker)."""

IGNORED_MODULE_MARKERS: tuple[str, ...] = (
    "randomref_embedding_pose.",
    "inpaint_embedding.",
    "learn_in_embedding.",
)
"""Other UniAnimate modules the official loader collects (model_manager.py:517) but the Dance
pipeline never uses; skipped with a log line."""

CONV_INDICES: tuple[int, ...] = (0, 2, 4, 6, 8, 10, 12)
"""Sequential indices of the seven Conv3d layers (odd indices are SiLU)."""

_CONV_SPECS: tuple[tuple[tuple[int, int, int], tuple[int, int, int], int], ...] = (
    ((3, 3, 3), (1, 1, 1), 1),
    ((3, 3, 3), (1, 1, 1), 1),
    ((3, 3, 3), (1, 1, 1), 1),
    ((3, 3, 3), (1, 2, 2), 1),
    ((3, 3, 3), (2, 2, 2), 1),
    ((3, 3, 3), (2, 2, 2), 1),
    ((1, 2, 2), (1, 2, 2), 0),
)
"""(kernel, stride, padding) of each conv, svi_video_dance.py:255-268 (= train_svi_dance.py:
666-679)."""

OFFICIAL_HIDDEN = 16
"""``concat_dim * 4`` with ``concat_dim = 4`` (svi_video_dance.py:254)."""

FIRST_FRAME_REPEAT = 3
"""The first pose frame is put 3 extra times in front (svi_video_dance.py:529), so F + 3 input
frames reduce by 4 in time to the (F - 1) / 4 + 1 latent frames."""


# --------------------------------------------------------------------------------------
# Frames: resize + pad to the generation size
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Letterbox:
    """Where a ``src_w x src_h`` pose frame lands in the ``width x height`` video.

    Attributes:
        new_w, new_h: the scaled size (nearest neighbour). left, top: black padding before it
            (right / bottom take the rest).
    """

    new_w: int
    new_h: int
    left: int
    top: int

    @property
    def exact(self) -> bool:
        """True when the frame fills the video (no padding)."""
        return self.left == 0 and self.top == 0


def letterbox(src_w: int, src_h: int, width: int, height: int) -> Letterbox:
    """The official fit of a pose frame into the video (utils/image_process.py:134-170).

    ``scale = min(height / src_h, width / src_w)`` (:140), ``new = int(src * scale)`` in
    Python floats (:143-144), centred: ``top = (height - new_h) // 2`` (:157-160).
    """
    if src_w < 1 or src_h < 1:
        raise SVIError(f"pose frame of size {src_w}x{src_h} is empty")
    scale = min(height / src_h, width / src_w)
    new_h = int(src_h * scale)
    new_w = int(src_w * scale)
    if new_h < 1 or new_w < 1:
        raise SVIError(
            f"pose frame {src_w}x{src_h} is too thin to fit a {width}x{height} video "
            f"(it would be {new_w}x{new_h}); use a pose video with a normal aspect ratio"
        )
    return Letterbox(new_w=new_w, new_h=new_h, left=(width - new_w) // 2, top=(height - new_h) // 2)


def _as_uint8_rgb(frame: object, what: str) -> torch.Tensor:
    """One pose frame as a uint8 ``[h, w, 3]`` tensor, or SVIError naming ``what``."""
    if isinstance(frame, np.ndarray):
        if frame.dtype != np.uint8:
            raise SVIError(
                f"{what} is a {frame.dtype} array; pose frames must be uint8 images "
                "[H, W, 3] (0..255). Convert the pose video to 8-bit RGB frames."
            )
        arr = np.ascontiguousarray(frame)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    elif isinstance(frame, torch.Tensor):
        if frame.dtype != torch.uint8:
            raise SVIError(
                f"{what} is a {frame.dtype} tensor; pose frames must be uint8 images "
                "[H, W, 3] (0..255). (ComfyUI IMAGE batches are converted by the node.)"
            )
        t = frame.detach().cpu()
    else:
        raise SVIError(
            f"{what} is a {type(frame).__name__}, not an image; pose frames must be uint8 "
            "arrays [H, W, 3] (a skeleton video's frames)"
        )
    if t.ndim == 2:
        raise SVIError(
            f"{what} is a single-channel image {tuple(t.shape)}; SVI-Dance needs the coloured "
            "skeleton (RGB) drawn by DWPose / OpenPose"
        )
    if t.ndim != 3 or t.shape[-1] not in (3, 4) or t.shape[0] < 1 or t.shape[1] < 1:
        raise SVIError(
            f"{what} has shape {tuple(t.shape)}; expected an RGB image [H, W, 3] "
            "(a skeleton video frame)"
        )
    return t[..., :3]


def fit_pose_frame(frame: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """One pose frame uint8 ``[h, w, 3]`` -> uint8 ``[height, width, 3]``, as the official code.

    Nearest-neighbour resize keeping the aspect (``F.interpolate(mode='nearest')`` on the uint8
    frame, utils/image_process.py:147-151), then centred black padding (:153-168). Called per
    frame (the official resizes the whole stack at once; nearest is per-frame identical).
    """
    h, w = int(frame.shape[0]), int(frame.shape[1])
    box = letterbox(w, h, width, height)
    x = frame.permute(2, 0, 1).unsqueeze(0)
    if (box.new_h, box.new_w) != (h, w):
        x = F.interpolate(x, size=(box.new_h, box.new_w), mode="nearest")
    if box.new_h != height or box.new_w != width:
        x = F.pad(
            x,
            (box.left, width - box.new_w - box.left, box.top, height - box.new_h - box.top),
            mode="constant",
            value=0,
        )
    return x[0].permute(1, 2, 0).contiguous()


def prepare_pose_frames(
    frames: Iterable[object],
    width: int,
    height: int,
    *,
    swap_rb: bool = False,
    source: str = "pose frames",
) -> torch.Tensor:
    """Pose frames (any size) -> uint8 ``[N, height, width, 3]`` at the generation size.

    Args:
        frames: uint8 ``[h, w, 3]`` (or ``[h, w, 4]``; alpha dropped) arrays or tensors.
        width, height: the video size (multiples of 16).
        swap_rb: swap the red and blue channels (skeletons drawn in RGB by ComfyUI's SDPose
            nodes or comfyui_controlnet_aux; the official palette is BGR-drawn).
        source: name used in messages (the file).

    Logs once when the pose aspect differs from the video's (it is letterboxed, not cropped or
    stretched, as test_svi_dance.py:215 does).

    Raises:
        SVIError: no frame, a frame that is not an 8-bit RGB image.
    """
    out: list[torch.Tensor] = []
    sizes: set[tuple[int, int]] = set()
    for i, frame in enumerate(frames):
        rgb = _as_uint8_rgb(frame, f"{source} frame {i}")
        h, w = int(rgb.shape[0]), int(rgb.shape[1])
        if (w, h) not in sizes:
            sizes.add((w, h))
            box = letterbox(w, h, width, height)
            if not box.exact:
                logger.info(
                    "%s: %dx%d frames do not have the video's aspect (%dx%d); scaled to %dx%d "
                    "(nearest) and padded with black (%d px left, %d px top), as the official "
                    "SVI-Dance code does",
                    source,
                    w,
                    h,
                    width,
                    height,
                    box.new_w,
                    box.new_h,
                    box.left,
                    box.top,
                )
        fitted = fit_pose_frame(rgb, width, height)
        if swap_rb:
            fitted = fitted.flip(-1).contiguous()
        out.append(fitted)
    if not out:
        raise SVIError(
            f"{source} has no frames; SVI-Dance needs a skeleton video of at least one frame"
        )
    return torch.stack(out)


# --------------------------------------------------------------------------------------
# The pose window of clip k
# --------------------------------------------------------------------------------------


def _stream_positions(clip: int, frames: int, motion_frames: int) -> list[int]:
    """Positions in the endless pose stream used by clip ``clip`` (before looping).

    test_svi_dance.py:226-227 + 282-288: clip 0 reads 0..F-1; then ``sampled_idx = F - 1``;
    clip k >= 1 = the last m positions of clip k-1 (the carried motion frame's pose) followed
    by F - m positions counted on from ``sampled_idx``.
    """
    f, m = frames, motion_frames
    if clip == 0:
        return list(range(f))

    def start(k: int) -> int:  # first NEW position of clip k >= 1
        return (f - 1) + (k - 1) * (f - m)

    if clip == 1:
        return list(range(f - m, f)) + list(range(start(1), start(1) + f - m))
    if m <= f - m:
        # clips >= 2: the carried positions are the end of clip k-1's NEW run, so contiguous
        return list(range(start(clip) - m, start(clip) + f - m))
    window = _stream_positions(1, f, m)
    for k in range(2, clip + 1):
        window = window[-m:] + list(range(start(k), start(k) + f - m))
    return window


def loop_index(position: int, num_poses: int, policy: LoopPolicy = "loop") -> int:
    """Stream position -> pose frame index for a pose video of ``num_poses`` frames."""
    if num_poses < 1:
        raise SVIError("the pose sequence is empty")
    if policy == "loop":
        return position % num_poses
    if policy == "hold":
        return min(position, num_poses - 1)
    if policy == "pingpong":
        if num_poses == 1:
            return 0
        period = 2 * (num_poses - 1)
        r = position % period
        return r if r < num_poses else period - r
    raise SVIError(f"pose loop policy {policy!r} must be one of {', '.join(LOOP_POLICIES)}")


def pose_window_indices(
    clip: int,
    num_poses: int,
    frames: int = 81,
    motion_frames: int = 1,
    policy: LoopPolicy = "loop",
) -> list[int]:
    """Indices into the pose frames for the ``frames`` frames of clip ``clip`` (0-based).

    Official (test_svi_dance.py:218-227, 281-288), F = ``frames``, m = ``motion_frames``:
    clip 0 = poses 0..F-1; clip k >= 1 = [the last m poses of clip k-1] + the next F - m poses,
    counted on from F - 1 (not F: clip 1 = [80, 80, 81, ..., 159] for F = 81, m = 1, so pose
    80 appears twice at the first seam; later clips continue seamlessly: clip 2 =
    [159, 160, ..., 239]). Past the end of the pose video the sequence loops (modulo, the
    official rule, also when it is shorter than one clip) or follows ``policy``.
    """
    if clip < 0:
        raise SVIError(f"clip index {clip} must be >= 0")
    if not 1 <= motion_frames < frames:
        raise SVIError(f"motion_frames={motion_frames} must be in [1, frames - 1={frames - 1}]")
    return [
        loop_index(p, num_poses, policy) for p in _stream_positions(clip, frames, motion_frames)
    ]


def clips_to_cover(num_poses: int, frames: int = 81, motion_frames: int = 1) -> int:
    """Fewest clips whose windows reach the last pose (the whole dance once, no loop)."""
    if num_poses < 1:
        raise SVIError("the pose sequence is empty")
    k = 0
    while _stream_positions(k, frames, motion_frames)[-1] < num_poses - 1:
        k += 1
    return k + 1


@dataclass(frozen=True)
class PoseSequence:
    """A skeleton video fitted to the generation size.

    Attributes:
        frames: uint8 ``[N, H, W, 3]`` RGB (official palette), already resized + padded.
        source: where it came from (for messages).
        policy: what happens past the last pose (``loop`` is official).
    """

    frames: torch.Tensor
    source: str = "pose frames"
    policy: LoopPolicy = "loop"

    def __post_init__(self) -> None:
        f = self.frames
        if not isinstance(f, torch.Tensor) or f.dtype != torch.uint8 or f.ndim != 4:
            raise SVIError(f"{self.source}: pose frames must be a uint8 tensor [N, H, W, 3]")
        if f.shape[0] < 1:
            raise SVIError(f"{self.source} has no frames")
        if f.shape[-1] != 3:
            raise SVIError(f"{self.source}: pose frames must be RGB [N, H, W, 3]")
        if self.policy not in LOOP_POLICIES:
            raise SVIError(
                f"pose loop policy {self.policy!r} must be one of {', '.join(LOOP_POLICIES)}"
            )

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the frames."""
        return int(self.frames.shape[2]), int(self.frames.shape[1])

    def window(self, clip: int, frames: int = 81, motion_frames: int = 1) -> torch.Tensor:
        """The pose frames of clip ``clip``: uint8 ``[frames, H, W, 3]``."""
        idx = pose_window_indices(clip, len(self), frames, motion_frames, self.policy)
        return self.frames[torch.tensor(idx, dtype=torch.long)]

    def fingerprint(self) -> str:
        """SHA-256 of the fitted frames, their shape and the loop policy (for the run store)."""
        h = hashlib.sha256()
        h.update(f"{tuple(self.frames.shape)}|{self.policy}|".encode())
        h.update(self.frames.contiguous().numpy().tobytes())
        return h.hexdigest()


def read_pose_video(
    path: str | Path,
    width: int,
    height: int,
    *,
    swap_rb: bool = False,
    policy: LoopPolicy = "loop",
) -> PoseSequence:
    """Read a skeleton video and fit every frame to ``width x height`` (see
    :func:`prepare_pose_frames`). The video's frame rate is ignored: pose frame i drives video
    frame i (test_svi_dance.py:185-189, sample_fps 1).

    Raises:
        SVIError: missing file, not a video, no frames.
    """
    from .video_io import read_video_frames

    p = Path(path)
    if not p.is_file():
        raise SVIError(f"pose video {p} does not exist; pass a skeleton video (mp4/webm/gif)")
    try:
        frames = prepare_pose_frames(
            read_video_frames(p), width, height, swap_rb=swap_rb, source=f"pose video {p}"
        )
    except (OSError, RuntimeError, StopIteration) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SVIError(
            f"pose video {p} cannot be read as a video ({why}); use an mp4/webm/gif skeleton "
            "video (e.g. the DWPose skeleton of a dance video)"
        ) from None
    logger.info("pose video %s: %d frames fitted to %dx%d", p, frames.shape[0], width, height)
    return PoseSequence(frames=frames, source=f"pose video {p}", policy=policy)


# --------------------------------------------------------------------------------------
# The embedding
# --------------------------------------------------------------------------------------


def pose_embedding_input(window: torch.Tensor) -> torch.Tensor:
    """One clip's pose frames uint8 ``[F, H, W, 3]`` -> float32 ``[1, 3, F + 3, H, W]`` in [0, 1].

    svi_video_dance.py:528-529: ``[1, 3, F, H, W]``, the first frame repeated 3 times in front
    (along time), divided by 255. Not normalised to [-1, 1].
    """
    if window.dtype != torch.uint8 or window.ndim != 4 or window.shape[-1] != 3:
        raise SVIError(
            f"pose window must be uint8 [F, H, W, 3]; got {window.dtype} {tuple(window.shape)}"
        )
    x = window.permute(3, 0, 1, 2).unsqueeze(0)
    x = torch.cat([x[:, :, :1].expand(-1, -1, FIRST_FRAME_REPEAT, -1, -1), x], dim=2)
    return x.float() / 255.0


class PoseEmbedding(nn.Sequential):
    """The official ``dwpose_embedding``: seven Conv3d layers with SiLU between them.

    svi_video_dance.py:254-268 (= train_svi_dance.py:665-679); state-dict keys ``0.weight``,
    ``0.bias``, ..., ``12.weight``, ``12.bias`` (the file's ``dwpose_embedding.`` prefix removed).

    ``forward``: float32 ``[B, 3, F + 3, H, W]`` in [0, 1] (:func:`pose_embedding_input`) ->
    ``[B, dim, (F - 1) / 4 + 1, H / 16, W / 16]``: time /4 (two stride-2 convs on F + 3 frames),
    space /16 (the VAE's /8 times the DiT's 2x2 patches).

    Args:
        dim: output channels = the DiT width (5120 for Wan2.1 14B, fixed in the official code).
        hidden: channels between the convs (16 official).
    """

    def __init__(self, dim: int, hidden: int = OFFICIAL_HIDDEN) -> None:
        layers: list[nn.Module] = []
        chans = [3] + [hidden] * 6 + [dim]
        for i, (kernel, stride, pad) in enumerate(_CONV_SPECS):
            layers.append(nn.Conv3d(chans[i], chans[i + 1], kernel, stride=stride, padding=pad))
            if i < len(_CONV_SPECS) - 1:
                layers.append(nn.SiLU())
        super().__init__(*layers)

    @property
    def dim(self) -> int:
        """Output width (the DiT width it was made for)."""
        return int(self[12].out_channels)

    @property
    def hidden(self) -> int:
        return int(self[0].out_channels)

    @staticmethod
    def output_grid(frames: int, height: int, width: int) -> tuple[int, int, int]:
        """``(T, h, w)`` of the tokens for a clip of ``frames`` frames at ``width x height``."""
        return (frames - 1) // 4 + 1, height // 16, width // 16


def _expected_shapes(dim: int, hidden: int) -> dict[str, tuple[int, ...]]:
    chans = [3] + [hidden] * 6 + [dim]
    out: dict[str, tuple[int, ...]] = {}
    for j, (idx, (kernel, _s, _p)) in enumerate(zip(CONV_INDICES, _CONV_SPECS, strict=True)):
        out[f"{idx}.weight"] = (chans[j + 1], chans[j], *kernel)
        out[f"{idx}.bias"] = (chans[j + 1],)
    return out


def load_pose_embedding(
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    *,
    expected_dim: int | None = None,
) -> PoseEmbedding:
    """Build a float32 :class:`PoseEmbedding` from its tensors (keys ``0.weight`` ... ``12.bias``).

    The width comes from ``12.weight`` (the official file: 5120), the hidden size from
    ``0.weight`` (16). Loaded strictly, like svi_video_dance.py:275.

    Raises:
        CheckpointError: a missing / unexpected / misshapen tensor (naming ``source`` and the
            key), or a width different from ``expected_dim`` (the DiT's width).
    """
    sd = dict(state_dict)
    for key in ("0.weight", "12.weight"):
        if key not in sd:
            raise CheckpointError(
                f"'{source}': pose-embedding tensor 'dwpose_embedding.{key}' is missing; the "
                "file is incomplete (an SVI-Dance file holds dwpose_embedding.0 ... .12)."
            )
    dim, hidden = int(sd["12.weight"].shape[0]), int(sd["0.weight"].shape[0])
    if expected_dim is not None and dim != expected_dim:
        raise CheckpointError(
            f"'{source}': its pose embedding is {dim} wide (made for a DiT of width {dim}"
            f"{' = Wan2.1 14B' if dim == 5120 else ''}), but the model is {expected_dim} wide"
            f"{' (Wan2.1 1.3B?)' if expected_dim == 1536 else ''}. Use the Dance file made for "
            "this DiT (svi-dance.safetensors is for Wan2.1-I2V-14B)."
        )
    want = _expected_shapes(dim, hidden)
    missing = sorted(set(want) - set(sd))
    extra = sorted(set(sd) - set(want))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing 'dwpose_embedding.{missing[0]}'")
        if extra:
            parts.append(f"unexpected 'dwpose_embedding.{extra[0]}'")
        raise CheckpointError(
            f"'{source}': the pose embedding does not have the official layout ({', '.join(parts)}"
            "); expected dwpose_embedding.{0,2,4,6,8,10,12}.{weight,bias}."
        )
    for key, shape in want.items():
        if tuple(sd[key].shape) != shape:
            raise CheckpointError(
                f"'{source}': pose-embedding tensor 'dwpose_embedding.{key}' has shape "
                f"{tuple(sd[key].shape)}, expected {shape}. The file is corrupt or not an "
                "SVI-Dance / UniAnimate file."
            )
    module = PoseEmbedding(dim, hidden)
    module.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return module.train(False).requires_grad_(False)


def split_dance_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split an SVI-Dance file into (LoRA tensors, pose-embedding tensors).

    Pose tensors are the keys containing ``dwpose_embedding.`` (any prefix, e.g.
    ``model.`` / ``pipe.``), returned under the part after it (model_manager.py:516-518,
    svi_video_dance.py:271-273). UniAnimate's other modules (``randomref_embedding_pose`` ...)
    are skipped with a log line. Everything else is the LoRA (``pipe.dit.blocks...``).
    """
    lora: dict[str, torch.Tensor] = {}
    pose: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for key, value in state_dict.items():
        if POSE_KEY_MARKER in key:
            sub = key.split(POSE_KEY_MARKER, 1)[1]
            if sub in pose:
                raise CheckpointError(
                    f"'{source}': pose-embedding tensor '{sub}' appears twice ('{key}'); "
                    "keep one spelling"
                )
            pose[sub] = value
        elif any(m in key for m in IGNORED_MODULE_MARKERS):
            skipped.append(key)
        else:
            lora[key] = value
    if skipped:
        logger.info(
            "'%s': ignored %d tensors of modules SVI-Dance does not use (e.g. %s)",
            source,
            len(skipped),
            skipped[0],
        )
    return lora, pose


@dataclass(frozen=True)
class DanceWeights:
    """An SVI-Dance file: the DiT LoRA plus the pose embedding.

    Attributes:
        lora: the LoRA tensors as stored (normalise with ``svi_core.lora.normalise_lora_keys``).
        pose: the float32 pose embedding (inference mode, no grad).
        source: the file.
    """

    lora: dict[str, torch.Tensor]
    pose: PoseEmbedding
    source: str


def load_dance_file(path: str | Path, *, expected_dim: int | None = None) -> DanceWeights:
    """Read ``svi-dance.safetensors`` (or a UniAnimate / our exported file): LoRA + pose embedding.

    Raises:
        CheckpointError: missing or unreadable file; a file without pose-embedding tensors (a
            plain LoRA: SVI-Dance would silently ignore the skeleton); a pose embedding for
            another DiT width than ``expected_dim``; no LoRA tensors.
    """
    from .checkpoints import load_state_dict

    src = str(path)
    lora, pose = split_dance_state_dict(load_state_dict(path), src)
    if not pose:
        raise CheckpointError(
            f"'{src}' has no pose-embedding tensors (dwpose_embedding.*): it is a plain LoRA, "
            "not an SVI-Dance file, and would ignore the skeleton. Use svi-dance.safetensors "
            "(vita-video-gen/svi-model, version-1.0) for mode dance, or pick another mode for "
            "this LoRA."
        )
    module = load_pose_embedding(pose, src, expected_dim=expected_dim)
    if not lora:
        raise CheckpointError(
            f"'{src}' holds a pose embedding but no LoRA tensors; an SVI-Dance file holds both "
            "(the DiT LoRA and dwpose_embedding). The file is incomplete."
        )
    logger.info(
        "SVI-Dance file '%s': %d LoRA tensors, pose embedding %d -> %d wide",
        src,
        len(lora),
        module.hidden,
        module.dim,
    )
    return DanceWeights(lora=lora, pose=module, source=src)


@torch.no_grad()
def pose_tokens(
    embedding: PoseEmbedding,
    window: torch.Tensor,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    round_bf16: bool = True,
) -> torch.Tensor:
    """One clip's pose tokens ``[1, dim, T, H/16, W/16]`` from its pose window uint8 ``[F, H, W, 3]``.

    The embedding runs in float32 (as the official module, created in the default dtype and
    never cast: svi_video_dance.py:254-275, 526); its output is rounded to bfloat16 (:529) when
    ``round_bf16`` and returned in ``dtype``. Compute it ONCE per clip (about a TFLOP for an
    81-frame 832x480 clip), never per step.
    """
    dev = torch.device(device) if device is not None else next(embedding.parameters()).device
    if next(embedding.parameters()).device != dev:
        embedding = embedding.to(dev)
    out = embedding(pose_embedding_input(window).to(dev))
    if round_bf16:
        out = out.to(torch.bfloat16)
    return out.to(dtype)


def tokens_match(tokens: torch.Tensor, grid: Sequence[int]) -> bool:
    """True when pose tokens ``[1 or B, dim, T, h, w]`` fit a patch grid ``(T, h, w)``."""
    return tokens.ndim == 5 and tuple(int(g) for g in tokens.shape[2:]) == tuple(
        int(g) for g in grid
    )
