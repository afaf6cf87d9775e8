"""Model-free drift metrics of a long video, clip by clip (numpy only, CPU).

A long SVI video is a chain of clips. This module measures how far each clip has drifted from
the first one (and from the anchor/reference image): mean colour (CIE Lab, ΔE76), brightness and
contrast (mean / std of Rec.601 luma), sharpness (variance of the Laplacian of luma), flicker
(mean |Δ brightness| between consecutive frames), similarity to the anchor (gaussian-window
SSIM on luma), the visibility of every seam between clips (jump across the seam divided by the
median frame-to-frame change around it), and ALWAYS a motion number (mean absolute frame
difference) beside them: a video that does not move scores perfectly on every consistency
metric, so consistency without motion means nothing.

Frames are streamed: ``DriftAccumulator.push`` takes one uint8 ``[H, W, 3]`` RGB frame at a time
and keeps only a handful of floats per frame, so an hour of video never sits in RAM.
``analyse_video`` reads an mp4 with ``imageio_ffmpeg.read_frames``.

All pixel-valued numbers are on a [0, 1] scale (uint8 / 255), Lab on its usual scale (L in
[0, 100]).

LV-Bench style aggregate per metric: ``VDE = Σ_{i=2..N} (N - i + 1) · |m_i - m_1| / |m_1|`` over
the per-clip values m_1 .. m_N (1-based clips); for colour, ``|m_i - m_1| / |m_1|`` is replaced
by ``ΔE(i, 1) / 100`` (ΔE between mean Lab colours, Lab's L range is 100).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import SVIError

# ------------------------------------------------------------------------------ colour science

_SRGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ],
    dtype=np.float64,
)
_D65_WHITE = np.array([0.95047, 1.0, 1.08883], dtype=np.float64)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # Rec.601, on gamma-encoded RGB


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] ``[..., 3]`` -> CIE Lab (D65) ``[..., 3]`` float64, L in [0, 100]."""
    c = np.asarray(rgb, dtype=np.float64)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = lin @ _SRGB_TO_XYZ.T / _D65_WHITE
    delta = 6.0 / 29.0
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4.0 / 29.0)
    L = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


