"""Tier 1: the ComfyUI-free helpers of the SVI Drift Report node (where video and report go)."""

from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pack_module(name: str):
    """Import ``<pack>.<name>`` without running the pack's ComfyUI entry point."""
    pkg = "svi_pack_under_test"
    if pkg not in sys.modules:
        mod = types.ModuleType(pkg)
        mod.__path__ = [str(ROOT)]
        sys.modules[pkg] = mod
    return importlib.import_module(f"{pkg}.{name}")


dp = _pack_module("nodes.drift_paths")
errors = _pack_module("svi_core.errors")


def _run(root: Path, name: str) -> Path:
    run = root / "svi" / name
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"clips": []}))
    (run / f"{name}.mp4").write_bytes(b"x")
    return run


def test_run_name_points_at_the_run_folder_and_its_video(tmp_path):
    run = _run(tmp_path, "myrun")
    t = dp.resolve_target(str(tmp_path), "myrun", None)
    assert Path(t.video) == (run / "myrun.mp4").resolve()
    assert Path(t.run_dir) == run.resolve()
    assert Path(t.out_dir) == run.resolve()


def test_run_name_cannot_escape_the_output_folder(tmp_path):
    out = tmp_path / "output"
    out.mkdir()
    _run(tmp_path, "evil")  # outside `out`
    with pytest.raises(errors.SVIError, match="no video"):
        dp.resolve_target(str(out), "../../svi/evil", None)


def test_missing_run_and_empty_inputs_are_explained(tmp_path):
    with pytest.raises(errors.SVIError, match="run 'nope' has no video"):
        dp.resolve_target(str(tmp_path), "nope", None)
    with pytest.raises(errors.SVIError, match="give a run name"):
        dp.resolve_target(str(tmp_path), "  ", None)
    with pytest.raises(errors.SVIError, match="video file not found"):
        dp.resolve_target(str(tmp_path), "x", str(tmp_path / "missing.mp4"))


def test_video_in_a_run_folder_reports_into_that_run(tmp_path):
    run = _run(tmp_path, "r1")
    t = dp.resolve_target(str(tmp_path), "ignored", str(run / "r1.mp4"))
    assert Path(t.run_dir) == run.resolve() and Path(t.out_dir) == run.resolve()


def test_loose_video_inside_output_gets_a_sibling_folder(tmp_path):
    (tmp_path / "clips").mkdir()
    video = tmp_path / "clips" / "my video.mp4"
    video.write_bytes(b"x")
    t = dp.resolve_target(str(tmp_path), "", str(video))
    assert t.run_dir is None
    assert Path(t.out_dir) == (tmp_path / "clips" / "my_video_drift").resolve()


def test_video_outside_output_reports_inside_output(tmp_path):
    out = tmp_path / "output"
    out.mkdir()
    video = tmp_path / "input" / "clip.mp4"
    video.parent.mkdir()
    video.write_bytes(b"x")
    t = dp.resolve_target(str(out), "", str(video))
    assert Path(t.out_dir) == (out / "svi_drift" / "clip").resolve()
    assert t.run_dir is None


def test_summary_text_formats_numbers_none_and_path():
    text = dp.summary_text(
        {"clips": 3, "colour_delta_e_last": np.float64(12.34567), "ssim_anchor_last": None,
         "vde_colour": float("nan"), "motion_last": np.float32(0.5)},
        "/o/report.json",
    )  # fmt: skip
    assert text.splitlines() == [
        "clips: 3",
        "colour_delta_e_last: 12.35",
        "ssim_anchor_last: n/a",
        "vde_colour: n/a",
        "motion_last: 0.5",
        "report: /o/report.json",
    ]


def test_pil_plot_draws_series_and_seams_where_the_clips_start():
    dplot = _pack_module("svi_core.report_plot")
    n = 21
    per_frame = {k: [float(j) for j in range(n)] for k, _ in dplot.SERIES}
    per_frame["ssim_anchor"] = [None] * n  # an undefined series leaves its panel empty
    clips = [{"start": 0}, {"start": 10}]
    img = dplot.render_report({"per_frame": per_frame, "clips": clips}, "t")
    assert img.size == (2 * dplot.PANEL_W, 3 * dplot.PANEL_H + dplot.MARGIN)
    arr = np.asarray(img)
    m = dplot.MARGIN
    x_seam = round(m + 10 / (n - 1) * (dplot.PANEL_W - 2 * m))
    y_mid = 2 * m + (dplot.PANEL_H - 2 * m) // 4  # upper part of panel 0: above the rising line
    assert tuple(arr[y_mid, x_seam]) == (240, 150, 150)
    blue = (arr == np.array([30, 80, 200], dtype=np.uint8)).all(axis=-1)

    def panel(i: int) -> np.ndarray:
        rows = slice((i // 2) * dplot.PANEL_H + 2 * m, (i // 2 + 1) * dplot.PANEL_H)
        return blue[rows, (i % 2) * dplot.PANEL_W : (i % 2 + 1) * dplot.PANEL_W]

    assert panel(0).sum() > 100  # the rising delta_e line
    assert panel(4).sum() == 0  # ssim_anchor all None


def test_symlinked_report_folders_cannot_lead_outside_the_output(tmp_path):
    """A `<loose>_drift` or `svi_drift` folder planted as a symlink to somewhere else is
    refused (issue 10 I): the containment check runs on the resolved path."""
    out, elsewhere = tmp_path / "output", tmp_path / "elsewhere"
    (out / "clips").mkdir(parents=True)
    elsewhere.mkdir()
    video = out / "clips" / "loose.mp4"
    video.write_bytes(b"x")
    (out / "clips" / "loose_drift").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(errors.SVIError, match="outside the output folder"):
        dp.resolve_target(str(out), "", str(video))
    outside_video = tmp_path / "input" / "clip.mp4"
    outside_video.parent.mkdir()
    outside_video.write_bytes(b"x")
    (out / "svi_drift").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(errors.SVIError, match="outside the output folder"):
        dp.resolve_target(str(out), "", str(outside_video))
    assert list(elsewhere.iterdir()) == []
