"""Error to a known true continuation and bootstrap intervals (svi_core/ground_truth.py), on
synthetic videos whose drift is known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from svi_core.drift import clip_spans
from svi_core.errors import SVIError
from svi_core.ground_truth import (
    bootstrap_ci,
    clip_truth_error,
    paired_bootstrap_ci,
    truth_errors,
    wasserstein_1d,
)

H, W = 32, 48


def _moving(frames: int, seed: int = 0) -> list[np.ndarray]:
    """A textured pattern (values 40..200, no clipping under small offsets) moving 1 px/frame."""
    rng = np.random.default_rng(seed)
    big = rng.integers(40, 200, size=(H, W + frames, 3)).astype(np.uint8)
    return [np.ascontiguousarray(big[:, t : t + W]) for t in range(frames)]


def _lab_L(v: float) -> float:
    """CIE L* of an sRGB grey v in [0, 1] (written out here, independent of svi_core)."""
    lin = v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4
    f = lin ** (1 / 3) if lin > (6 / 29) ** 3 else lin / (3 * (6 / 29) ** 2) + 4 / 29
    return 116 * f - 16


def test_colour_offset_growing_per_clip():
    """Clip k is the truth + 3k grey levels: rmse = 3k / 255 exactly; ΔE and W1 grow with k."""
    truth = _moving(5 * 9)
    spans = clip_spans(len(truth), 9, 0)
    gen = []
    for sp in spans:
        for i in range(sp.start, sp.end):
            gen.append((truth[i].astype(np.int16) + 3 * sp.index).astype(np.uint8))
    errs = truth_errors(iter(gen), iter(truth), spans)
    assert [e.index for e in errs] == [0, 1, 2, 3, 4]
    for e in errs:
        assert e.rmse == pytest.approx(3 * e.index / 255, abs=1e-6)
        assert e.motion_ratio == pytest.approx(1.0)
    assert errs[0].delta_e == 0 and errs[0].colour_w1 == 0
    de = [e.delta_e for e in errs]
    w1 = [e.colour_w1 for e in errs]
    assert all(b > a for a, b in zip(de, de[1:], strict=False))
    assert all(b > a for a, b in zip(w1, w1[1:], strict=False))


def test_uniform_grey_delta_e_matches_the_cie_formula():
    truth = [np.full((H, W, 3), 100, np.uint8)] * 3
    gen = [np.full((H, W, 3), 140, np.uint8)] * 3
    e = clip_truth_error(gen, truth)
    want = abs(_lab_L(140 / 255) - _lab_L(100 / 255))
    assert e.delta_e == pytest.approx(want, rel=1e-6)
    # every pixel moved by the same L*: W1 over (L, a, b) = that / 3 (a, b of grey are ~0)
    assert e.colour_w1 == pytest.approx(want / 3, rel=1e-3)
    assert e.rmse == pytest.approx(40 / 255, rel=1e-6)


def test_content_in_other_places_has_no_colour_error_but_a_pixel_error():
    """The same frames rolled by 7 px (objects elsewhere, colours identical): W1 = ΔE = 0,
    motion as the truth's, rmse > 0."""
    truth = _moving(9, seed=1)
    gen = [np.roll(f, 7, axis=1) for f in truth]
    e = clip_truth_error(gen, truth)
    assert e.colour_w1 == pytest.approx(0.0, abs=1e-9)
    assert e.delta_e == pytest.approx(0.0, abs=1e-9)
    assert e.motion_ratio == pytest.approx(1.0)
    assert e.rmse > 0.1


