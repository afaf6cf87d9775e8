"""SVI-Dance's per-clip condition: each clip's pose window, through the loop's condition seam.

:class:`PoseCondition` is a :class:`~svi_core.conditions.ClipCondition` named ``"pose"``. For clip
k it puts a :class:`PoseWindow` into the plan's extras: the pose frames that drive the clip's
``F`` frames, by the official rule (``test_svi_dance.py:218-227, 281-288``; see
:func:`svi_core.pose.pose_window_indices`): clip 0 = poses ``0 .. F-1``; clip k >= 1 starts with
the pose of the carried motion frame (the last pose of clip k-1) and continues the sequence from
``F - 1``; past the end of the pose video it loops (or follows the ``pingpong`` / ``hold``
option). A backend's ``"pose"`` hook turns the window into pose tokens added to the DiT's patch
tokens (:mod:`svi_core.standalone.pose`, ``nodes.pose_patch``).

Guidance: SVI-Dance keeps the pose in BOTH passes of classifier-free guidance (the official
script passes ``cond_wo_pose=True``, ``test_svi_dance.py:259``; ``svi_video_dance.py:423-433``), so
the mode's ``uncond_null`` is empty; a pass that nulls ``"pose"`` runs without pose tokens (the
pipeline's ``cond_wo_pose=False`` branch, ``svi_video_dance.py:426-429``).

Identity. The run-level identity is HOW pose frames are made (the palette, the loop policy, the
official letterbox fit), never the pose video itself. Each clip's window is identified in the
clip's plan by the fitted pose frames it uses (a hash over per-frame hashes, computed once per
pose video). So a longer pose video extends a finished run as long as the finished clips' windows
stay the same (they do unless a finished clip looped past the end of the old video; the run store
then refuses and names the clip).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch

from .errors import SVIError
from .pose import (
    LOOP_POLICIES,
    LoopPolicy,
    PoseSequence,
    pose_window_indices,
    prepare_pose_frames,
)
from .pose_align import Palette

if TYPE_CHECKING:  # pragma: no cover
    from .conditions import ClipPlan
    from .loop import RunSettings

PALETTES: tuple[str, ...] = ("official", "rgb")
"""How a skeleton video was drawn. ``official``: the SVI / UniAnimate colours (the OpenPose list
drawn through OpenCV, i.e. BGR; ``prepare_video_pose.py:208``, ``run_align_pose.py:697``): used
as is. ``rgb``: the list drawn as RGB (ComfyUI core's SDPose nodes, comfyui_controlnet_aux's
DWPose / OpenPose, ControlNet annotators): red and blue are swapped on reading so the model sees
the colours it was trained on. The two palettes hold the same set of colours (swapping red and
blue maps the OpenPose list onto itself), only which limb has which colour differs, so the choice
cannot be read off the pixels reliably: it is a setting."""

FIT_RULE = "letterbox-nearest-black"
"""The official fit of pose frames into the video (``utils/image_process.py:134-170``)."""


class _Digests:
    """Per-frame SHA-256 digests of a pose video, computed once (windows hash these)."""

    def __init__(self, frames: torch.Tensor) -> None:
        self.frames = frames
        self._digests: list[bytes] | None = None

    def get(self) -> list[bytes]:
        if self._digests is None:
            self._digests = [
                hashlib.sha256(f.contiguous().numpy().tobytes()).digest() for f in self.frames
            ]
        return self._digests


@dataclass(frozen=True)
class PoseWindow:
    """One clip's pose frames: indices into a fitted pose video (no copy until asked).

    Attributes:
        sequence: the fitted pose video (uint8 ``[N, H, W, 3]``, official palette).
        indices: the pose index of each of the clip's ``F`` frames.
    """

    sequence: PoseSequence = field(repr=False)
    indices: tuple[int, ...]
    _digests: Any = field(default=None, repr=False, compare=False)

    @property
    def frames(self) -> torch.Tensor:
        """uint8 ``[F, H, W, 3]`` RGB pose frames of the clip (official palette)."""
        return self.sequence.frames[torch.tensor(self.indices, dtype=torch.long)]

    def __len__(self) -> int:
        return len(self.indices)

    def fingerprint(self) -> str:
        """SHA-256 over the window's frames (by their per-frame digests) and the frame shape."""
        digests = self._digests.get() if self._digests is not None else None
        h = hashlib.sha256(f"pose-window|{tuple(self.sequence.frames.shape[1:])}|".encode())
        for i in self.indices:
            if digests is not None:
                h.update(digests[i])
            else:
                h.update(hashlib.sha256(self.sequence.frames[i].numpy().tobytes()).digest())
        return h.hexdigest()

    def describe(self) -> str:
        """``poses 80, 80..159`` style summary for logs."""
        idx = self.indices
        runs: list[str] = []
        start = prev = idx[0]
        for i in list(idx[1:]) + [None]:
            if i is not None and i == prev + 1:
                prev = i
                continue
            runs.append(str(start) if start == prev else f"{start}..{prev}")
            if i is not None:
                start = prev = i
        return "poses " + ", ".join(runs)


