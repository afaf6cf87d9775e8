"""Drift against a known true continuation, and bootstrap intervals over scenes (numpy only).

When the true future of a video is known (a procedural world, a held-out real video), each
generated clip can be compared with the true frames at the same times. Per clip, on uint8
``[H, W, 3]`` RGB frames (pixel numbers on a [0, 1] scale, Lab on its usual scale):

* ``rmse``: root mean square pixel error against the true frames (strict: counts every pixel
  that is not where the truth has it, so motion that cannot be predicted from the conditioning
  frames also counts);
* ``delta_e``: CIE76 ΔE between the clip's mean Lab colour and the true clip's (colour drift
  measured against what the colour really is at that time, not against clip 1);
* ``colour_w1``: appearance error, the 1-D Wasserstein distance between the generated and the
  true clip's per-pixel Lab values, averaged over L, a and b. It does not care WHERE a colour
  is (moving content in other places scores 0) but catches a shifted palette, lost contrast or
  saturation, and colours that do not exist in the truth;
* ``sharpness_log2``: log2 of (variance of the Laplacian of luma, generated / true): 0 = as
  sharp as the truth, -1 = half the detail energy;
* ``motion_ratio``: mean absolute frame difference inside the clip, generated / true (1 = moves
  as much as the truth; 0 = frozen).

:func:`bootstrap_ci` gives percentile intervals of a mean over scenes (resampling whole scenes,
the unit that varies), :func:`paired_bootstrap_ci` the interval of a mean difference between
two models run on the same scenes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .drift import ClipSpan, lab_pixels_u8, laplacian_variance, luma
from .errors import SVIError

TRUTH_METRICS: tuple[str, ...] = (
    "rmse",
    "delta_e",
    "colour_w1",
    "sharpness_log2",
    "motion_ratio",
)


@dataclass(frozen=True)
class ClipTruthError:
    """Errors of one generated clip (frames ``[start, end)``) against the true frames."""

    index: int
    start: int
    end: int
    rmse: float
    delta_e: float
    colour_w1: float
    sharpness_log2: float
    motion_ratio: float

    def to_dict(self) -> dict:
        return asdict(self)


def wasserstein_1d(a: np.ndarray, b: np.ndarray) -> float:
    """W1 distance between two equally sized 1-D samples (mean |sorted a - sorted b|)."""
    a, b = np.sort(np.ravel(a)), np.sort(np.ravel(b))
    if a.shape != b.shape:
        raise SVIError(f"wasserstein_1d: samples differ in size ({a.size} vs {b.size})")
    return float(np.abs(a - b).mean())


def clip_truth_error(
    generated: Sequence[np.ndarray], truth: Sequence[np.ndarray], index: int = 0, start: int = 0
) -> ClipTruthError:
    """Errors of one clip: ``generated`` and ``truth`` are equally long lists of uint8
    ``[H, W, 3]`` frames at the same times."""
    if len(generated) != len(truth) or not generated:
        raise SVIError(
            f"ground truth: {len(generated)} generated vs {len(truth)} true frames; need the "
            "same number (>= 1)"
        )
    g = np.stack(generated)
    t = np.stack(truth)
    if g.shape != t.shape or g.dtype != np.uint8 or t.dtype != np.uint8:
        raise SVIError(
            f"ground truth: generated {g.dtype} {g.shape} vs true {t.dtype} {t.shape}; need "
            "uint8 [H, W, 3] frames of one size"
        )
    diff = (g.astype(np.float32) - t.astype(np.float32)) / 255.0
    lab_g = np.concatenate([lab_pixels_u8(f) for f in g])
    lab_t = np.concatenate([lab_pixels_u8(f) for f in t])
    w1 = float(np.mean([wasserstein_1d(lab_g[:, c], lab_t[:, c]) for c in range(3)]))
    sharp_g = np.mean([laplacian_variance(luma(f)) for f in g])
    sharp_t = np.mean([laplacian_variance(luma(f)) for f in t])
    eps = 1e-12
    return ClipTruthError(
        index=index,
        start=start,
        end=start + len(g),
        rmse=float(np.sqrt(np.mean(diff**2))),
        delta_e=float(np.linalg.norm(lab_g.mean(0) - lab_t.mean(0))),
        colour_w1=w1,
        sharpness_log2=float(np.log2((sharp_g + eps) / (sharp_t + eps))),
        motion_ratio=_motion(g) / max(_motion(t), eps) if len(g) > 1 else 1.0,
    )


def _motion(frames: np.ndarray) -> float:
    return float(np.abs(np.diff(frames.astype(np.int16), axis=0)).mean() / 255.0)


def truth_errors(
    generated: Iterable[np.ndarray], truth: Iterable[np.ndarray], spans: Sequence[ClipSpan]
) -> list[ClipTruthError]:
    """Per-clip errors of a stitched video against its true continuation.

    ``generated`` and ``truth`` stream uint8 ``[H, W, 3]`` frames in lockstep (frame i of the
    video is compared with true frame i); ``spans`` cut the video into clips
    (:func:`svi_core.drift.clip_spans` or a run manifest). Only one clip is held at a time.
    """
    if not spans:
        raise SVIError("ground truth: no clip spans")
    out: list[ClipTruthError] = []
    gi, ti = iter(generated), iter(truth)
    pos = 0
    for sp in spans:
        if sp.start != pos:
            raise SVIError(f"ground truth: clip {sp.index} starts at {sp.start}, expected {pos}")
        g, t = [], []
        for i in range(sp.start, sp.end):
            try:
                g.append(next(gi))
            except StopIteration:
                raise SVIError(
                    f"ground truth: the video ends at frame {i}; the clips end at {sp.end}"
                ) from None
            try:
                t.append(next(ti))
            except StopIteration:
                raise SVIError(
                    f"ground truth: the true frames end at {i}; the video needs {sp.end}"
                ) from None
        out.append(clip_truth_error(g, t, sp.index, sp.start))
        pos = sp.end
    return out


# ------------------------------------------------------------------------------ statistics


@dataclass(frozen=True)
class Interval:
    """A mean and its ``level`` bootstrap interval ``[lo, hi]`` (arrays over trailing axes)."""

    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    level: float
    n: int


def bootstrap_ci(
    values: np.ndarray, level: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> Interval:
    """Percentile bootstrap interval of the mean over axis 0 (scenes) of ``values``
    ``[n_scenes, ...]``; resamples whole scenes with replacement, ``n_boot`` times, from a
    seeded generator (the same numbers every time). NaN-free input only."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim < 1 or v.shape[0] < 2:
        raise SVIError(f"bootstrap: need values [n_scenes >= 2, ...]; got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise SVIError("bootstrap: values contain NaN or inf")
    if not 0.0 < level < 1.0:
        raise SVIError(f"bootstrap: level {level} must be in (0, 1)")
    rng = np.random.default_rng(seed)
    n = v.shape[0]
    means = np.empty((n_boot,) + v.shape[1:])
    for i in range(0, n_boot, 1000):  # chunks keep memory flat for long per-clip arrays
        k = min(1000, n_boot - i)
        idx = rng.integers(0, n, size=(k, n))
        means[i : i + k] = v[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha], axis=0)
    return Interval(mean=v.mean(0), lo=lo, hi=hi, level=level, n=n)


def paired_bootstrap_ci(
    a: np.ndarray, b: np.ndarray, level: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> Interval:
    """Interval of the mean of ``a - b`` over scenes (axis 0), for two models run on the same
    scenes (scene i of ``a`` pairs with scene i of ``b``): resampling pairs removes the
    between-scene variance both share, so it separates models that per-model intervals,
    overlapping, cannot."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise SVIError(f"paired bootstrap: shapes differ, {a.shape} vs {b.shape}")
    return bootstrap_ci(a - b, level, n_boot, seed)
