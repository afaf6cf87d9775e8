"""Drift guard: optional colour correction at the seams between clips (off = official SVI).

Long SVI videos creep in colour and warmth (SVI#42, #47, #87): every clip starts from the end
of the previous one, so a small shift per clip compounds. The guard matches the colour
statistics of the frames around each seam to the anchor (the clip's reference image) and
corrects only there, like the boundary colour correction of EverAnimate's ComfyUI port
(younestft/Comfy_EverAnimate: "only processes frames near each chunk join"; EverAnimate,
arXiv 2605.15042, corrects drift at the chunk joins and keeps the carry in latent space).

Statistics (Reinhard-style colour transfer in CIE Lab): per channel, the mean (and, with
``contrast``, the standard deviation) over the pixels of a window of frames. The window of the
seam after clip k is the last ``window`` kept frames of clip k plus the frames past the seam
(the frames the next clip continues from); it moves with the seams. The transfer maps the
window's statistics onto the anchor's: ``lab' = lab - mean_w + mean_a`` (with ``contrast``:
``(lab - mean_w) * g + mean_a``, ``g = std_a / std_w`` clamped to ``[1 / MAX_GAIN,
MAX_GAIN]``), blended with the identity by ``strength``. Matching the mean only is the
default: the decoded frames of a model are usually softer than the anchor image from the first
clip on, so matching its contrast sharpens every frame difference (on the toy world it raised
the motion number by about 13 % at the same colour error; README, "Drift guard").

Where it is applied (frame weights, :func:`seam_weights`):

* ``output``: the saved frames only. The transfer of seam k ramps in over the last ``window``
  kept frames of clip k (weight 1 at the seam) and out over the first ``window`` kept frames
  of clip k + 1, so both sides of the seam get the same correction and nothing jumps; frames
  far from a seam are untouched. The next clip is conditioned on the uncorrected frames (the
  official behaviour), so drift still compounds underneath.
* ``carry``: as ``output`` at the end of each clip, and the frames carried into the next clip
  are the corrected ones, so each clip starts from anchor-matched colours and drift stops
  compounding (no ramp-out is needed: the next clip already starts corrected). For latent
  carry (SVI 2.0 Pro) the carried latent is kept untouched, so ``carry`` corrects what
  ``output`` corrects: the toy VAE measurement (``experiments/toyworld/latent_carry.py``,
  README "Drift guard") found that correcting a carried latent (decode, correct, re-encode;
  or add the encoder's view of the correction) holds the colour (ΔE 3.6 at clip 50 against
  99.9 uncorrected, under a constant warm cast) but loses structure clip after clip (PSNR 17-18
  dB at clip 50 against 24.6, Laplacian variance 3-9x the original's), and shifting the latent
  channel means holds neither; the latent that the
  official Pro loop carries is the one thing SVI 2.0 Pro relies on to avoid VAE round trips,
  so the guard does not trade structure for colour there.

Frames are uint8 ``[N, H, W, 3]`` RGB; Lab values are float64 with L in [0, 100]. Everything
here is pure numpy and deterministic, so a damaged segment re-made from its latent gets the
same corrected frames (the loop records each clip's transfers in its clip file).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .drift import _D65_WHITE, _SRGB_LINEAR_LUT, _SRGB_TO_XYZ
from .errors import SVIError

GuardMode = Literal["off", "output", "carry"]
GUARD_MODES: tuple[str, ...] = ("off", "output", "carry")

MAX_GAIN = 2.0
"""Largest (and 1 / smallest) std ratio a transfer may apply per Lab channel: a flat window
(a dark or fogged frame) must not blow up the contrast."""

DEFAULT_WINDOW = 16
"""Frames before (and, for ``output``, after) a seam that are corrected (the EverAnimate port
uses 12 before and 16 after an 81-frame chunk join)."""

STATS_SIDE = 128
"""Colour statistics read frames on a grid with at least this many pixels on the short side."""

_XYZ_TO_SRGB = np.linalg.inv(_SRGB_TO_XYZ)
_DELTA = 6.0 / 29.0


@dataclass(frozen=True)
class DriftGuard:
    """The drift-guard setting of a run (part of its identity; ``off`` is the official SVI).

    Attributes:
        mode: ``off``, ``output`` (correct the saved frames) or ``carry`` (also the frames the
            next clip continues from).
        window: frames on each side of a seam that are corrected (ramped); >= 1.
        strength: 0..1, how far the statistics are moved onto the anchor's (1 = all the way).
        contrast: also match the per-channel standard deviation (contrast and saturation),
            not only the mean colour.
    """

    mode: GuardMode = "off"
    window: int = DEFAULT_WINDOW
    strength: float = 1.0
    contrast: bool = False

    @property
    def on(self) -> bool:
        return self.mode != "off"

    def validate(self) -> None:
        """Raise SVIError for a setting the guard cannot use (before any work)."""
        if self.mode not in GUARD_MODES:
            raise SVIError(
                f"drift guard {self.mode!r} must be one of {', '.join(GUARD_MODES)} (off = "
                "official SVI, output = correct the saved frames at the seams, carry = also the "
                "frames the next clip continues from)"
            )
        if int(self.window) != self.window or self.window < 1:
            raise SVIError(f"drift guard window={self.window} must be a whole number >= 1")
        if not 0.0 < float(self.strength) <= 1.0:
            raise SVIError(f"drift guard strength={self.strength} must be in (0, 1]")

    def identity(self) -> dict[str, Any]:
        """What the run store records: only the mode when off (window and strength do nothing)."""
        if not self.on:
            return {"mode": "off"}
        return {
            "mode": self.mode,
            "window": int(self.window),
            "strength": float(self.strength),
            "contrast": bool(self.contrast),
        }


# ----- colour statistics --------------------------------------------------------------------


def u8_to_lab(frame: np.ndarray) -> np.ndarray:
    """uint8 sRGB ``[..., 3]`` -> CIE Lab (D65) float64 ``[..., 3]`` (L in [0, 100])."""
    xyz = _SRGB_LINEAR_LUT[frame] @ _SRGB_TO_XYZ.T / _D65_WHITE
    f = np.where(xyz > _DELTA**3, np.cbrt(xyz), xyz / (3 * _DELTA**2) + 4.0 / 29.0)
    return np.stack(
        [
            116.0 * f[..., 1] - 16.0,
            500.0 * (f[..., 0] - f[..., 1]),
            200.0 * (f[..., 1] - f[..., 2]),
        ],
        axis=-1,
    )


def lab_to_u8(lab: np.ndarray) -> np.ndarray:
    """CIE Lab float ``[..., 3]`` -> uint8 sRGB (out-of-gamut colours clipped, rounded)."""
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = np.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0)) * _D65_WHITE
    lin = np.clip(xyz @ _XYZ_TO_SRGB.T, 0.0, 1.0)
    rgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1.0 / 2.4) - 0.055)
    return np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


@dataclass(frozen=True)
class ColourStats:
    """Per-channel Lab mean and standard deviation (float64 ``[3]`` each) over a set of pixels."""

    mean: np.ndarray
    std: np.ndarray


def colour_stats(frames: np.ndarray) -> ColourStats:
    """Lab statistics pooled over the pixels of uint8 frames ``[N, H, W, 3]`` (or one frame
    ``[H, W, 3]``), accumulated frame by frame (one frame's Lab in memory at a time).

    Frames whose short side exceeds ``STATS_SIDE`` pixels are read on a regular grid (stride
    ``short_side // STATS_SIDE``, as :func:`svi_core.drift.mean_lab_u8` does): global colour
    statistics barely change, and 480p frames cost a ninth."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise ValueError(
            f"expected uint8 frames [N, H, W, 3] with N >= 1; got {frames.dtype} {frames.shape}"
        )
    step = max(1, min(frames.shape[1], frames.shape[2]) // STATS_SIDE)
    s1 = np.zeros(3)
    s2 = np.zeros(3)
    for frame in frames:
        lab = u8_to_lab(frame[::step, ::step]).reshape(-1, 3)
        mean = lab.mean(0)
        s1 += mean
        s2 += ((lab - mean) ** 2).mean(0) + mean**2
    n = len(frames)
    mean = s1 / n
    return ColourStats(mean=mean, std=np.sqrt(np.maximum(s2 / n - mean**2, 0.0)))


@dataclass(frozen=True)
class ColourTransfer:
    """``lab' = lab * gain + offset`` per Lab channel (float64 ``[3]`` each)."""

    gain: np.ndarray
    offset: np.ndarray

    @classmethod
    def identity(cls) -> ColourTransfer:
        return cls(np.ones(3), np.zeros(3))

    @classmethod
    def matching(
        cls,
        source: ColourStats,
        target: ColourStats,
        strength: float = 1.0,
        contrast: bool = False,
    ) -> ColourTransfer:
        """The transfer that moves ``source``'s mean (and with ``contrast`` its std, the ratio
        clamped to ``[1 / MAX_GAIN, MAX_GAIN]``) ``strength`` of the way onto ``target``'s."""
        if contrast:
            ratio = np.clip(target.std / np.maximum(source.std, 1e-6), 1.0 / MAX_GAIN, MAX_GAIN)
        else:
            ratio = np.ones(3)
        gain = 1.0 + strength * (ratio - 1.0)
        moved_mean = source.mean + strength * (target.mean - source.mean)
        return cls(gain=gain, offset=moved_mean - gain * source.mean)

    def to_array(self) -> np.ndarray:
        """``[2, 3]`` float64: gain, offset (what the clip file stores)."""
        return np.stack([self.gain, self.offset]).astype(np.float64)

    @classmethod
    def from_array(cls, a: Any) -> ColourTransfer:
        a = np.asarray(a, dtype=np.float64)
        if a.shape != (2, 3):
            raise ValueError(f"expected a colour transfer [2, 3]; got {a.shape}")
        return cls(gain=a[0].copy(), offset=a[1].copy())

    def is_identity(self) -> bool:
        return bool(np.all(self.gain == 1.0) and np.all(self.offset == 0.0))


def blend(parts: list[tuple[float, ColourTransfer]]) -> ColourTransfer:
    """``sum(w * T)`` of weighted transfers plus the identity for the rest of the weight
    (weights must sum to <= 1)."""
    rest = 1.0 - sum(w for w, _ in parts)
    gain = np.full(3, rest)
    offset = np.zeros(3)
    for w, t in parts:
        gain = gain + w * t.gain
        offset = offset + w * t.offset
    return ColourTransfer(gain=gain, offset=offset)


def apply_transfers(frames: np.ndarray, transfers: list[ColourTransfer | None]) -> np.ndarray:
    """Frames ``[N, H, W, 3]`` uint8 with ``transfers[i]`` applied to frame i (None or the
    identity leaves a frame bit for bit as it was). Returns a new array."""
    out = np.array(frames, dtype=np.uint8, copy=True)
    if len(transfers) != len(out):
        raise ValueError(f"{len(transfers)} transfers for {len(out)} frames")
    for i, t in enumerate(transfers):
        if t is None or t.is_identity():
            continue
        out[i] = lab_to_u8(u8_to_lab(out[i]) * t.gain + t.offset)
    return out


# ----- where a clip is corrected ------------------------------------------------------------


def seam_weights(
    frames: int, first_kept: int, seam: int, window: int, ramp_in: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame weights ``(w_in, w_out)`` of the transfers of a clip's two seams.

    Args:
        frames: the clip's frames F.
        first_kept: index of the first frame the stitched video keeps (frames before it
            re-render the previous clip's end and are dropped).
        seam: index of the first frame past the seam to the next clip (``F`` when the next
            clip drops its head; ``F - overlap`` when the next clip replaces this one's tail).
        window: frames on each side of a seam that are corrected.
        ramp_in: whether the previous seam's transfer ramps out over this clip's start
            (``output`` mode after the first clip).

    ``w_out`` is 1 on the last kept frame and past the seam, falling linearly to 0 over the
    ``window`` kept frames before it; ``w_in`` is 1 before and on the first kept frame,
    falling to 0 over the next ``window`` frames. A ramp never reaches the clip's other seam
    (it is shortened to the kept length - 1), so each seam gets its own transfer exactly and a
    clip shorter than two windows is interpolated linearly between the two; where the ramps
    overlap they are scaled to sum to at most 1.
    """
    t = np.arange(frames, dtype=np.float64)
    kept = seam - first_kept
    w_len = max(1, min(window, kept - 1))
    w_out = np.clip(1.0 - (seam - 1 - t) / w_len, 0.0, 1.0)
    if ramp_in:
        w_in = np.clip(1.0 - (t - first_kept) / w_len, 0.0, 1.0)
    else:
        w_in = np.zeros(frames)
    total = w_in + w_out
    over = total > 1.0
    w_in[over] /= total[over]
    w_out[over] /= total[over]
    return w_in, w_out


@dataclass(frozen=True)
class GuardedClip:
    """One clip after the guard.

    Attributes:
        frames: the frames for the video (uint8 ``[F, H, W, 3]``), corrected around the seams.
        carry_frames: the frames the next clip continues from (pixel carry): the corrected
            ones for ``carry``, the decoded ones for ``output``.
        transfer_out: the transfer of the seam after this clip (the next clip ramps it out
            in ``output`` mode). transfer_in: the one this clip ramped out (or None).
    """

    frames: np.ndarray
    carry_frames: np.ndarray
    transfer_out: ColourTransfer
    transfer_in: ColourTransfer | None


def seam_transfer(
    guard: DriftGuard, frames: np.ndarray, anchor: np.ndarray, seam: int
) -> ColourTransfer:
    """The transfer of the seam after a clip: the statistics of its last ``window`` frames
    before the seam and every frame past it, matched to the anchor's ``[H, W, 3]``."""
    start = max(0, seam - guard.window)
    return ColourTransfer.matching(
        colour_stats(frames[start:]), colour_stats(anchor), float(guard.strength), guard.contrast
    )


def guard_clip(
    guard: DriftGuard,
    frames: np.ndarray,
    anchor: np.ndarray,
    *,
    first_kept: int,
    seam: int,
    transfer_in: ColourTransfer | None,
    transfer_out: ColourTransfer | None = None,
) -> GuardedClip:
    """Correct one clip's decoded frames ``[F, H, W, 3]`` uint8 around its seams.

    ``transfer_in`` is the previous seam's transfer (``output`` mode ramps it out over this
    clip's start; None for a clip that starts a run or continues an untouched video).
    ``transfer_out`` is computed from the frames unless given (a repair passes the recorded
    one, so the same frames come out).
    """
    frames = np.asarray(frames)
    if transfer_out is None:
        transfer_out = seam_transfer(guard, frames, anchor, seam)
    ramp_in = guard.mode == "output" and transfer_in is not None
    w_in, w_out = seam_weights(len(frames), first_kept, seam, guard.window, ramp_in)
    per_frame: list[ColourTransfer | None] = []
    for a, b in zip(w_in, w_out, strict=True):
        parts = [(float(w), t) for w, t in ((a, transfer_in), (b, transfer_out)) if w > 0]
        per_frame.append(blend(parts) if parts else None)  # type: ignore[arg-type]
    out = apply_transfers(frames, per_frame)
    return GuardedClip(
        frames=out,
        carry_frames=out if guard.mode == "carry" else frames,
        transfer_out=transfer_out,
        transfer_in=transfer_in if ramp_in else None,
    )