def test_frozen_and_blurred_clips():
    truth = _moving(9, seed=2)
    frozen = clip_truth_error([truth[0]] * 9, truth)
    assert frozen.motion_ratio == 0.0
    blurred = []
    for f in truth:
        x = f.astype(np.float32)
        x = (x + np.roll(x, 1, 0) + np.roll(x, -1, 0) + np.roll(x, 1, 1) + np.roll(x, -1, 1)) / 5
        blurred.append(x.round().astype(np.uint8))
    b = clip_truth_error(blurred, truth)
    assert b.sharpness_log2 < -1.0  # a 5-tap box blur removes most detail energy
    assert b.colour_w1 > 0.5  # lost contrast: the value distribution narrows
    same = clip_truth_error(truth, truth)
    assert same.sharpness_log2 == 0.0 and same.rmse == 0.0 and same.colour_w1 == 0.0


def test_mismatched_inputs_are_refused():
    truth = _moving(9)
    with pytest.raises(SVIError, match="true frames end"):
        truth_errors(iter(truth), iter(truth[:5]), clip_spans(9, 9, 0))
    with pytest.raises(SVIError, match="video ends"):
        truth_errors(iter(truth[:5]), iter(truth), clip_spans(9, 9, 0))
    with pytest.raises(SVIError, match="uint8"):
        clip_truth_error([truth[0][:16]], [truth[0]])
    with pytest.raises(SVIError, match="size"):
        wasserstein_1d(np.zeros(3), np.zeros(4))


def test_wasserstein_of_shifted_samples_is_the_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=1000)
    assert wasserstein_1d(a, a + 2.5) == pytest.approx(2.5)
    assert wasserstein_1d(a, rng.permutation(a)) == 0.0


# ------------------------------------------------------------------------------ bootstrap


def test_bootstrap_interval_matches_the_normal_theory_and_repeats():
    rng = np.random.default_rng(1)
    x = rng.normal(5.0, 2.0, size=400)
    ci = bootstrap_ci(x, n_boot=4000, seed=3)
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert ci.mean == pytest.approx(x.mean())
    assert ci.lo == pytest.approx(x.mean() - 1.96 * se, abs=0.25 * se)
    assert ci.hi == pytest.approx(x.mean() + 1.96 * se, abs=0.25 * se)
    again = bootstrap_ci(x, n_boot=4000, seed=3)
    assert again.lo == ci.lo and again.hi == ci.hi
    # per-clip curves: intervals per trailing index
    curves = rng.normal(size=(16, 50)) + np.arange(50)
    c = bootstrap_ci(curves, n_boot=500)
    assert c.lo.shape == (50,) and np.all(c.lo < c.mean) and np.all(c.mean < c.hi)


def test_bootstrap_coverage_of_16_scenes():
    """Over 300 simulated experiments of 16 scenes, the 95 % interval holds the true mean in
    roughly 95 % of them (percentile bootstrap undercovers a little at n = 16)."""
    rng = np.random.default_rng(2)
    hits = 0
    for i in range(300):
        x = rng.normal(0.0, 1.0, size=16)
        ci = bootstrap_ci(x, n_boot=1000, seed=i)
        hits += bool(ci.lo <= 0.0 <= ci.hi)
    assert 0.86 <= hits / 300 <= 0.99


def test_paired_interval_separates_what_per_model_intervals_cannot():
    """Two models on the same 16 scenes, b = a + 0.3 everywhere but the scenes differ by
    ~N(0, 3): the per-model intervals overlap, the paired difference excludes 0."""
    rng = np.random.default_rng(4)
    scene = rng.normal(0, 3, size=16)
    a = scene + rng.normal(0, 0.05, size=16)
    b = a + 0.3
    ca, cb = bootstrap_ci(a), bootstrap_ci(b)
    assert ca.hi > cb.lo  # overlapping
    d = paired_bootstrap_ci(b, a)
    assert d.lo > 0.2 and d.hi < 0.4


def test_bootstrap_refuses_bad_input():
    with pytest.raises(SVIError, match="n_scenes >= 2"):
        bootstrap_ci(np.array([1.0]))
    with pytest.raises(SVIError, match="NaN"):
        bootstrap_ci(np.array([1.0, np.nan]))
    with pytest.raises(SVIError, match="shapes differ"):
        paired_bootstrap_ci(np.zeros(3), np.zeros(4))
