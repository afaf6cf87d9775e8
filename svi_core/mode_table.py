"""``python -m svi_core modes [--json]``: every mode with its official values.

One source of truth: the table is made from :data:`svi_core.modes.MODES`, and the README's
modes table is this module's markdown (a test compares them), so the documentation cannot
drift from the presets.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from .modes import MODES, ModeConfig

COLUMNS = (
    "mode",
    "model",
    "carry",
    "motion",
    "padding",
    "stitching",
    "guidance",
    "prompts",
    "default clips",
    "fps",
    "extra conditions",
)


def _model(m: ModeConfig) -> str:
    if m.model == "wan2.2":
        return "Wan2.2 A14B (2 experts)"
    extra = " + MultiTalk" if "audio" in m.conditions else ""
    extra += " + pose embedding" if "pose" in m.conditions else ""
    return "Wan2.1 I2V 14B + CLIP" + extra


def _carry(m: ModeConfig) -> str:
    if m.carry == "latent":
        return "last k latents (never decoded)"
    return "last decoded frame" if m.motion_frames == 1 else "last m decoded frames"


def _stitching(m: ModeConfig) -> str:
    o = m.overlap_frames
    if o == 0:
        return "keep every frame"
    if m.stitch == "drop_tail":
        return f"drop last {o} of non-final clips"
    return f"drop first {o} of later clips"


def _guidance(m: ModeConfig) -> str:
    if m.guidance == "text_audio":
        return f"text {m.cfg:g} / audio {m.cfg_audio:g}"
    text = f"CFG {m.cfg:g}"
    if m.uncond_null:
        text += f" (uncond without {', '.join(m.uncond_null)})"
    both = [c for c in m.conditions if c not in m.uncond_null]
    if both and m.cfg != 1:
        text += f", {', '.join(both)} in both passes"
    return text


def _prompts(m: ModeConfig) -> str:
    if m.prompt_policy == "first":
        return "`prompts[0]`" + (f' (default "{m.default_prompt}")' if m.default_prompt else "")
    if m.prompt_policy == "hold":
        return "`prompts[k]`, last held"
    return "cycle" if m.prompt_repeat == 1 else f"cycle, each prompt {m.prompt_repeat} times"


def _clips(m: ModeConfig) -> str:
    if m.clip_count_rule == "audio":
        return f"cover the audio (official {m.default_clips})"
    if m.clip_count_rule == "pose":
        return f"play the pose video once (official {m.default_clips})"
    if m.clip_count_rule == "fixed" or m.prompt_policy == "first":
        return str(m.default_clips)
    per = "#prompts" if m.prompt_repeat == 1 else f"{m.prompt_repeat} x #prompts"
    return per if m.default_clips >= 999 else f"min({m.default_clips}, {per})"


def row(m: ModeConfig) -> dict[str, str]:
    """One mode as the README table shows it (column name -> text)."""
    motion = f"k = {m.motion_latents}" if m.carry == "latent" else f"m = {m.motion_frames}"
    padding = "zero latents" if m.carry == "latent" else m.padding
    values = (
        f"`{m.name}`",
        _model(m),
        _carry(m),
        motion,
        padding,
        _stitching(m),
        _guidance(m),
        _prompts(m),
        _clips(m),
        f"{m.fps:g}",
        ", ".join(m.conditions) or "-",
    )
    return dict(zip(COLUMNS, values, strict=True))


def markdown() -> str:
    """The modes table in markdown (as in the README)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for m in MODES.values():
        lines.append("| " + " | ".join(row(m).values()) + " |")
    return "\n".join(lines)


def as_json() -> list[dict[str, Any]]:
    """Every mode's settings (all :class:`ModeConfig` fields) plus derived values."""
    out = []
    for m in MODES.values():
        d = dataclasses.asdict(m)
        d.update(
            overlap_frames=m.overlap_frames,
            latent_frames=m.latent_frames,
            video_frames_for_10_clips=m.video_length(10),
            stitching=_stitching(m),
            guidance_scales=(
                {"text": m.cfg, "audio": m.cfg_audio}
                if m.guidance == "text_audio"
                else {"cfg": m.cfg}
            ),
        )
        out.append(d)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m svi_core modes",
        description="Every SVI mode with its official values (from svi_core.modes).",
    )
    ap.add_argument("--json", action="store_true", help="all settings as JSON")
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    text = json.dumps(as_json(), indent=1, ensure_ascii=False) if args.json else markdown()
    sys.stdout.write(text + "\n")
    return 0
