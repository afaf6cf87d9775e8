"""ComfyUI-free helpers of the SVI Drift Report node: where the video and the report live.

Nothing here imports ComfyUI, so tier-1 tests cover it without a host. Every folder returned
is inside ComfyUI's output folder (``output_root``); anything else is refused.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass

from ..svi_core.errors import SVIError
from ..svi_core.run_store import MANIFEST
from .convert import run_directory, run_video, sanitise_run_name

REPORT_SUBFOLDER = "svi_drift"


@dataclass(frozen=True)
class ReportTarget:
    """What to analyse and where to write.

    ``video``: the video file; ``run_dir``: its SVI run folder (holds ``manifest.json``) or
    None; ``out_dir``: the folder for ``report.json`` / ``report.png`` (inside the output root).
    """

    video: str
    run_dir: str | None
    out_dir: str


def _inside(root: str, path: str) -> bool:
    root, path = os.path.realpath(root), os.path.realpath(path)
    return os.path.commonpath([root, path]) == root


def inside_output(root: str, path: str, what: str) -> str:
    """``path`` with every symlink resolved, refused unless it stays inside ``root``.

    A folder planted as a symlink in the output folder (``<name>_drift`` or ``svi_drift``
    pointing elsewhere) would otherwise let the report be written outside the output root.
    """
    real = os.path.realpath(path)
    if not _inside(root, real):
        raise SVIError(
            f"SVI Drift Report: the {what} {path} resolves to {real}, outside the output folder "
            f"{os.path.realpath(root)} (a symlink?); remove or rename it"
        )
    return real


def resolve_target(output_root: str, run_name: str, video_path: str | None) -> ReportTarget:
    """Pick the video and the report folder.

    - ``video_path`` given (a file-backed VIDEO): if it sits in an SVI run folder inside the
      output root, the report goes into that run folder; if it is elsewhere inside the output
      root, into ``<its folder>/<stem>_drift``; outside the output root (e.g. an input
      video), into ``<output>/svi_drift/<stem>``.
    - else ``run_name``: the run folder ``<output>/svi/<run_name>`` and its stitched video.

    Raises SVIError naming the missing file or run when there is nothing to analyse.
    """
    root = os.path.realpath(output_root)
    if video_path:
        video = os.path.realpath(video_path)
        if not os.path.isfile(video):
            raise SVIError(f"SVI Drift Report: video file not found: {video_path}")
        folder = os.path.dirname(video)
        stem = os.path.splitext(os.path.basename(video))[0]
        if _inside(root, video):
            if os.path.isfile(os.path.join(folder, MANIFEST)):
                return ReportTarget(video, folder, folder)
            out = os.path.join(folder, f"{sanitise_run_name(stem)}_drift")
        else:
            out = os.path.join(root, REPORT_SUBFOLDER, sanitise_run_name(stem))
        return ReportTarget(video, None, inside_output(root, out, "report folder"))
    if not str(run_name).strip():
        raise SVIError(
            "SVI Drift Report: give a run name (the SVI Infinite Sampler's run_name) or connect "
            "a VIDEO"
        )
    run_dir = run_directory(root, run_name)
    video = run_video(run_dir)
    if not os.path.isfile(video):
        raise SVIError(
            f"SVI Drift Report: run {run_name!r} has no video {video}; run the SVI Infinite "
            "Sampler with this run name first (or connect its VIDEO output)"
        )
    return ReportTarget(video, run_dir, run_dir)


def summary_text(summary: dict, json_path: str) -> str:
    """The headline numbers as readable lines (``name: value``), then the report's path.

    Floats get 4 significant digits; None (undefined, e.g. a relative change of 0) is "n/a".
    """
    lines = []
    for key, value in summary.items():
        if isinstance(value, numbers.Integral) or isinstance(value, str):
            text = str(value)
        elif isinstance(value, numbers.Real) and math.isfinite(float(value)):
            text = f"{float(value):.4g}"
        elif value is None or isinstance(value, numbers.Real):
            text = "n/a"
        else:
            text = json.dumps(value)
        lines.append(f"{key}: {text}")
    lines.append(f"report: {json_path}")
    return "\n".join(lines)
