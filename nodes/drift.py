"""SVI Drift Report: measure how a long SVI video drifts, clip by clip, inside ComfyUI.

A thin wrapper over ``svi_core.report.build_report``: it finds the video (a run name from the
SVI Infinite Sampler or a VIDEO input), reads the clip layout from the run's manifest (or
takes clip frames / overlap), writes ``report.json`` + ``report.png`` inside the output folder
(the plot is drawn with PIL when matplotlib is absent, as in a stock ComfyUI) and shows it.
"""

from __future__ import annotations

import os
from typing import Any

import folder_paths
import numpy as np
import torch
from comfy_api.latest import io, ui

from ..svi_core import limits as L
from ..svi_core.drift import video_size
from ..svi_core.errors import SVIError
from ..svi_core.report import build_report, layout_from_run
from .convert import reference_from_image
from .drift_paths import REPORT_SUBFOLDER, inside_output, resolve_target, summary_text


def _video_file(video: Any, output_root: str) -> str | None:
    """Path of a VIDEO's file; an in-memory VIDEO is first saved under output/svi_drift/."""
    if video is None:
        return None
    source = video.get_stream_source() if hasattr(video, "get_stream_source") else None
    if isinstance(source, str):
        return source
    folder = os.path.join(output_root, REPORT_SUBFOLDER, "from_memory")
    os.makedirs(inside_output(output_root, folder, "folder"), exist_ok=True)
    path = inside_output(output_root, os.path.join(folder, "video.mp4"), "video file")
    video.save_to(path)
    return path


def _png_to_image(path: str) -> torch.Tensor:
    """The report PNG as a ComfyUI IMAGE ``[1, H, W, 3]`` float in [0, 1]."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy())[None]


class SVIDriftReport(io.ComfyNode):
    """Colour / brightness / contrast / sharpness drift, flicker, seams, anchor SSIM, motion."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SVIDriftReport",
            display_name="SVI Drift Report",
            category="SVI/analysis",
            description=(
                "Measures the drift of a long video clip by clip (colour ΔE, brightness, "
                "contrast, sharpness, flicker, seams, SSIM to the anchor, motion) and writes "
                "report.json + report.png into the run folder (or next to the video) inside "
                "the output folder."
            ),
            inputs=[
                io.String.Input(
                    "run_name",
                    default="svi_run",
                    tooltip="The SVI Infinite Sampler's run name (folder output/svi/<run name>); "
                    "ignored when a VIDEO is connected.",
                ),
                io.Int.Input(
                    "clip_frames",
                    default=0,
                    min=0,
                    max=L.MAX_FRAMES,
                    tooltip="Frames per generated clip (e.g. 81); 0 = read the layout from the "
                    "run's manifest.json.",
                ),
                io.Int.Input(
                    "overlap",
                    default=5,
                    min=0,
                    max=L.MAX_FRAMES - 1,
                    tooltip="Frames each clip shares with the previous one (motion frames); "
                    "used only when clip_frames > 0.",
                ),
                io.Boolean.Input(
                    "first_clip_whole",
                    default=False,
                    tooltip="SVI 2.0 Pro stitching (later clips drop their first frames); used "
                    "only when clip_frames > 0.",
                ),
                io.Video.Input(
                    "video",
                    optional=True,
                    tooltip="The video to measure (e.g. the sampler's video output); overrides "
                    "run_name.",
                ),
                io.Image.Input(
                    "anchor",
                    optional=True,
                    tooltip="Reference image for the SSIM metric (first image used, stretched to "
                    "the video size); default: the video's first frame.",
                ),
            ],
            outputs=[
                io.Image.Output(
                    "plot", display_name="plot", tooltip="The report plot (report.png)."
                ),
                io.String.Output(
                    "summary",
                    display_name="summary",
                    tooltip="Headline numbers (last clip vs clip 0) and the report.json path.",
                ),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, **kw: Any) -> io.NodeOutput:
        root = os.path.realpath(folder_paths.get_output_directory())
        target = resolve_target(root, kw["run_name"], _video_file(kw.get("video"), root))
        clip_frames, overlap = int(kw["clip_frames"]), int(kw["overlap"])
        spans = None
        if clip_frames == 0:
            if target.run_dir is None:
                raise SVIError(
                    f"SVI Drift Report: {target.video} is not in an SVI run folder, so the clip "
                    "layout is unknown; set clip_frames (and overlap)"
                )
            spans, clip_frames, overlap = layout_from_run(target.run_dir)
        anchor = None
        if kw.get("anchor") is not None:
            height, width = video_size(target.video)
            anchor = reference_from_image(kw["anchor"], width, height).numpy()
        result = build_report(
            target.video,
            target.out_dir,
            clip_frames,
            overlap,
            anchor=anchor,
            first_clip_whole=bool(kw["first_clip_whole"]),
            plot=True,  # matplotlib when installed, else PIL (ComfyUI ships no matplotlib)
            spans=spans,
            inside=root,
        )
        png_path = result.png_path
        if png_path is None:  # pragma: no cover - ComfyUI always ships pillow
            raise SVIError("SVI Drift Report: drawing report.png needs pillow")
        subfolder = os.path.relpath(target.out_dir, root)
        preview = ui.SavedImages(
            [ui.SavedResult(os.path.basename(png_path), subfolder, io.FolderType.output)]
        )
        text = summary_text(result.summary, result.json_path)
        return io.NodeOutput(_png_to_image(png_path), text, ui=preview)
