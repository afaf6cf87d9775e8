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

from ..errors import Cancelled, RunStoreError, SVIError
from ..limits import MAX_CLIPS, MAX_STEPS, number_problem
from ..log import logger
from .models import ASSETS, TOY_FRAMES, TOY_HEIGHT, TOY_WIDTH, toy_backend
from .world import WorldConfig, toy_first_frame

TOY_LORA = ASSETS / "toy_svi_lora.safetensors"
DEMO_THREADS = 1
"""torch threads of ``python -m svi_core demo`` (``--threads``): the toy DiT (dim 128) and VAE
work on tensors so small that splitting them across threads costs more than it saves, and a
thread per core stalls whenever another program holds a core (measured in the README)."""


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
    if out.exists() and not out.is_dir():
        raise SVIError(f"demo: --out {out} is a file; pass a folder (it is created)")
    problems = [
        number_problem("clips", clips, 1, MAX_CLIPS, integer=True),
        number_problem("steps", steps, 1, MAX_STEPS, integer=True),
        number_problem("scene", scene, 0, 2**31 - 1, integer=True),
    ]
    if any(problems):
        raise SVIError("demo: " + "; ".join(x for x in problems if x))
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


def build_parser() -> argparse.ArgumentParser:
    """The ``demo`` command's options (every one with its help and default)."""
    p = argparse.ArgumentParser(
        prog="python -m svi_core demo",
        description="Generate a long toy video with the shipped tiny Wan models through the SVI "
        "clip loop and write its drift report (CPU, no download). Writes DIR/toy_demo.mp4, the "
        "resumable run folder DIR/run/ and DIR/report.json + DIR/report.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="svi_toy_demo", metavar="DIR", help="output folder (created)")
    p.add_argument("--clips", type=int, default=20, help="clips to generate (13 frames each)")
    p.add_argument("--scene", type=int, default=3, help="toy scene seed of the reference image")
    p.add_argument("--steps", type=int, default=10, help="sampling steps per clip")
    p.add_argument("--no-lora", action="store_true", help="base toy model only (no toy SVI LoRA)")
    p.add_argument("--no-plot", action="store_true", help="write report.json only")
    p.add_argument(
        "--drift-guard",
        choices=["off", "output", "carry"],
        default="off",
        help="colour correction at the seams: output = the saved frames, carry = also the "
        "frames the next clip continues from (off = official SVI)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=DEMO_THREADS,
        help="torch CPU threads (0 = torch's default, one per core); the toy models are so "
        "small that one thread is fastest, and it stays fast when other programs share the cores",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m svi_core demo``: returns the exit code."""
    a = build_parser().parse_args(list(argv) if argv is not None else None)
    lora = None if a.no_lora or not TOY_LORA.is_file() else TOY_LORA
    if a.threads < 0:
        logger.error("error: demo: --threads=%d must be >= 0 (0 = one per core)", a.threads)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        r = run_demo(
            a.out, a.clips, a.scene, a.steps, lora, plot=not a.no_plot, drift_guard=a.drift_guard
        )
    except RunStoreError as e:
        logger.error("error: %s (demo: pass another --out for other settings)", e)
        return 2
    except SVIError as e:
        logger.error("error: %s", e)
        return 2
    except (Cancelled, KeyboardInterrupt):
        logger.error("interrupted; finished clips are kept, rerun the same command to resume")
        return 130
    plot = f" and {r.report_png}" if r.report_png else ""
    logger.info("video %s, run folder %s, report %s%s", r.video, r.run_dir, r.report_json, plot)
    for k, v in r.summary.items():
        logger.info("  %s: %s", k, v)
    return 0