@dataclass(frozen=True)
class PoseCondition:
    """The ``"pose"`` condition of an SVI-Dance run.

    Attributes:
        poses: the pose video fitted to the video size (official palette, with its loop policy).
        palette: how the source was drawn (``rgb`` frames were swapped when fitted); recorded.
        name: ``"pose"`` (the extras key the backends' pose hooks read).
    """

    poses: PoseSequence
    palette: Palette = "official"
    name: str = "pose"

    def __post_init__(self) -> None:
        if self.palette not in PALETTES:
            raise SVIError(
                f"pose palette {self.palette!r} must be one of {', '.join(PALETTES)} (official = "
                "skeletons from the official / UniAnimate scripts, rgb = ComfyUI / ControlNet "
                "pose nodes)"
            )
        if self.poses.policy not in LOOP_POLICIES:
            raise SVIError(f"pose loop {self.poses.policy!r} must be one of {LOOP_POLICIES}")

    @classmethod
    def from_frames(
        cls,
        frames: Any,
        width: int,
        height: int,
        *,
        palette: Palette = "official",
        loop: LoopPolicy = "loop",
        source: str = "pose frames",
    ) -> PoseCondition:
        """The condition of skeleton frames of any size (uint8 ``[N, h, w, 3]`` or a sequence of
        ``[h, w, 3]`` frames), fitted to ``width x height`` like the official code (letterbox,
        logged when the aspect differs); ``rgb`` frames get red and blue swapped.

        Raises:
            SVIError: no frame, a frame that is not an 8-bit RGB image, a bad palette / loop.
        """
        if palette not in PALETTES:
            raise SVIError(f"pose palette {palette!r} must be one of {', '.join(PALETTES)}")
        fitted = prepare_pose_frames(frames, width, height, swap_rb=palette == "rgb", source=source)
        return cls(PoseSequence(frames=fitted, source=source, policy=loop), palette=palette)

    @cached_property
    def _digests(self) -> _Digests:
        return _Digests(self.poses.frames)

    def identity(self) -> Mapping[str, Any]:
        """How pose frames are made (never the pose video itself: see the module docstring)."""
        return {"palette": self.palette, "loop": self.poses.policy, "fit": FIT_RULE}

    def validate(self, settings: RunSettings) -> None:
        """Refuse a mode whose clips do not follow the official pose layout, or pose frames of
        another size than the video (before any work)."""
        mode = settings.mode
        if mode.carry != "pixel" or mode.stitch != "drop_tail":
            raise SVIError(
                f"mode {mode.name!r} carries {mode.carry} frames; the pose condition (SVI-Dance) "
                "needs a Wan2.1 pixel-carry mode (use mode dance)"
            )
        if mode.overlap_frames != mode.motion_frames:
            raise SVIError(
                f"mode {mode.name!r} drops {mode.overlap_frames} frames per clip but carries "
                f"{mode.motion_frames}; the pose windows follow the official layout (each clip "
                "regenerates the frames it carries), so keep overlap = motion frames"
            )
        if self.poses.size != (settings.width, settings.height):
            w, h = self.poses.size
            raise SVIError(
                f"{self.poses.source}: pose frames are {w}x{h} but the video is "
                f"{settings.width}x{settings.height}; fit them to the video size "
                "(svi_core.pose.prepare_pose_frames)"
            )

    def window(self, clip: int, frames: int, motion_frames: int) -> PoseWindow:
        """Clip ``clip``'s :class:`PoseWindow`."""
        idx = pose_window_indices(clip, len(self.poses), frames, motion_frames, self.poses.policy)
        return PoseWindow(sequence=self.poses, indices=tuple(idx), _digests=self._digests)

    def for_clip(self, plan: ClipPlan, settings: RunSettings) -> ClipPlan:
        mode = settings.mode
        return plan.with_extra(self.name, self.window(plan.index, mode.frames, mode.motion_frames))


def window_frames(payload: Any) -> torch.Tensor:
    """The uint8 ``[F, H, W, 3]`` frames of a ``"pose"`` payload (a :class:`PoseWindow` or the
    frames themselves)."""
    frames = payload.frames if isinstance(payload, PoseWindow) else payload
    if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8 or frames.ndim != 4:
        raise SVIError(
            f"the pose payload must be a PoseWindow or uint8 frames [F, H, W, 3]; got "
            f"{type(payload).__name__}"
        )
    return frames


def rows_with_pose(
    cond_or_uncond: Sequence[int] | None, batch: int, null_passes: frozenset[int]
) -> list[bool]:
    """Which rows of a DiT batch get the pose tokens.

    ComfyUI stacks the guidance passes of one step in one batch: ``cond_or_uncond`` names the
    pass of each equal chunk (0 = positive, 1 = negative, ...); rows of a pass in
    ``null_passes`` run without the pose. Without ``cond_or_uncond`` every row gets it.
    """
    if not null_passes or not cond_or_uncond:
        return [True] * batch
    chunks = len(cond_or_uncond)
    if batch % chunks:
        raise SVIError(f"a batch of {batch} rows cannot hold {chunks} guidance passes evenly")
    per = batch // chunks
    return [int(cond_or_uncond[r // per]) not in null_passes for r in range(batch)]
