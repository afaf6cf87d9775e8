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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .drift import ClipSpan, analyse_video, video_size
from .errors import SVIError
from .log import logger
from .report_plot import save_plot


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
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (width, height):
                im = im.resize((width, height), Image.BICUBIC)
            return np.asarray(im, dtype=np.uint8).copy()
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # UnidentifiedImageError
        raise SVIError(
            f"report: anchor {path} cannot be read as an image ({type(e).__name__}); pass a "
            "PNG/JPEG/WebP file"
        ) from None


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
    try:
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
            tail = int(c.get("tail_frames") or 0) if i == len(clips) - 1 else 0
            n = int(c["frames_kept"]) + tail
            spans.append(ClipSpan(len(spans), start, start + n))
            start += n
        settings = data.get("settings", {})
        frames = int(settings.get("frames", 0) or 0)
        overlap = settings.get("overlap")
        if overlap is None and settings.get("carry") == "latent":
            overlap = 1 + 4 * int(settings.get("motion_latents") or 0)
        elif overlap is None:
            overlap = settings.get("motion_frames", 0)
        return spans, frames, int(overlap or 0)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        if isinstance(e, SVIError):
            raise
        raise SVIError(
            f"report: {path} is damaged ({type(e).__name__}: {e}); pass --clip-frames and "
            "--overlap instead"
        ) from None


def build_report(
    video_path: str,
    out_dir: str,
    clip_frames: int,
    overlap: int,
    anchor: str | np.ndarray | None = None,
    first_clip_whole: bool = False,
    plot: bool = True,
    spans: Sequence[ClipSpan] | None = None,
    inside: str | None = None,
) -> ReportResult:
    """Measure the drift of ``video_path`` and write ``out_dir/report.json`` (+ ``report.png``).

    Args:
        video_path: a video file (mp4 etc.), read frame by frame.
        out_dir: output folder (created); the files are always written inside it, each
            atomically (a temporary sibling renamed into place), so a symlink planted under
            the name ``report.json`` is replaced, never followed.
        clip_frames, overlap: clip layout (see ``svi_core.drift.clip_spans``).
        anchor: reference image: a file path, a uint8 ``[H, W, 3]`` array, or None (the
            video's first frame).
        first_clip_whole: SVI 2.0 Pro stitching (later clips drop their first frames).
        plot: write the PNG (matplotlib when installed, else a plain PIL drawing; skipped with
            a warning when neither is installed).
        spans: explicit clip spans (e.g. from ``layout_from_run``) instead of the layout rule.
        inside: a root folder ``out_dir`` must stay in once every symlink is resolved
            (SVIError otherwise, before anything is written); None = no such rule.
    """
    if not os.path.isfile(video_path):
        raise SVIError(f"report: video file not found: {video_path}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise SVIError(f"report: --out {out_dir} is a file; pass a folder (it is created)")
    out = _checked_out_dir(out_dir, inside)
    h, w = video_size(video_path)
    anchor_img = load_anchor(anchor, h, w) if isinstance(anchor, str) else anchor
    rep = analyse_video(video_path, clip_frames, overlap, anchor_img, first_clip_whole, spans)
    out.mkdir(parents=True, exist_ok=True)
    out = _checked_out_dir(str(out), inside)  # again: the folder exists now
    json_path = out / "report.json"
    data = rep.to_dict() | {"video": str(video_path)}
    text = json.dumps(data, indent=1, allow_nan=False, default=_json_default)
    _write_atomic(json_path, lambda tmp: tmp.write_text(text, encoding="utf-8") > 0)
    png_path = None
    if plot:
        title = f"{Path(video_path).name}: {len(rep.clips)} clips"
        if _write_atomic(out / "report.png", lambda tmp: save_plot(data, str(tmp), title)):
            png_path = str(out / "report.png")
    summary = rep.summary()
    logger.info("drift report %s: %s", json_path, summary)
    return ReportResult(str(json_path), png_path, summary)


def _checked_out_dir(out_dir: str, inside: str | None) -> Path:
    """``out_dir`` with symlinks resolved; SVIError when it leaves ``inside``."""
    real = Path(os.path.realpath(out_dir))
    if inside is not None:
        root = os.path.realpath(inside)
        if os.path.commonpath([root, str(real)]) != root:
            raise SVIError(
                f"report: the report folder {out_dir} resolves to {real}, outside {root} (a "
                "symlink?); remove or rename it"
            )
    return real


def _write_atomic(path: Path, write: Callable[[Path], bool]) -> bool:
    """Write ``path`` through ``write(tmp)`` on a temporary sibling, then rename it into place
    (replacing whatever ``path`` was, a symlink included, instead of writing through it).
    ``write`` returns False when it wrote nothing; then ``path`` is left alone."""
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    tmp.unlink(missing_ok=True)
    try:
        if not write(tmp):
            return False
        os.replace(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o)}")


