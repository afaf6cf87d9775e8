"""Pose alignment for SVI-Dance: fit a driving skeleton to the reference person's proportions.

The official ``utils/run_align_pose.py`` (vita-epfl/Stable-Video-Infinity) detects DWPose
keypoints in the driving video and in the reference image, rescales the driving skeleton to
the reference's body proportions, moves it onto the reference's neck and draws it. We have no
pose detector (the official one is two ONNX models), so this module works on keypoints given
by the user: e.g. ComfyUI's ``POSE_KEYPOINT`` from comfyui_controlnet_aux's DWPose node or core
0.33's SDPose nodes (OpenPose JSON, :func:`from_openpose`), and draws the aligned skeleton in
the palette SVI-Dance was trained on (:func:`draw_pose`).

Keypoint layout (:class:`PoseKeypoints`, the official ``bodies/hands/faces`` of
run_align_pose.py:139-163), coordinates normalised by the image size (x / W, y / H), NaN where
a point was not detected:

* ``body`` ``[20, 2]``: the 18 OpenPose points (0 nose, 1 neck, 2-4 right shoulder / elbow /
  wrist, 5-7 left, 8-10 right hip / knee / ankle, 11-13 left, 14/15 right / left eye, 16/17 right /
  left ear), 18 = left toes (mean of the big and small toe), 19 = right toes;
* ``hands`` ``[2, 21, 2]``: hands[0] = left hand (it follows 5-6-7), hands[1] = right (2-3-4);
* ``face`` ``[68, 2]``.

Differences from the official utility, on purpose: undetected points stay undetected (the
official scales and shifts its -1 markers too, which can make a missing hand point appear);
a segment missing in the reference or the first driving frame keeps its driving length (the
official divides by a meaningless length) with a warning; the skeleton is drawn at the video
size (the official draws on a fixed 512x768 canvas, so the letterbox then misplaces it unless
the reference is 2:3).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .errors import SVIError
from .log import logger

NECK, R_SHOULDER, L_SHOULDER, R_HIP, L_HIP = 1, 2, 5, 8, 11

# (parent, child, body points moved, hand moved or None), in the official order
# (run_align_pose.py:286-507). Each step rescales the segment parent->child to the
# reference's length by moving the child end and everything hanging from it.
_SEGMENTS: tuple[tuple[int, int, tuple[int, ...], int | None], ...] = (
    (1, 0, (0, 14, 15, 16, 17), None),  # neck -> nose, the head follows (:286-303)
    (1, 2, (2, 3, 4), 1),  # neck -> right shoulder (:305-321)
    (1, 5, (5, 6, 7), 0),  # neck -> left shoulder (:323-339)
    (2, 3, (3, 4), 1),  # right upper arm (:341-355)
    (3, 4, (4,), 1),  # right forearm (:357-369)
    (5, 6, (6, 7), 0),  # left upper arm (:371-385)
    (6, 7, (7,), 0),  # left forearm (:387-399)
    (0, 14, (14, 16), None),  # nose -> right eye (:401-413)
    (0, 15, (15, 17), None),  # nose -> left eye (:415-427)
    (14, 16, (16,), None),  # right eye -> ear (:429-439)
    (15, 17, (17,), None),  # left eye -> ear (:441-451)
    (8, 9, (9, 10, 19), None),  # right thigh, the right toes follow (:455-468)
    (9, 10, (10, 19), None),  # right shin (:470-480)
    (11, 12, (12, 13, 18), None),  # left thigh (:482-495)
    (12, 13, (13, 18), None),  # left shin (:497-507)
)


@dataclass(frozen=True)
class PoseKeypoints:
    """One person's keypoints, normalised (x / W, y / H), NaN = not detected.

    Attributes:
        body: float64 ``[20, 2]``. hands: ``[2, 21, 2]`` (left, right). face: ``[68, 2]``.
    """

    body: np.ndarray
    hands: np.ndarray
    face: np.ndarray

    def __post_init__(self) -> None:
        for name, shape in (("body", (20, 2)), ("hands", (2, 21, 2)), ("face", (68, 2))):
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.shape != shape:
                got = getattr(arr, "shape", type(arr).__name__)
                raise SVIError(f"pose keypoints: {name} must be an array {shape}; got {got}")

    @classmethod
    def empty(cls) -> PoseKeypoints:
        """Nothing detected."""
        return cls(
            body=np.full((20, 2), np.nan), hands=np.full((2, 21, 2), np.nan),
            face=np.full((68, 2), np.nan),
        )  # fmt: skip


def _points(flat: Sequence[float] | None, n: int, w: float, h: float, thr: float) -> np.ndarray:
    out = np.full((n, 2), np.nan)
    if not flat:
        return out
    arr = np.asarray(flat, dtype=np.float64).reshape(-1, 3)[:n]
    for i, (x, y, c) in enumerate(arr):
        if c >= thr and not (x == 0 and y == 0) and math.isfinite(x) and math.isfinite(y):
            out[i] = (x / w, y / h)
    return out


def from_openpose(
    person: Mapping[str, Any],
    width: float,
    height: float,
    threshold: float = 0.3,
    normalised: bool | None = None,
) -> PoseKeypoints:
    """One person of OpenPose JSON (ComfyUI ``POSE_KEYPOINT``: ``pose_keypoints_2d`` etc. as
    flat ``[x, y, confidence]`` lists on a ``width x height`` canvas) -> keypoints.

    Coordinates are pixels (core's SDPose nodes) or already normalised to [0, 1]
    (comfyui_controlnet_aux writes its normalised keypoints with confidence 1.0);
    ``normalised=None`` decides per person: normalised when no detected coordinate exceeds 1.
    Points below ``threshold`` (0.3, the official visibility cut, run_align_pose.py:119) or at
    (0, 0) are undetected. Feet (``foot_keypoints_2d``, 6 points: left big toe, small toe,
    heel, right big toe, small toe, heel) give the official toe points 18 / 19 as the mean of the
    two toes when both are seen (run_align_pose.py:139-150).
    """
    if width <= 0 or height <= 0:
        raise SVIError(f"pose keypoints: canvas size {width}x{height} must be positive")
    if "pose_keypoints_2d" not in person:
        raise SVIError(
            "pose keypoints: a person without 'pose_keypoints_2d'; expected OpenPose JSON "
            "(a POSE_KEYPOINT from a DWPose / SDPose node)"
        )
    parts = {
        "body": (person.get("pose_keypoints_2d"), 18),
        "feet": (person.get("foot_keypoints_2d"), 6),
        "left": (person.get("hand_left_keypoints_2d"), 21),
        "right": (person.get("hand_right_keypoints_2d"), 21),
        "face": (person.get("face_keypoints_2d"), 68),
    }
    pts = {k: _points(flat, n, 1.0, 1.0, threshold) for k, (flat, n) in parts.items()}
    if normalised is None:
        seen = np.concatenate([p[np.isfinite(p).all(axis=1)] for p in pts.values()])
        normalised = bool(seen.size) and float(np.abs(seen).max()) <= 1.0
    if not normalised:
        pts = {k: p / (width, height) for k, p in pts.items()}
    body = np.full((20, 2), np.nan)
    body[:18] = pts["body"]
    body[18] = pts["feet"][0:2].mean(axis=0)  # NaN unless both toes were seen
    body[19] = pts["feet"][3:5].mean(axis=0)
    return PoseKeypoints(body=body, hands=np.stack([pts["left"], pts["right"]]), face=pts["face"])


def frames_from_pose_keypoint(data: Sequence[Mapping[str, Any]]) -> list[PoseKeypoints]:
    """ComfyUI ``POSE_KEYPOINT`` (one dict per frame: ``people``, ``canvas_width``,
    ``canvas_height``) -> the first person of every frame (nothing detected = all NaN)."""
    out = []
    for i, frame in enumerate(data):
        try:
            w, h = float(frame["canvas_width"]), float(frame["canvas_height"])
        except (KeyError, TypeError, ValueError):
            raise SVIError(
                f"pose keypoints: frame {i} has no canvas_width / canvas_height; expected a "
                "POSE_KEYPOINT from a DWPose / SDPose node"
            ) from None
        people = frame.get("people") or []
        out.append(from_openpose(people[0], w, h) if people else PoseKeypoints.empty())
    if not out:
        raise SVIError("pose keypoints: no frames")
    return out


# --------------------------------------------------------------------------------------
# Alignment
# --------------------------------------------------------------------------------------


def _dist(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.hypot(*(p - q)))


@dataclass(frozen=True)
class Alignment:
    """What run_align_pose.py computes once, from the reference and the FIRST driving frame.

    Attributes:
        x_ratio, y_ratio: global scale (shoulder width; shoulder-to-hip height), :262-284.
        segment_ratios: one per :data:`_SEGMENTS` entry (reference length / scaled frame-0
            length).
        offset: the final translation putting frame 0's neck on the reference's (:509-513).
    """

    x_ratio: float
    y_ratio: float
    segment_ratios: tuple[float, ...]
    offset: np.ndarray


def _scale(kp: PoseKeypoints, sx: float, sy: float) -> PoseKeypoints:
    s = np.array([sx, sy])
    return PoseKeypoints(body=kp.body * s, hands=kp.hands * s, face=kp.face * s)


def _apply_segments(kp: PoseKeypoints, ratios: Sequence[float]) -> PoseKeypoints:
    body, hands = kp.body.copy(), kp.hands.copy()
    for (parent, child, moved, hand), r in zip(_SEGMENTS, ratios, strict=True):
        off = (body[parent] - body[child]) * (1.0 - r)
        if not np.isfinite(off).all():
            continue  # an end is missing in this frame: leave the limb where it is
        body[list(moved)] += off
        if hand is not None:
            hands[hand] += off
    return PoseKeypoints(body=body, hands=hands, face=kp.face.copy())


def _translate(kp: PoseKeypoints, offset: np.ndarray) -> PoseKeypoints:
    return PoseKeypoints(body=kp.body + offset, hands=kp.hands + offset, face=kp.face + offset)


def fit_alignment(reference: PoseKeypoints, first: PoseKeypoints) -> Alignment:
    """The ratios and the offset of run_align_pose.py:254-513 (see :class:`Alignment`).

    Raises:
        SVIError: shoulders or neck missing in the reference or the first driving frame
            (nothing to align on).
    """
    for name, kp in (("the reference image", reference), ("the first driving frame", first)):
        for idx, part in ((R_SHOULDER, "right shoulder"), (L_SHOULDER, "left shoulder"),
                          (NECK, "neck")):  # fmt: skip
            if not np.isfinite(kp.body[idx]).all():
                raise SVIError(
                    f"pose alignment: no {part} detected in {name}; alignment needs the neck "
                    "and both shoulders. Use a reference / first frame that shows the upper "
                    "body, or turn alignment off."
                )
    ref, f0 = reference.body, first.body
    width0 = f0[L_SHOULDER, 0] - f0[R_SHOULDER, 0]
    if width0 == 0:
        raise SVIError("pose alignment: the first driving frame's shoulders coincide")
    x_ratio = float((ref[L_SHOULDER, 0] - ref[R_SHOULDER, 0]) / width0)

    def torso(b: np.ndarray) -> float:
        return float((b[R_HIP, 1] + b[L_HIP, 1]) / 2 - (b[R_SHOULDER, 1] + b[L_SHOULDER, 1]) / 2)

    t_ref, t0 = torso(ref), torso(f0)
    if math.isfinite(t_ref) and math.isfinite(t0) and t0 != 0:
        y_ratio = t_ref / t0
    else:
        logger.warning(
            "pose alignment: hips not seen in the reference or the first driving frame; "
            "scaling heights like widths"
        )
        y_ratio = x_ratio
    scaled = _scale(first, x_ratio, y_ratio)
    ratios: list[float] = []
    missing: list[str] = []
    for parent, child, _moved, _hand in _SEGMENTS:
        num = _dist(ref[parent], ref[child])
        den = _dist(scaled.body[parent], scaled.body[child])
        if math.isfinite(num) and math.isfinite(den) and den > 0:
            ratios.append(num / den)
        else:
            ratios.append(1.0)
            missing.append(f"{parent}-{child}")
        # the official measures each segment after the previous steps (frame 0 is modified in
        # place); every step moves whole sub-chains, so the lengths measured are unchanged
    if missing:
        logger.warning(
            "pose alignment: segments %s are missing in the reference or the first driving "
            "frame; they keep the driving video's lengths",
            ", ".join(missing),
        )
    aligned0 = _apply_segments(scaled, ratios)
    offset = ref[NECK] - aligned0.body[NECK]
    return Alignment(x_ratio=x_ratio, y_ratio=y_ratio, segment_ratios=tuple(ratios), offset=offset)


def align_frame(kp: PoseKeypoints, alignment: Alignment) -> PoseKeypoints:
    """One driving frame with the reference's proportions (run_align_pose.py:515-692)."""
    scaled = _scale(kp, alignment.x_ratio, alignment.y_ratio)
    return _translate(_apply_segments(scaled, alignment.segment_ratios), alignment.offset)


def align_poses(driving: Sequence[PoseKeypoints], reference: PoseKeypoints) -> list[PoseKeypoints]:
    """Every driving frame aligned to ``reference``; ratios from ``driving[0]``."""
    if not driving:
        raise SVIError("pose alignment: the driving pose sequence is empty")
    alignment = fit_alignment(reference, driving[0])
    logger.info(
        "pose alignment: scale x %.3f, y %.3f; neck moved by (%.3f, %.3f)",
        alignment.x_ratio,
        alignment.y_ratio,
        *alignment.offset,
    )
    return [align_frame(kp, alignment) for kp in driving]


# --------------------------------------------------------------------------------------
# Drawing (DWPose style, dwpose/util.py draw_body_and_foot + draw_handpose)
# --------------------------------------------------------------------------------------

Palette = Literal["official", "rgb"]
"""``official``: the colours as the SVI / UniAnimate training frames hold them (the OpenPose
list drawn through OpenCV, i.e. read as BGR: the neck->nose limb is red). ``rgb``: the list
as RGB (ControlNet / comfyui_controlnet_aux / SDPose look: neck->nose blue)."""

_LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
          (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (13, 18), (10, 19))  # fmt: skip
"""0-based body limbs of dwpose/util.py:119-121 (its 1-based limbSeq)."""

_COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
            (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
            (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
            (170, 255, 255), (255, 255, 0))  # fmt: skip
"""The OpenPose colour list of dwpose/util.py:123-125 (limb i and body point i)."""

_HAND_EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
               (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18),
               (18, 19), (19, 20))  # fmt: skip

STICK_WIDTH = 4


def _paint(canvas: np.ndarray, inside: np.ndarray, y0: int, x0: int, colour) -> None:
    h, w = inside.shape
    region = canvas[y0 : y0 + h, x0 : x0 + w]
    region[inside] = colour


def _clip_box(cx: float, cy: float, r: float, width: int, height: int):
    x0, x1 = max(0, int(math.floor(cx - r))), min(width, int(math.ceil(cx + r)) + 1)
    y0, y1 = max(0, int(math.floor(cy - r))), min(height, int(math.ceil(cy + r)) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    ys, xs = np.mgrid[y0:y1, x0:x1]
    return ys, xs, y0, x0


def _ellipse(canvas, cx, cy, a, b, angle_deg, colour) -> None:
    box = _clip_box(cx, cy, max(a, b) + 1, canvas.shape[1], canvas.shape[0])
    if box is None:
        return
    ys, xs, y0, x0 = box
    t = math.radians(angle_deg)
    dx, dy = xs - cx, ys - cy
    u = dx * math.cos(t) + dy * math.sin(t)
    v = -dx * math.sin(t) + dy * math.cos(t)
    inside = (u / (a + 0.5)) ** 2 + (v / (b + 0.5)) ** 2 <= 1.0
    _paint(canvas, inside, y0, x0, colour)


def _disc(canvas, cx, cy, r, colour) -> None:
    box = _clip_box(cx, cy, r + 1, canvas.shape[1], canvas.shape[0])
    if box is None:
        return
    ys, xs, y0, x0 = box
    _paint(canvas, (xs - cx) ** 2 + (ys - cy) ** 2 <= (r + 0.5) ** 2, y0, x0, colour)


def _segment(canvas, p, q, thickness, colour) -> None:
    (px, py), (qx, qy) = p, q
    cx, cy = (px + qx) / 2, (py + qy) / 2
    box = _clip_box(cx, cy, math.hypot(qx - px, qy - py) / 2 + thickness, canvas.shape[1],
                    canvas.shape[0])  # fmt: skip
    if box is None:
        return
    ys, xs, y0, x0 = box
    vx, vy = qx - px, qy - py
    n2 = vx * vx + vy * vy
    s = np.clip(((xs - px) * vx + (ys - py) * vy) / n2, 0, 1) if n2 > 0 else 0.0
    d2 = (xs - (px + s * vx)) ** 2 + (ys - (py + s * vy)) ** 2
    _paint(canvas, d2 <= (thickness / 2) ** 2, y0, x0, colour)


def draw_pose(
    kp: PoseKeypoints,
    width: int,
    height: int,
    *,
    palette: Palette = "official",
    hands: bool = True,
    face: bool = False,
) -> np.ndarray:
    """Draw one skeleton as uint8 RGB ``[height, width, 3]`` on black, DWPose style.

    Body + feet (dwpose/util.py:112-153): each limb a filled ellipse (half-length x 4 px, its
    integer angle), then the canvas times 0.6, then every point a filled 4-px disc in full
    colour. Hands (:156-181): 2-px lines in rainbow colours, 4-px discs. Face (:184-194): 3-px
    white discs (off by default: the training frames are "with foot, without face",
    train_svi_dance.py:519). Rasterised here in numpy (no OpenCV), so edges may differ from
    cv2 by a pixel; the colours and geometry are the official ones.
    """
    if palette not in ("official", "rgb"):
        raise SVIError(f"pose palette {palette!r} must be 'official' or 'rgb'")

    def col(c):
        return tuple(c[::-1]) if palette == "official" else tuple(c)

    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    body = kp.body
    for i, (a, b) in enumerate(_LIMBS):
        if not (np.isfinite(body[a]).all() and np.isfinite(body[b]).all()):
            continue
        xa, ya = body[a] * (width, height)
        xb, yb = body[b] * (width, height)
        length = math.hypot(xa - xb, ya - yb)
        # the official angle is atan2 of (row difference, column difference), in whole degrees
        angle = int(math.degrees(math.atan2(ya - yb, xa - xb)))
        cx, cy = int((xa + xb) / 2), int((ya + yb) / 2)
        _ellipse(canvas, cx, cy, int(length / 2), STICK_WIDTH, angle, col(_COLOURS[i]))
    canvas = (canvas * 0.6).astype(np.uint8)
    for i in range(20):
        if np.isfinite(body[i]).all():
            x, y = int(body[i, 0] * width), int(body[i, 1] * height)
            _disc(canvas, x, y, 4, col(_COLOURS[i]))
    if hands:
        for hand in kp.hands:
            for ie, (a, b) in enumerate(_HAND_EDGES):
                if not (np.isfinite(hand[a]).all() and np.isfinite(hand[b]).all()):
                    continue
                pa = (int(hand[a, 0] * width), int(hand[a, 1] * height))
                pb = (int(hand[b, 0] * width), int(hand[b, 1] * height))
                if min(*pa, *pb) <= 0:
                    continue  # the official skips points at the border (util.py:172)
                rgb = colorsys.hsv_to_rgb(ie / len(_HAND_EDGES), 1.0, 1.0)
                _segment(canvas, pa, pb, 2, col(tuple(round(c * 255) for c in rgb)))
            for x, y in hand:
                if np.isfinite(x) and np.isfinite(y) and int(x * width) > 0 and int(y * height) > 0:
                    _disc(canvas, int(x * width), int(y * height), 4, col((0, 0, 255)))
    if face:
        for x, y in kp.face:
            if np.isfinite(x) and np.isfinite(y) and int(x * width) > 0 and int(y * height) > 0:
                _disc(canvas, int(x * width), int(y * height), 3, (255, 255, 255))
    return canvas


def draw_poses(frames: Sequence[PoseKeypoints], width: int, height: int, **kw: Any) -> np.ndarray:
    """:func:`draw_pose` for every frame: uint8 ``[N, height, width, 3]``."""
    if not frames:
        raise SVIError("pose drawing: no frames")
    return np.stack([draw_pose(kp, width, height, **kw) for kp in frames])


def aligned_skeleton_video(
    driving: Sequence[Mapping[str, Any]],
    reference: Sequence[Mapping[str, Any]] | None,
    width: int,
    height: int,
    *,
    palette: Palette = "rgb",
    hands: bool = True,
) -> np.ndarray:
    """A skeleton video drawn from ``POSE_KEYPOINT`` data, aligned to the reference person.

    ``driving``: one OpenPose frame dict per video frame (the first person is used);
    ``reference``: the reference image's keypoints (its first frame), or None to draw the driving
    skeleton unaligned. Returns uint8 ``[N, height, width, 3]`` drawn in ``palette`` at the video
    size (the official ``run_align_pose.py`` draws on a fixed 512x768 canvas, see the module
    docstring).

    Raises:
        SVIError: no frames, a frame without canvas size, a reference without a person.
    """
    if isinstance(driving, Mapping):
        driving = [driving]
    if isinstance(reference, Mapping):
        reference = [reference]
    frames = frames_from_pose_keypoint(driving)
    if reference is not None:
        ref = frames_from_pose_keypoint(reference)[0]
        if not np.isfinite(ref.body[:18]).any():
            raise SVIError(
                "pose alignment: no person was detected in the reference keypoints; give the "
                "reference image's pose (DWPose / SDPose of the dancer image) or none"
            )
        frames = align_poses(frames, ref)
    return draw_poses(frames, width, height, palette=palette, hands=hands)
