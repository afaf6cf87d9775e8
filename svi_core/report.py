"""Drift report of a long video: ``report.json`` + ``report.png``.

    python -m svi_core report VIDEO --out DIR [--clip-frames F --overlap m | --run DIR]
                                              [--anchor IMG] [--first-clip-whole]

``build_report`` is the function a ComfyUI node calls. Metrics are described in
``svi_core.drift``; the PNG plots each metric over time (frames) with the seams between clips
marked, and the seam ratio per seam.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .drift import ClipSpan, DriftReport, analyse_video, video_size
from .errors import SVIError
from .log import logger


@dataclass(frozen=True)
class ReportResult:
    """Paths of the written report and its headline numbers (``DriftReport.summary()``)."""

    json_path: str
    png_path: str | None
    summary: dict


def load_anchor(path: str, height: int, width: int) -> np.ndarray:
    """Anchor image file -> uint8 ``[height, width, 3]`` RGB, stretched to the video size
    (bicubic, the same rule as the reference image: never cropped)."""
    from PIL import Image

    if not os.path.isfile(path):
        raise SVIError(f"report: anchor image not found: {path}")
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (width, height):
            im = im.resize((width, height), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8).copy()


def layout_from_run(run_dir: str) -> tuple[list[ClipSpan], int, int]:
    """(clip spans, clip_frames, overlap) of a run folder's stitched video, from its
    ``manifest.json`` (``svi_core.run_store``): clip k starts after the frames kept by clips
    0..k-1; the last clip also owns its tail. A run that continues a video (extend) starts
    with that video as span 0 (drift is then measured against the original)."""
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        raise SVIError(
            f"report: no manifest.json in run folder {run_dir}; pass --clip-frames and --overlap "
            "instead"
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    clips = data.get("clips") or []
    if not clips:
        raise SVIError(f"report: {path} lists no finished clip")
    spans, start = [], 0
    prefix = data.get("prefix")
    if isinstance(prefix, dict) and int(prefix.get("frames", 0)) > 0:
        start = int(prefix["frames"])
        spans.append(ClipSpan(0, 0, start))
    for i, c in enumerate(clips):
        n = int(c["frames_kept"]) + (int(c.get("tail_frames") or 0) if i == len(clips) - 1 else 0)
        spans.append(ClipSpan(len(spans), start, start + n))
        start += n
    settings = data.get("settings", {})
    frames = int(settings.get("frames", 0) or 0)
    overlap = settings.get("overlap")
    if overlap is None:
        overlap = settings.get("motion_frames", 0)
    return spans, frames, int(overlap or 0)


def plot_report(rep: DriftReport, png_path: str, title: str = "") -> None:
    """Each per-frame metric over time with seams marked; seam ratio per seam."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [
        ("delta_e", "colour ΔE vs clip 0"),
        ("brightness", "brightness (luma)"),
        ("contrast", "contrast (luma std)"),
        ("sharpness", "sharpness (Laplacian var)"),
        ("ssim_anchor", f"SSIM vs anchor ({rep.anchor_source})"),
        ("motion", "motion (mean |frame diff|)"),
    ]
    fig, axes = plt.subplots(4, 2, figsize=(12, 11))
    axes = axes.ravel()
    seams = [c.start for c in rep.clips[1:]]
    for ax, (key, label) in zip(axes, series, strict=False):
        y = rep.per_frame[key]
        ax.plot(np.arange(len(y)), y, lw=0.8)
        for s in seams:
            ax.axvline(s, color="r", alpha=0.25, lw=0.6)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("frame", fontsize=8)
    ax = axes[6]
    ax.plot([c.index for c in rep.clips], [c.flicker for c in rep.clips], "o-", ms=3)
    ax.set_title("flicker per clip", fontsize=9)
    ax.set_xlabel("clip", fontsize=8)
    ax = axes[7]
    sr = [(c.index, c.seam_ratio) for c in rep.clips if c.seam_ratio is not None]
    if sr:
        ax.bar([i for i, _ in sr], [v for _, v in sr])
        ax.axhline(1.0, color="k", lw=0.6, ls="--")
    ax.set_title("seam ratio (jump / median change; 1 = invisible)", fontsize=9)
    ax.set_xlabel("clip (seam at its start)", fontsize=8)
    fig.suptitle(title or f"drift report: {len(rep.clips)} clips, {rep.frames} frames", fontsize=11)
    fig.tight_layout()
    fig.savefig(png_path, dpi=80)
    plt.close(fig)


