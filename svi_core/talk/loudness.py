"""Integrated loudness (ITU-R BS.1770-4) and the official -23 LUFS normalisation, in numpy.

The official SVI-Talk code normalises every audio with pyloudnorm before wav2vec2
(``utils/audio_process.py:10-16``, ``scripts/data_preprocess/prepare_video_audio.py:22-28``)::

    loudness = pyln.Meter(16000).integrated_loudness(audio)
    if abs(loudness) > 100: return audio          # silence (-inf) is returned unchanged
    return pyln.normalize.loudness(audio, loudness, -23)   # audio * 10 ** ((-23 - L) / 20)

This module measures the same quantity as pyloudnorm's meter (K-weighting = RBJ high-shelf +4 dB at
1500 Hz, Q 1/sqrt(2), then RBJ high-pass at 38 Hz, Q 0.5; 400 ms blocks with 75 % overlap; absolute gate
-70 LUFS, relative gate -10 dB). The IIR filters run as one FIR (their impulse response over one second,
by which it has decayed below 1e-100) applied by FFT overlap-add in float64; pyloudnorm filters with
scipy and stores the result in the input dtype (float32), so the two loudness values agree to about 1e-6
dB (a gain difference of ~1e-7). The gain is a single number: wav2vec2-base is nearly invariant to it
anyway (its first conv layer is bias-free and group-normalised over the whole sequence).
"""

from __future__ import annotations

import math

import numpy as np

TARGET_LUFS = -23.0
"""Official target loudness (``utils/audio_process.py:10`` ``lufs=-23``)."""

BLOCK_SECONDS = 0.4
ABSOLUTE_GATE = -70.0
_OVERLAP = 0.75


def _rbj_biquad(kind: str, gain_db: float, q: float, fc: float, rate: float):
    """RBJ audio-EQ-cookbook biquad, normalised by a0: ``(b0, b1, b2), (1, a1, a2)``."""
    a = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * math.pi * (fc / rate)
    cw = math.cos(w0)
    alpha = math.sin(w0) / (2.0 * q)
    if kind == "high_shelf":
        sa = 2.0 * math.sqrt(a) * alpha
        b = (
            a * ((a + 1) + (a - 1) * cw + sa),
            -2 * a * ((a - 1) + (a + 1) * cw),
            a * ((a + 1) + (a - 1) * cw - sa),
        )
        den = (
            (a + 1) - (a - 1) * cw + sa,
            2 * ((a - 1) - (a + 1) * cw),
            (a + 1) - (a - 1) * cw - sa,
        )
    elif kind == "high_pass":
        b = ((1 + cw) / 2, -(1 + cw), (1 + cw) / 2)
        den = (1 + alpha, -2 * cw, 1 - alpha)
    else:  # pragma: no cover - internal
        raise ValueError(kind)
    a0 = den[0]
    return tuple(x / a0 for x in b), tuple(x / a0 for x in den)


def k_weighting(rate: float) -> list[tuple[tuple[float, ...], tuple[float, ...]]]:
    """The two K-weighting stages (pyloudnorm's "K-weighting" filter class), in application order."""
    return [
        _rbj_biquad("high_shelf", 4.0, 1.0 / math.sqrt(2.0), 1500.0, rate),
        _rbj_biquad("high_pass", 0.0, 0.5, 38.0, rate),
    ]


def _impulse_response(filters, length: int) -> np.ndarray:
    """Impulse response of the cascaded biquads (zero initial state), float64 ``[length]``."""
    h = np.zeros(length)
    h[0] = 1.0
    for b, a in filters:
        out = np.zeros(length)
        x1 = x2 = y1 = y2 = 0.0
        b0, b1, b2 = b
        _, a1, a2 = a
        for n in range(length):
            x0 = h[n]
            y0 = b0 * x0 + b1 * x1 + b2 * x2 - a1 * y1 - a2 * y2
            out[n] = y0
            x2, x1, y2, y1 = x1, x0, y1, y0
        h = out
    return h


