"""The embedded demo: a long toy video and its drift report from the shipped toy models.

    python -m svi_core demo [--out DIR] [--clips 20] [--scene 3] [--steps 10] [--no-lora]
                            [--drift-guard off|output|carry]

Runs the real SVI clip loop (``svi_core.loop.run_clips``, mode ``tom``: one motion frame, zero
padding, mask on latent frame 0) with the real standalone backend over the tiny toy models in
``svi_core/assets`` -- no download, CPU only -- then writes ``report.json`` / ``report.png``
(``svi_core.report``). The reference image is frame 0 of a held-out toy scene. When the toy SVI
LoRA ships (``toy_svi_lora.safetensors``, trained with ERFT by ``experiments/toyworld``), it is
applied unless ``--no-lora``. ``--drift-guard`` turns on the colour correction at the seams
(:mod:`svi_core.drift_guard`; the toy drifts in colour visibly, so ``carry`` shows what it does).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..log import logger
from .models import ASSETS, TOY_FRAMES, TOY_HEIGHT, TOY_WIDTH, toy_backend
from .world import WorldConfig, toy_first_frame

TOY_LORA = ASSETS / "toy_svi_lora.safetensors"


@dataclass(frozen=True)
class DemoResult:
    """Paths written by :func:`run_demo` and the drift summary."""

    video: Path
    run_dir: Path
    report_json: str
    report_png: str | None
    summary: dict
    seconds: float


def toy_mode(steps: int = 10, frames: int = TOY_FRAMES):
    """The toy preset: mode ``tom`` at the toy clip length, CFG 1 (the toy text is constant)."""
    from ..modes import get_mode

    return get_mode("tom", frames=frames, steps=steps, cfg=1.0, fps=16.0)


def run_demo(
    out_dir: str | Path,
    clips: int = 20,
    scene: int = 3,
    steps: int = 10,
    lora: str | Path | None = None,
    plot: bool = True,
    frames: int = TOY_FRAMES,
    drift_guard: str = "off",
) -> DemoResult:
    """Generate ``clips`` toy clips into ``out_dir`` (resumable run folder ``out_dir/run``),
    join them into ``out_dir/toy_demo.mp4`` and write its drift report into ``out_dir``.
    ``frames`` per clip (4k + 1) defaults to the length the toy models were trained on;
    ``drift_guard`` is ``off``, ``output`` or ``carry`` (:mod:`svi_core.drift_guard`)."""
    from ..drift_guard import DriftGuard
    from ..loop import LoopInputs, RunSettings, run_clips
    from ..report import build_report, layout_from_run

    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ref = toy_first_frame(scene, WorldConfig(height=TOY_HEIGHT, width=TOY_WIDTH))
    reference = torch.from_numpy(ref.copy())
    backend = toy_backend(lora=lora)
    settings = RunSettings(
        mode=toy_mode(steps, frames),
        width=TOY_WIDTH,
        height=TOY_HEIGHT,
        num_clips=clips,
        drift_guard=DriftGuard(drift_guard),
    )
    res = run_clips(
        backend,
        settings,
        LoopInputs(reference=reference, prompts=["toy world"]),
        out / "run",
        output=out / "toy_demo.mp4",
    )
    spans, f, m = layout_from_run(str(res.run_dir))
    rep = build_report(str(res.video), str(out), f, m, anchor=ref, plot=plot, spans=spans[:clips])
    secs = time.time() - t0
    logger.info("toy demo: %d clips, %d frames in %.1f s -> %s", clips, res.frames, secs, res.video)
    return DemoResult(res.video, res.run_dir, rep.json_path, rep.png_path, rep.summary, secs)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m svi_core demo``: returns the exit code."""
    p = argparse.ArgumentParser(
        prog="python -m svi_core demo",
        description="Generate a long toy video with the shipped tiny Wan models through the SVI "
        "clip loop and write its drift report (CPU, no download).",
    )
    p.add_argument("--out", default="svi_toy_demo", help="output folder (default ./svi_toy_demo)")
    p.add_argument("--clips", type=int, default=20)
    p.add_argument("--scene", type=int, default=3, help="toy scene seed of the reference image")
    p.add_argument("--steps", type=int, default=10, help="sampling steps per clip")
    p.add_argument("--no-lora", action="store_true", help="base toy model only")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument(
        "--drift-guard",
        choices=["off", "output", "carry"],
        default="off",
        help="colour correction at the seams: output = the saved frames, carry = also the "
        "frames the next clip continues from (default off = official SVI)",
    )
    a = p.parse_args(list(argv) if argv is not None else None)
    if a.clips < 1 or a.steps < 1:
        p.error("--clips and --steps must be >= 1")
    lora = None if a.no_lora or not TOY_LORA.is_file() else TOY_LORA
    r = run_demo(
        a.out, a.clips, a.scene, a.steps, lora, plot=not a.no_plot, drift_guard=a.drift_guard
    )
    logger.info("video %s, report %s (%s)", r.video, r.report_json, r.report_png)
    for k, v in r.summary.items():
        logger.info("  %s: %s", k, v)
    return 0
