"""Drift metrics on synthetic videos whose drift is known by construction."""

from __future__ import annotations

import json
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from svi_core.drift import (
    DriftAccumulator,
    analyse_frames,
    clip_spans,
    laplacian_variance,
    luma,
    seam_ratio,
    srgb_to_lab,
    ssim,
    vde,
)
from svi_core.errors import SVIError
from svi_core.report import build_report, main

F, M = 9, 1  # clip frames, overlap
STRIDE = F - M


def texture(seed: int, h: int = 32, w: int = 48) -> np.ndarray:
    """A smooth-plus-detail colour texture in [0, 1], [h, w, 3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / 8.0
    base = rng.uniform(0.3, 0.7, 3)
    img = base + 0.15 * np.sin(yy + rng.uniform(0, 6))[..., None] * rng.uniform(-1, 1, 3)
    img = img + 0.1 * ((np.floor(yy * 2) + np.floor(xx * 2)) % 2 - 0.5)[..., None]
    return np.clip(img, 0, 1)


def moving(img: np.ndarray, t: int) -> np.ndarray:
    """The texture panned by t pixels (so consecutive frames differ a little)."""
    return np.roll(img, t, axis=1)


def u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def video(n_clips: int, frame_fn) -> list[np.ndarray]:
    total = n_clips * F - (n_clips - 1) * M
    return [frame_fn(t, min(t // STRIDE, n_clips - 1)) for t in range(total)]


def test_lab_matches_published_values():
    # CIE Lab (D65) of sRGB primaries, as tabulated e.g. by Bruce Lindbloom's calculator
    lab = srgb_to_lab(np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(lab[0], [100.0, 0.0, 0.0], atol=0.02)
    np.testing.assert_allclose(lab[1], [53.24, 80.09, 67.20], atol=0.05)
    np.testing.assert_allclose(lab[2], [0.0, 0.0, 0.0], atol=1e-9)


def test_ssim_properties():
    a = luma(u8(texture(0)))
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    noisy = np.clip(a + np.random.default_rng(1).normal(0, 0.1, a.shape), 0, 1)
    s = ssim(a, noisy)
    assert 0.0 < s < 0.9
    assert ssim(noisy, a) == pytest.approx(s, abs=1e-6)
    assert ssim(a, np.clip(a + 0.02 * noisy, 0, 1)) > s  # less noise, more similar


def test_laplacian_variance_flat_is_zero_and_edges_count():
    assert laplacian_variance(np.full((16, 16), 0.5, np.float32)) == 0.0
    step = np.zeros((16, 16), np.float32)
    step[:, 8:] = 1.0
    assert laplacian_variance(step) > 0.05


def test_vde_by_hand():
    # N = 3: weights 2 (clip 2) and 1 (clip 3): 2 * 0.1 + 1 * 0.1
    assert vde([1.0, 1.1, 0.9]) == pytest.approx(0.3)
    assert vde([2.0, 2.0, 2.0, 2.0]) == 0.0
    assert vde([0.0, 0.0]) == 0.0
    assert vde([0.0, 1.0]) is None


def test_clip_spans_both_stitching_rules():
    total = 3 * 17 - 2 * 5
    sp = clip_spans(total, 17, 5)
    assert [(s.start, s.end) for s in sp] == [(0, 12), (12, 24), (24, 41)]
    total_pro = 17 + 2 * (17 - 5)
    sp = clip_spans(total_pro, 17, 5, first_clip_whole=True)
    assert [(s.start, s.end) for s in sp] == [(0, 17), (17, 29), (29, 41)]
    with pytest.raises(SVIError, match="overlap"):
        clip_spans(41, 5, 5)


def test_darkening_video_brightness_drift_is_linear():
    tex = texture(2)
    n = 8
    frames = video(n, lambda t, k: u8(moving(tex, t) * (1 - 0.01 * k)))
    rep = analyse_frames(frames, F, M)
    assert len(rep.clips) == n
    b = np.array([c.brightness for c in rep.clips])
    rel = b / b[0]
    # 1 % darker per clip (up to uint8 rounding)
    np.testing.assert_allclose(rel, 1 - 0.01 * np.arange(n), atol=0.002)
    drift = np.array(rep.drift("brightness"))
    assert np.all(np.diff(drift) < 0)
    de = np.array(rep.drift("colour"))
    assert de[0] == 0.0 and np.all(np.diff(de) > 0)
    assert rep.vde["brightness"] > 0 and rep.vde["colour"] > 0
    assert all(c.motion > 0 for c in rep.clips)


def test_hard_cut_spikes_only_its_seam():
    a, b = texture(3), texture(4)
    cut = 3
    frames = video(6, lambda t, k: u8(moving(a if k < cut else b, t)))
    rep = analyse_frames(frames, F, M)
    ratios = {c.index: c.seam_ratio for c in rep.clips if c.seam_ratio is not None}
    assert ratios[cut] > 5.0
    assert all(r < 2.0 for k, r in ratios.items() if k != cut)


def test_blur_ramp_sharpness_decreases():
    tex = texture(5)

    def blur(img: np.ndarray, times: int) -> np.ndarray:
        for _ in range(times):
            img = (img + np.roll(img, 1, 0) + np.roll(img, -1, 0) + np.roll(img, 1, 1)
                   + np.roll(img, -1, 1)) / 5.0  # fmt: skip
        return img

    frames = video(5, lambda t, k: u8(blur(moving(tex, t), k)))
    rep = analyse_frames(frames, F, M)
    sharp = [c.sharpness for c in rep.clips]
    assert all(x > y for x, y in zip(sharp, sharp[1:], strict=False))
    assert rep.summary()["sharpness_change_last"] < -0.5


def test_frozen_video_has_exactly_zero_motion():
    img = u8(texture(6))
    frames = video(4, lambda t, k: img)
    rep = analyse_frames(frames, F, M)
    assert all(c.motion == 0.0 for c in rep.clips)
    assert all(c.flicker == 0.0 for c in rep.clips)
    assert all(c.ssim_anchor == pytest.approx(1.0, abs=1e-6) for c in rep.clips)
    assert all(c.seam_ratio == pytest.approx(1.0) for c in rep.clips[1:])


def test_seam_ratio_frozen_neighbourhood():
    d = np.zeros(20)
    d[10] = 0.2
    assert seam_ratio(d, 10) > 100
    assert seam_ratio(np.zeros(20), 10) == pytest.approx(1.0)


def test_bad_frames_are_refused():
    acc = DriftAccumulator()
    with pytest.raises(SVIError, match="uint8"):
        acc.push(np.zeros((8, 8, 3), np.float32))
    acc = DriftAccumulator(anchor=np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(SVIError, match="anchor"):
        acc.push(np.zeros((16, 16, 3), np.uint8))


def write_mp4(path, frames):
    h, w = frames[0].shape[:2]
    gen = imageio_ffmpeg.write_frames(
        str(path), (w, h), fps=16, codec="libx264", quality=None,
        output_params=["-crf", "10", "-pix_fmt", "yuv444p"], macro_block_size=1,
    )  # fmt: skip
    gen.send(None)
    for f in frames:
        gen.send(np.ascontiguousarray(f))
    gen.close()


def test_report_from_mp4_and_cli(tmp_path):
    tex = texture(7)
    n = 5
    frames = video(n, lambda t, k: u8(moving(tex, t) * (1 - 0.02 * k)))
    vid = tmp_path / "v.mp4"
    write_mp4(vid, frames)
    res = build_report(str(vid), str(tmp_path / "rep"), F, M)
    data = json.loads(open(res.json_path).read())
    assert data["frames"] == len(frames)
    assert len(data["clips"]) == n
    assert (tmp_path / "rep" / "report.png").stat().st_size > 1000
    b = [c["brightness"] for c in data["clips"]]
    assert all(x > y for x, y in zip(b, b[1:], strict=False))
    assert res.summary["colour_delta_e_last"] > 0.5

    # --run: spans from a run manifest (frames_kept / tail_frames per clip)
    run = tmp_path / "run"
    run.mkdir()
    clips = [
        {"frames_kept": STRIDE, "tail_frames": M if i == n - 1 else 0, "index": i} for i in range(n)
    ]
    (run / "manifest.json").write_text(
        json.dumps({"settings": {"frames": F, "motion_frames": M}, "clips": clips})
    )
    assert main([str(vid), "--out", str(tmp_path / "rep2"), "--run", str(run), "--no-plot"]) == 0
    data2 = json.loads((tmp_path / "rep2" / "report.json").read_text())
    assert [c["start"] for c in data2["clips"]] == [c["start"] for c in data["clips"]]
    assert main([str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "r3"), "--clip-frames",
                 "9", "--overlap", "1"]) == 2  # fmt: skip


def test_anchor_file_is_stretched_to_the_video_and_compared(tmp_path):
    from PIL import Image

    tex = texture(8)
    frames = video(3, lambda t, k: u8(moving(tex, t)))
    vid = tmp_path / "v.mp4"
    write_mp4(vid, frames)
    # the anchor is the first frame at twice the size: stretched back, it matches frame 0
    Image.fromarray(frames[0]).resize((96, 64), Image.BICUBIC).save(tmp_path / "a.png")
    other = u8(np.random.default_rng(9).uniform(0, 1, (32, 48, 3)))  # unrelated picture
    Image.fromarray(other).save(tmp_path / "b.png")
    same = build_report(str(vid), str(tmp_path / "r1"), F, M, str(tmp_path / "a.png"), plot=False)
    diff = build_report(str(vid), str(tmp_path / "r2"), F, M, str(tmp_path / "b.png"), plot=False)
    data = json.loads(open(same.json_path).read())
    other_data = json.loads(open(diff.json_path).read())
    # frame 0 against the anchor: the stretched copy of frame 0 is far more similar
    assert data["per_frame"]["ssim_anchor"][0] > 0.8
    assert data["per_frame"]["ssim_anchor"][0] > other_data["per_frame"]["ssim_anchor"][0] + 0.3
    assert data["anchor"] == "image"
    assert data["clips"][0]["delta_e_anchor"] < 2.0


def test_run_folder_without_manifest_is_refused(tmp_path):
    from svi_core.report import layout_from_run

    with pytest.raises(SVIError, match="manifest.json"):
        layout_from_run(str(tmp_path))


def test_report_never_writes_through_symlinks(tmp_path):
    """build_report(inside=root) refuses a report folder that resolves outside root, and a
    report.json planted as a symlink is replaced, not written through (issue 10 I)."""
    frames = video(2, lambda t, k: u8(moving(texture(3), t)))
    vid = tmp_path / "v.mp4"
    write_mp4(vid, frames)
    root, elsewhere = tmp_path / "output", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / "rep").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(SVIError, match="outside"):
        build_report(str(vid), str(root / "rep"), F, M, plot=False, inside=str(root))
    assert list(elsewhere.iterdir()) == []
    victim = elsewhere / "victim.txt"
    victim.write_text("keep me")
    (root / "rep2").mkdir()
    (root / "rep2" / "report.json").symlink_to(victim)
    res = build_report(str(vid), str(root / "rep2"), F, M, plot=False, inside=str(root))
    assert victim.read_text() == "keep me"
    assert not Path(res.json_path).is_symlink() and json.loads(Path(res.json_path).read_text())


def test_report_plot_falls_back_to_pil_without_matplotlib(tmp_path, monkeypatch):
    """Without matplotlib (the standalone extra does not list it, ComfyUI does not ship it) the
    PNG is drawn with PIL instead of failing after the work is done (issue 10, 14)."""
    from PIL import Image

    from svi_core.report_plot import MARGIN, PANEL_H, PANEL_W

    frames = video(2, lambda t, k: u8(moving(texture(4), t)))
    vid = tmp_path / "v.mp4"
    write_mp4(vid, frames)
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # import -> ImportError
    res = build_report(str(vid), str(tmp_path / "rep"), F, M)
    with Image.open(res.png_path) as im:
        assert im.size == (2 * PANEL_W, 3 * PANEL_H + MARGIN)  # the PIL layout


def test_report_cli_infers_the_clip_layout(tmp_path, caplog):
    """`report VIDEO --out DIR` (the README's form) works without layout flags: from a run
    folder beside the video (<video>.run/ as `generate` writes it), else SVI's official 81/5,
    each choice logged (issue 10, 4)."""
    import logging

    frames = video(5, lambda t, k: u8(moving(texture(5), t)))
    vid = tmp_path / "film.mp4"
    write_mp4(vid, frames)
    with caplog.at_level(logging.INFO):
        assert main([str(vid), "--out", str(tmp_path / "r1"), "--no-plot"]) == 0
    assert "assuming SVI's official 81 frames per clip with 5 overlap" in caplog.text
    data = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert (data["clip_frames"], data["overlap"], len(data["clips"])) == (81, 5, 1)
    run = tmp_path / "film.run"
    run.mkdir()
    clips = [
        {"frames_kept": STRIDE, "tail_frames": M if i == 4 else 0, "index": i} for i in range(5)
    ]
    (run / "manifest.json").write_text(
        json.dumps({"settings": {"frames": F, "motion_frames": M}, "clips": clips})
    )
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main([str(vid), "--out", str(tmp_path / "r2"), "--no-plot"]) == 0
    assert f"clip layout from the run folder {run}" in caplog.text
    data = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert (data["clip_frames"], data["overlap"], len(data["clips"])) == (F, M, 5)
    assert main([str(vid), "--out", str(tmp_path / "r3"), "--clip-frames", "9"]) == 2


def test_rhythm_ratio_is_the_seam_ratio_of_the_4_frame_comb():
    """The baseline a seam is compared with (issue 10, 5): inside 13-frame clips, the change
    peaks every 4th frame (the Wan VAE's latent groups); rhythm_ratio is the seam ratio at
    those peaks. A still video gives 1; clips too short for a window give None."""
    from svi_core.drift import ClipSpan, rhythm_ratio

    spans = [ClipSpan(k, 12 * k, 12 * k + 12) for k in range(4)]
    diffs = np.full(48, 0.01)
    for sp in spans:
        diffs[sp.start + 1 : sp.end : 4] = 0.05  # the comb: frames 1, 5, 9 of every clip
    # window of 4 on each side of a peak: peaks at +-4, six flat frames -> median 0.01
    assert rhythm_ratio(diffs, spans) == pytest.approx((0.05 + 1e-4) / (0.01 + 1e-4))
    assert rhythm_ratio(np.zeros(48), spans) == pytest.approx(1.0)
    assert rhythm_ratio(diffs, [ClipSpan(k, 6 * k, 6 * k + 6) for k in range(8)]) is None


def test_report_explains_seams_and_the_comb():
    frames = video(4, lambda t, k: u8(moving(texture(6), t)))
    data = analyse_frames(frames, F, M).to_dict()
    assert {"seam_ratio", "motion"} <= set(data["notes"])
    assert "4-frame" in data["notes"]["motion"] and "rhythm_ratio" in data["notes"]["seam_ratio"]
    assert {"median_seam_ratio", "rhythm_ratio"} <= set(data["summary"])