def _fir_overlap_add(x: np.ndarray, h: np.ndarray, block: int = 1 << 16) -> np.ndarray:
    """``convolve(x, h)[:len(x)]`` by FFT overlap-add (float64, bounded memory)."""
    n_fft = 1 << int(math.ceil(math.log2(block + len(h) - 1)))
    hf = np.fft.rfft(h, n_fft)
    y = np.zeros(len(x) + len(h) - 1)
    for s in range(0, len(x), block):
        seg = x[s : s + block]
        out = np.fft.irfft(np.fft.rfft(seg, n_fft) * hf, n_fft)[: len(seg) + len(h) - 1]
        y[s : s + len(out)] += out
    return y[: len(x)]


def k_weight(samples: np.ndarray, rate: int) -> np.ndarray:
    """K-weighted copy of a mono signal ``[N]`` (float64)."""
    h = _impulse_response(k_weighting(rate), int(rate))
    return _fir_overlap_add(np.asarray(samples, dtype=np.float64), h)


def block_mean_squares(weighted: np.ndarray, rate: int) -> np.ndarray:
    """Mean square of every 400 ms gating block (75 % overlap), pyloudnorm's block boundaries.

    ``numBlocks = int(round((T - 0.4) / 0.1)) + 1`` (numpy half-to-even rounding); block j spans samples
    ``int(0.4 * (j * 0.25) * rate) .. int(0.4 * (j * 0.25 + 1) * rate)``; the sum is divided by
    ``0.4 * rate`` even for a short last block.
    """
    n = len(weighted)
    step = 1.0 - _OVERLAP
    duration = n / rate
    blocks = int(np.round((duration - BLOCK_SECONDS) / (BLOCK_SECONDS * step))) + 1
    scale = 1.0 / (BLOCK_SECONDS * rate)
    z = np.empty(max(blocks, 0))
    sq = np.square(weighted)
    for j in range(blocks):
        lo = int(BLOCK_SECONDS * (j * step) * rate)
        hi = int(BLOCK_SECONDS * (j * step + 1) * rate)
        z[j] = scale * np.sum(sq[lo:hi])
    return z


def integrated_loudness(samples: np.ndarray, rate: int) -> float:
    """Gated integrated loudness of a mono signal in LUFS; ``-inf`` when no block passes -70 LUFS.

    Raises:
        ValueError: fewer samples than one 400 ms block (pyloudnorm raises too).
    """
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"expected a mono signal [N]; got shape {x.shape}")
    if len(x) < BLOCK_SECONDS * rate:
        raise ValueError(
            f"audio of {len(x) / rate:.3f} s is shorter than one {BLOCK_SECONDS} s loudness block"
        )
    z = block_mean_squares(k_weight(x, rate), rate)
    with np.errstate(divide="ignore"):
        lj = -0.691 + 10.0 * np.log10(z)
    above_abs = z[lj >= ABSOLUTE_GATE]
    if len(above_abs) == 0:
        return float("-inf")
    gamma_r = -0.691 + 10.0 * np.log10(np.mean(above_abs)) - 10.0
    gated = z[(lj > gamma_r) & (lj > ABSOLUTE_GATE)]
    mean = float(np.mean(gated)) if len(gated) else 0.0
    if mean <= 0.0:
        return float("-inf")
    return -0.691 + 10.0 * math.log10(mean)


def normalise_loudness(
    samples: np.ndarray, rate: int, target: float = TARGET_LUFS
) -> tuple[np.ndarray, float]:
    """Scale a mono signal to ``target`` LUFS, the official way; returns ``(float32 [N], measured LUFS)``.

    Like the official ``loudness_norm``: when ``abs(loudness) > 100`` (silence gives -inf) the signal is
    returned unchanged; otherwise ``samples * 10 ** ((target - loudness) / 20)``, no clipping.
    """
    x = np.asarray(samples)
    loudness = integrated_loudness(x, rate)
    if not abs(loudness) <= 100.0:
        return x.astype(np.float32, copy=True), loudness
    gain = np.power(10.0, (target - loudness) / 20.0)
    return (gain * x.astype(np.float64)).astype(np.float32), loudness