def build_report(
    video_path: str,
    out_dir: str,
    clip_frames: int,
    overlap: int,
    anchor: str | np.ndarray | None = None,
    first_clip_whole: bool = False,
    plot: bool = True,
    spans: Sequence[ClipSpan] | None = None,
) -> ReportResult:
    """Measure the drift of ``video_path`` and write ``out_dir/report.json`` (+ ``report.png``).

    Args:
        video_path: a video file (mp4 etc.), read frame by frame.
        out_dir: output folder (created); the files are always written inside it.
        clip_frames, overlap: clip layout (see ``svi_core.drift.clip_spans``).
        anchor: reference image: a file path, a uint8 ``[H, W, 3]`` array, or None (the
            video's first frame).
        first_clip_whole: SVI 2.0 Pro stitching (later clips drop their first frames).
        plot: write the PNG (needs matplotlib).
        spans: explicit clip spans (e.g. from ``layout_from_run``) instead of the layout rule.
    """
    if not os.path.isfile(video_path):
        raise SVIError(f"report: video file not found: {video_path}")
    h, w = video_size(video_path)
    anchor_img = load_anchor(anchor, h, w) if isinstance(anchor, str) else anchor
    rep = analyse_video(video_path, clip_frames, overlap, anchor_img, first_clip_whole, spans)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    data = rep.to_dict() | {"video": str(video_path)}
    json_path.write_text(json.dumps(data, indent=1, allow_nan=False, default=_json_default))
    png_path = None
    if plot:
        png_path = str(out / "report.png")
        plot_report(rep, png_path, title=f"{Path(video_path).name}: {len(rep.clips)} clips")
    summary = rep.summary()
    logger.info("drift report %s: %s", json_path, summary)
    return ReportResult(str(json_path), png_path, summary)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m svi_core report VIDEO --out DIR ...``; returns the exit code."""
    p = argparse.ArgumentParser(
        prog="python -m svi_core report",
        description="Measure colour/brightness/contrast/sharpness drift, flicker, seams, "
        "similarity to the anchor and motion of a long video, clip by clip.",
    )
    p.add_argument("video")
    p.add_argument("--out", required=True, help="output folder for report.json and report.png")
    p.add_argument("--clip-frames", type=int, help="frames per generated clip (e.g. 81)")
    p.add_argument("--overlap", type=int, help="frames each clip shares with the next (e.g. 5)")
    p.add_argument("--run", help="run folder (reads the clip layout from its manifest.json)")
    p.add_argument("--anchor", help="reference image (default: the video's first frame)")
    p.add_argument("--first-clip-whole", action="store_true", help="SVI 2.0 Pro stitching")
    p.add_argument("--no-plot", action="store_true")
    a = p.parse_args(list(argv) if argv is not None else None)
    spans = None
    if a.run:
        try:
            spans, clip_frames, overlap = layout_from_run(a.run)
        except SVIError as e:
            logger.error("%s", e)
            return 2
    elif a.clip_frames is not None and a.overlap is not None:
        clip_frames, overlap = a.clip_frames, a.overlap
    else:
        p.error("give the clip layout: --clip-frames F --overlap m, or --run DIR")
    try:
        res = build_report(
            a.video,
            a.out,
            clip_frames,
            overlap,
            a.anchor,
            a.first_clip_whole,
            plot=not a.no_plot,
            spans=spans,
        )
    except SVIError as e:
        logger.error("%s", e)
        return 2
    logger.info("wrote %s%s", res.json_path, f" and {res.png_path}" if res.png_path else "")
    return 0