def _linear_lut() -> np.ndarray:
    c = np.arange(256, dtype=np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


_SRGB_LINEAR_LUT = _linear_lut()


def lab_pixels_u8(frame_u8: np.ndarray) -> np.ndarray:
    """CIE Lab ``[N, 3]`` float64 of the pixels of a uint8 ``[H, W, 3]`` sRGB frame. Frames
    larger than 128 px on their short side are subsampled on a regular grid (stride
    ``short_side // 128``) first: colour statistics barely change and it is much faster."""
    step = max(1, min(frame_u8.shape[0], frame_u8.shape[1]) // 128)
    px = frame_u8[::step, ::step].reshape(-1, 3)
    xyz = _SRGB_LINEAR_LUT[px] @ _SRGB_TO_XYZ.T / _D65_WHITE
    delta = 6.0 / 29.0
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4.0 / 29.0)
    return np.stack(
        [116.0 * f[:, 1] - 16.0, 500.0 * (f[:, 0] - f[:, 1]), 200.0 * (f[:, 1] - f[:, 2])], 1
    )


def mean_lab_u8(frame_u8: np.ndarray) -> np.ndarray:
    """Mean CIE Lab colour ``[3]`` of a uint8 ``[H, W, 3]`` sRGB frame (per-pixel Lab, then the
    mean; large frames subsampled as in :func:`lab_pixels_u8`)."""
    return lab_pixels_u8(frame_u8).mean(0)


def luma(frame_u8: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, 3]`` RGB -> Rec.601 luma ``[H, W]`` float32 in [0, 1]."""
    return (frame_u8.astype(np.float32) / 255.0) @ _LUMA


def laplacian_variance(y: np.ndarray) -> float:
    """Variance of the 3x3 Laplacian of a luma image ``[H, W]`` in [0, 1] (valid region)."""
    y = np.asarray(y, dtype=np.float32)
    if y.shape[0] < 3 or y.shape[1] < 3:
        return 0.0
    c = y[1:-1, 1:-1]
    lap = y[:-2, 1:-1] + y[2:, 1:-1] + y[1:-1, :-2] + y[1:-1, 2:] - 4.0 * c
    return float(lap.var())


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).astype(np.float32)


_GAUSS = _gaussian_1d()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of ``[..., H, W]`` by the 1-D kernel g on both axes."""
    n = len(g)
    h, w = x.shape[-2], x.shape[-1]
    rows = sum(g[k] * x[..., :, k : w - n + 1 + k] for k in range(n))
    return sum(g[k] * rows[..., k : h - n + 1 + k, :] for k in range(n))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two luma images ``[H, W]`` in [0, 1] (Wang et al. 2004).

    11-tap gaussian window, σ = 1.5, C1 = 0.01², C2 = 0.03², valid region only. As in the
    authors' reference code, images are first average-pooled by ``max(1, round(short / 256))``.
    Images smaller than the window use a window shrunk to the image.
    """
    if a.shape != b.shape:
        raise SVIError(f"ssim: image shapes differ, {a.shape} vs {b.shape}")
    pool = max(1, round(min(a.shape) / 256))
    if pool > 1:
        h, w = (a.shape[0] // pool) * pool, (a.shape[1] // pool) * pool
        a = a[:h, :w].reshape(h // pool, pool, w // pool, pool).mean((1, 3))
        b = b[:h, :w].reshape(h // pool, pool, w // pool, pool).mean((1, 3))
    size = min(11, a.shape[0], a.shape[1])
    g = _GAUSS if size == 11 else _gaussian_1d(size, 1.5 * size / 11)
    x = np.asarray(a, np.float32)
    y = np.asarray(b, np.float32)
    f = _filter_valid(np.stack([x, y, x * x, y * y, x * y]), g)  # [5, H', W']
    mx, my, mxx, myy, mxy = f[0], f[1], f[2], f[3], f[4]
    vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


# ------------------------------------------------------------------------------ clip layout


@dataclass(frozen=True)
class ClipSpan:
    """Frames ``[start, end)`` of clip ``index`` in the stitched video."""

    index: int
    start: int
    end: int


def clip_spans(
    total_frames: int, clip_frames: int, overlap: int, first_clip_whole: bool = False
) -> list[ClipSpan]:
    """Where each clip sits in a stitched video of ``total_frames`` frames.

    Wan2.1 modes (``first_clip_whole=False``): every non-final clip drops its last ``overlap``
    frames, so clip k starts at ``k * (F - m)``; the last clip keeps all F (plus any remainder).
    SVI 2.0 Pro (``first_clip_whole=True``): clip 0 is kept whole (F frames), later clips drop
    their first ``overlap`` frames, so they are ``F - m`` long.
    """
    if clip_frames <= 0 or overlap < 0 or overlap >= clip_frames:
        raise SVIError(
            f"clip layout: clip_frames={clip_frames}, overlap={overlap}; need clip_frames > 0 "
            "and 0 <= overlap < clip_frames (e.g. --clip-frames 81 --overlap 5)"
        )
    if total_frames <= 0:
        raise SVIError("clip layout: the video has no frames")
    stride = clip_frames - overlap
    if first_clip_whole:
        n = 1 + max(0, (total_frames - clip_frames) // stride)
        starts = [0] + [clip_frames + (k - 1) * stride for k in range(1, n)]
    else:
        n = max(1, (total_frames - overlap) // stride)
        starts = [k * stride for k in range(n)]
    ends = starts[1:] + [total_frames]
    return [ClipSpan(i, s, e) for i, (s, e) in enumerate(zip(starts, ends, strict=True))]


# ------------------------------------------------------------------------------ accumulation

CLIP_METRICS: tuple[str, ...] = (
    "brightness",
    "contrast",
    "sharpness",
    "flicker",
    "motion",
    "ssim_anchor",
)
"""Scalar per-clip metrics (besides mean Lab colour / ΔE and the seam ratio)."""


@dataclass
class ClipStats:
    """Per-clip means. ``delta_e*`` are ΔE76 of the clip's mean Lab colour against clip 0 and
    against the anchor; ``seam_ratio`` is the seam at this clip's start (None for clip 0)."""

    index: int
    start: int
    end: int
    lab: tuple[float, float, float]
    brightness: float
    contrast: float
    sharpness: float
    flicker: float
    motion: float
    ssim_anchor: float
    delta_e: float = 0.0
    delta_e_anchor: float | None = None
    seam_ratio: float | None = None


@dataclass
class DriftReport:
    """Everything measured; ``to_dict`` gives the JSON form."""

    frames: int
    height: int
    width: int
    clip_frames: int
    overlap: int
    anchor_source: str
    clips: list[ClipStats]
    per_frame: dict[str, list[float]] = field(default_factory=dict)
    vde: dict[str, float | None] = field(default_factory=dict)
    rhythm_ratio: float | None = None

    def drift(self, metric: str) -> list[float]:
        """Per clip, ``m_k - m_0`` for a scalar metric, or ΔE vs clip 0 for ``"colour"``."""
        if metric == "colour":
            return [c.delta_e for c in self.clips]
        m0 = getattr(self.clips[0], metric)
        return [getattr(c, metric) - m0 for c in self.clips]

    def summary(self) -> dict[str, float | None | int]:
        """Last clip against clip 0, in a few numbers (what a node / log line shows)."""
        first, last = self.clips[0], self.clips[-1]

        def rel(a: float, b: float) -> float | None:
            return None if a == 0 else (b - a) / abs(a)

        return {
            "clips": len(self.clips),
            "colour_delta_e_last": last.delta_e,
            "brightness_change_last": rel(first.brightness, last.brightness),
            "contrast_change_last": rel(first.contrast, last.contrast),
            "sharpness_change_last": rel(first.sharpness, last.sharpness),
            "ssim_anchor_last": last.ssim_anchor,
            "motion_first": first.motion,
            "motion_last": last.motion,
            "max_seam_ratio": max(
                (c.seam_ratio for c in self.clips if c.seam_ratio is not None), default=None
            ),
            "median_seam_ratio": _median_or_none(
                [c.seam_ratio for c in self.clips if c.seam_ratio is not None]
            ),
            "rhythm_ratio": self.rhythm_ratio,
            "vde_colour": self.vde.get("colour"),
            "vde_sharpness": self.vde.get("sharpness"),
        }

    def to_dict(self) -> dict:
        return {
            "frames": self.frames,
            "height": self.height,
            "width": self.width,
            "clip_frames": self.clip_frames,
            "overlap": self.overlap,
            "anchor": self.anchor_source,
            "units": {
                "brightness": "mean Rec.601 luma, [0, 1]",
                "contrast": "std of luma, [0, 1]",
                "sharpness": "variance of the 3x3 Laplacian of luma",
                "flicker": "mean |Δ brightness| between consecutive frames",
                "motion": "mean |frame difference| per pixel, [0, 1]",
                "ssim_anchor": "gaussian SSIM of luma against the anchor",
                "delta_e": "CIE76 ΔE of the clip's mean Lab colour against clip 0",
                "seam_ratio": "jump across the seam / median frame-to-frame change around it",
                "rhythm_ratio": "the same ratio inside the clips, at the 4-frame phase with the "
                "largest change (the Wan VAE's latent-frame boundaries), median over clips",
                "vde": "Σ_{i>=2} (N - i + 1) |m_i - m_1| / |m_1| (colour: ΔE / 100)",
            },
            "summary": self.summary(),
            "notes": REPORT_NOTES,
            "vde": self.vde,
            "clips": [vars(c) | {"lab": list(c.lab)} for c in self.clips],
            "per_frame": self.per_frame,
        }


def seam_ratio(diffs: np.ndarray, boundary: int, window: int = 4, eps: float = 1e-4) -> float:
    """Visibility of a seam at frame ``boundary`` (the first frame of the new clip).

    ``diffs[i]`` is the mean |frame i - frame i-1| (``diffs[0]`` unused). The jump is
    ``diffs[boundary]``; the reference is the median of ``diffs`` over ``window`` frames on either
    side, excluding the jump. Ratio ~1: invisible; >> 1: a visible cut. ``eps`` keeps a frozen
    video (all zeros) at ratio 1.
    """
    lo, hi = max(1, boundary - window), min(len(diffs), boundary + window + 1)
    around = [diffs[i] for i in range(lo, hi) if i != boundary]
    ref = float(np.median(around)) if around else 0.0
    return (float(diffs[boundary]) + eps) / (ref + eps)


LATENT_STRIDE = 4
"""Frames per latent frame of the Wan VAE (frame 0 alone, then groups of 4)."""

REPORT_NOTES = {
    "seam_ratio": (
        "jump across a seam / median frame-to-frame change in the 4 frames on either side. "
        "1 = the seam changes the picture no more than a typical frame step. Wan videos change "
        "in a 4-frame rhythm (see motion), so even a seamless chain scores above 1: compare a "
        "seam with rhythm_ratio, the same ratio at the rhythm's peaks inside the clips; at or "
        "below it, the seam is no more visible than the model's own rhythm (toy demo: seams "
        "about 2, rhythm about 3)."
    ),
    "motion": (
        "the per-frame motion curve has a comb with a 4-frame period: the Wan VAE decodes 4 "
        "frames from each latent frame, so frames within a group change smoothly and the "
        "change jumps at every group boundary. It is the model's codec, not flicker or a seam."
    ),
}
"""What a reader of report.json needs to read the seam ratio and the motion curve."""


def rhythm_ratio(diffs: np.ndarray, spans: Sequence[ClipSpan], window: int = 4) -> float | None:
    """The seam ratio the video's own 4-frame rhythm gives inside its clips (a baseline for
    :func:`seam_ratio`).

    Per clip, of the phases ``(frame - start) % 4`` that have positions whose window stays
    inside the clip, the one whose frame-to-frame change is largest on average over the clip
    (the latent-frame boundaries of the Wan VAE), measured with :func:`seam_ratio` at those
    positions; the median over all clips. None when no clip holds such a position (clips of fewer than ``2 * window + 2``
    frames).
    """
    ratios: list[float] = []
    for sp in spans:
        inner = range(sp.start + window + 1, sp.end - window)  # windows inside the clip
        phases = sorted({(i - sp.start) % LATENT_STRIDE for i in inner})
        if not phases:
            continue
        means = {
            ph: float(np.mean(diffs[sp.start + 1 + (ph - 1) % LATENT_STRIDE : sp.end : 4]))
            for ph in phases
        }
        phase = max(phases, key=lambda ph: means[ph])
        ratios += [
            seam_ratio(diffs, i, window) for i in inner if (i - sp.start) % LATENT_STRIDE == phase
        ]
    return _median_or_none(ratios)


def _median_or_none(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


class DriftAccumulator:
    """Streams frames, keeps a few floats per frame, computes per-clip statistics at the end.

    ``anchor``: uint8 ``[H, W, 3]`` (the reference image, already at the video size) or None to
    use the video's first frame.
    """

    def __init__(self, anchor: np.ndarray | None = None) -> None:
        self._anchor_luma = None if anchor is None else luma(anchor)
        self._anchor_lab = None if anchor is None else mean_lab_u8(anchor)
        self.anchor_source = "image" if anchor is not None else "first_frame"
        self._prev: np.ndarray | None = None
        self._shape: tuple[int, int] | None = None
        self._rows: dict[str, list[float]] = {
            k: []
            for k in ("L", "a", "b", "brightness", "contrast", "sharpness", "diff", "ssim_anchor")
        }

    @property
    def frames(self) -> int:
        return len(self._rows["brightness"])

    def push(self, frame: np.ndarray) -> None:
        """Add one uint8 ``[H, W, 3]`` RGB frame."""
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise SVIError(
                f"drift: expected a uint8 [H, W, 3] RGB frame, got {frame.dtype} {frame.shape}"
            )
        if self._shape is None:
            self._shape = frame.shape[:2]
            if self._anchor_luma is not None and self._anchor_luma.shape != self._shape:
                raise SVIError(
                    f"drift: anchor image is {self._anchor_luma.shape}, video frames are "
                    f"{self._shape}; resize the anchor to the video size first"
                )
        elif frame.shape[:2] != self._shape:
            raise SVIError(
                f"drift: frame {self.frames} is {frame.shape[:2]}, earlier ones {self._shape}"
            )
        y = luma(frame)
        if self._anchor_luma is None:
            self._anchor_luma = y
        lab = mean_lab_u8(frame)
        if self._anchor_lab is None:
            self._anchor_lab = lab
        r = self._rows
        r["L"].append(float(lab[0]))
        r["a"].append(float(lab[1]))
        r["b"].append(float(lab[2]))
        r["brightness"].append(float(y.mean()))
        r["contrast"].append(float(y.std()))
        r["sharpness"].append(laplacian_variance(y))
        f = frame.astype(np.int16)
        r["diff"].append(
            0.0 if self._prev is None else float(np.abs(f - self._prev).mean() / 255.0)
        )
        self._prev = f
        r["ssim_anchor"].append(ssim(y, self._anchor_luma))

    def finish(
        self, spans: Sequence[ClipSpan], clip_frames: int = 0, overlap: int = 0
    ) -> DriftReport:
        """Per-clip statistics over ``spans`` (see ``clip_spans``) -> ``DriftReport``."""
        if self.frames == 0 or self._shape is None:
            raise SVIError("drift: no frames were read")
        if spans[-1].end != self.frames:
            raise SVIError(
                f"drift: clip spans end at {spans[-1].end}, the video has {self.frames} frames"
            )
        r = {k: np.asarray(v, dtype=np.float64) for k, v in self._rows.items()}
        lab_all = np.stack([r["L"], r["a"], r["b"]], axis=1)
        clips: list[ClipStats] = []
        for sp in spans:
            sl = slice(sp.start, sp.end)
            inner = r["diff"][sp.start + 1 : sp.end]  # frame changes inside the clip
            bright = r["brightness"][sl]
            lab = lab_all[sl].mean(0)
            clips.append(
                ClipStats(
                    index=sp.index,
                    start=sp.start,
                    end=sp.end,
                    lab=(float(lab[0]), float(lab[1]), float(lab[2])),
                    brightness=float(bright.mean()),
                    contrast=float(r["contrast"][sl].mean()),
                    sharpness=float(r["sharpness"][sl].mean()),
                    flicker=float(np.abs(np.diff(bright)).mean()) if len(bright) > 1 else 0.0,
                    motion=float(inner.mean()) if len(inner) else 0.0,
                    ssim_anchor=float(r["ssim_anchor"][sl].mean()),
                )
            )
        lab0 = np.asarray(clips[0].lab)
        for c in clips:
            c.delta_e = float(np.linalg.norm(np.asarray(c.lab) - lab0))
            c.delta_e_anchor = float(np.linalg.norm(np.asarray(c.lab) - self._anchor_lab))
            if c.index > 0:
                c.seam_ratio = seam_ratio(r["diff"], c.start)
        rep = DriftReport(
            frames=self.frames,
            height=self._shape[0],
            width=self._shape[1],
            clip_frames=clip_frames,
            overlap=overlap,
            anchor_source=self.anchor_source,
            clips=clips,
            per_frame={
                "brightness": r["brightness"].tolist(),
                "contrast": r["contrast"].tolist(),
                "sharpness": r["sharpness"].tolist(),
                "motion": r["diff"].tolist(),
                "ssim_anchor": r["ssim_anchor"].tolist(),
                "delta_e": np.linalg.norm(lab_all - lab0, axis=1).tolist(),
            },
        )
        rep.vde = vde_all(clips)
        rep.rhythm_ratio = rhythm_ratio(r["diff"], spans)
        return rep


def vde(values: Sequence[float]) -> float | None:
    """LV-Bench style ``Σ_{i=2..N} (N - i + 1) |m_i - m_1| / |m_1|`` (1-based); None if m_1 = 0
    and some m_i differs (undefined), 0.0 if all are equal."""
    n = len(values)
    m1 = float(values[0])
    total = sum((n - i + 1) * abs(float(values[i - 1]) - m1) for i in range(2, n + 1))
    if m1 == 0.0:
        return 0.0 if total == 0.0 else None
    return total / abs(m1)


def vde_all(clips: Sequence[ClipStats]) -> dict[str, float | None]:
    """VDE of every scalar clip metric, plus ``colour`` (ΔE / 100 in place of the relative change)."""
    out: dict[str, float | None] = {m: vde([getattr(c, m) for c in clips]) for m in CLIP_METRICS}
    n = len(clips)
    out["colour"] = sum((n - i + 1) * clips[i - 1].delta_e / 100.0 for i in range(2, n + 1))
    return out


def analyse_frames(
    frames: Iterable[np.ndarray],
    clip_frames: int,
    overlap: int,
    anchor: np.ndarray | None = None,
    first_clip_whole: bool = False,
    spans: Sequence[ClipSpan] | None = None,
) -> DriftReport:
    """Drift report of a stream of uint8 ``[H, W, 3]`` frames stitched from clips of
    ``clip_frames`` with ``overlap`` (see ``clip_spans``), or cut at explicit ``spans``."""
    acc = DriftAccumulator(anchor)
    for f in frames:
        acc.push(f)
    if spans is None:
        spans = clip_spans(acc.frames, clip_frames, overlap, first_clip_whole)
    return acc.finish(spans, clip_frames, overlap)


def read_video_frames(path: str) -> Iterable[np.ndarray]:
    """Yield uint8 ``[H, W, 3]`` RGB frames of a video file one at a time
    (:func:`svi_core.video_io.read_video_frames`, imported here so this module stays numpy-only
    at import time)."""
    import os

    from .video_io import read_video_frames as _read

    if not os.path.isfile(path):
        raise SVIError(f"drift: video file not found: {path}")
    yield from _read(path)


def video_size(path: str) -> tuple[int, int]:
    """(height, width) of a video file (:func:`svi_core.video_io.video_size`; SVIError when
    it is missing or cannot be read as a video)."""
    from .video_io import video_size as _size

    try:
        return _size(path)
    except FileNotFoundError:
        raise SVIError(f"drift: video file not found: {path}") from None


def analyse_video(
    path: str,
    clip_frames: int,
    overlap: int,
    anchor: np.ndarray | None = None,
    first_clip_whole: bool = False,
    spans: Sequence[ClipSpan] | None = None,
) -> DriftReport:
    """Drift report of a video file, streamed frame by frame (see ``analyse_frames``)."""
    return analyse_frames(
        read_video_frames(path), clip_frames, overlap, anchor, first_clip_whole, spans
    )


def finite_or_none(x: float | None) -> float | None:
    """JSON-safe float (NaN / inf -> None)."""
    return None if x is None or not math.isfinite(x) else float(x)