OFFICIAL_LAYOUT = (81, 5)
"""The clip layout assumed when none is given and no run folder is found: SVI's official
81-frame clips with 5 motion frames (``film`` / ``v2``; ``shot`` / ``tom`` carry 1)."""


def find_run_folder(video_path: str) -> str | None:
    """The SVI run folder of a video, if one lies where SVI puts it: the video's own folder
    (the ComfyUI node writes ``<run>/<run>.mp4``), ``<video>.run/`` (the ``generate`` default
    ``--run-dir``) or ``<video folder>/run/`` (the demo). None if there is no manifest."""
    video = Path(video_path)
    for folder in (video.parent, video.with_suffix(".run"), video.parent / "run"):
        if (folder / "manifest.json").is_file():
            return str(folder)
    return None


def resolve_layout(
    video_path: str, run: str | None, clip_frames: int | None, overlap: int | None
) -> tuple[list[ClipSpan] | None, int, int]:
    """(spans or None, clip_frames, overlap) of a report: ``--run``, else ``--clip-frames`` +
    ``--overlap``, else the run folder found beside the video (:func:`find_run_folder`), else
    :data:`OFFICIAL_LAYOUT`; each choice is logged."""
    if run:
        spans, f, m = layout_from_run(run)
        return spans, f, m
    if (clip_frames is None) != (overlap is None):
        raise SVIError("report: give both --clip-frames and --overlap (or neither, or --run)")
    if clip_frames is not None and overlap is not None:
        return None, clip_frames, overlap
    found = find_run_folder(video_path)
    if found is not None:
        logger.info("report: clip layout from the run folder %s (its manifest.json)", found)
        spans, f, m = layout_from_run(found)
        return spans, f, m
    f, m = OFFICIAL_LAYOUT
    logger.info(
        "report: no clip layout given and no run folder beside the video: assuming SVI's "
        "official %d frames per clip with %d overlap (pass --clip-frames/--overlap or --run "
        "for other settings)",
        f,
        m,
    )
    return None, f, m


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m svi_core report VIDEO --out DIR ...``; returns the exit code."""
    p = argparse.ArgumentParser(
        prog="python -m svi_core report",
        description="Measure colour/brightness/contrast/sharpness drift, flicker, seams, "
        "similarity to the anchor and motion of a long video, clip by clip. The clip layout "
        "comes from --run, else --clip-frames/--overlap, else the run folder beside the video "
        "(<video>.run/, run/, or the video's own folder), else SVI's official 81/5.",
    )
    p.add_argument("video", help="the video file (e.g. an mp4 written by SVI)")
    p.add_argument("--out", required=True, help="output folder for report.json and report.png")
    p.add_argument("--clip-frames", type=int, help="frames per generated clip (e.g. 81)")
    p.add_argument("--overlap", type=int, help="frames each clip shares with the next (e.g. 5)")
    p.add_argument("--run", help="run folder (reads the clip layout from its manifest.json)")
    p.add_argument("--anchor", help="reference image (default: the video's first frame)")
    p.add_argument(
        "--first-clip-whole",
        action="store_true",
        help="SVI 2.0 Pro stitching (later clips drop their first frames)",
    )
    p.add_argument("--no-plot", action="store_true", help="write report.json only")
    a = p.parse_args(list(argv) if argv is not None else None)
    try:
        if os.path.isfile(a.video):
            video_size(a.video)  # not a video: say so before anything else
        spans, clip_frames, overlap = resolve_layout(a.video, a.run, a.clip_frames, a.overlap)
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
        logger.error("error: %s", e)
        return 2
    logger.info("wrote %s%s", res.json_path, f" and {res.png_path}" if res.png_path else "")
    return 0
