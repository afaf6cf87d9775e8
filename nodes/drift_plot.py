"""A plain PIL rendering of a drift report, for ComfyUI installs without matplotlib.

``svi_core.report.plot_report`` draws the full figure with matplotlib, which ComfyUI does not
ship. This draws the same per-frame series (one panel each, clip seams as red lines) from the
``report.json`` dict with PIL, which every ComfyUI has. Nothing here imports ComfyUI.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

SERIES: tuple[tuple[str, str], ...] = (
    ("delta_e", "colour dE vs clip 0"),
    ("brightness", "brightness (luma)"),
    ("contrast", "contrast (luma std)"),
    ("sharpness", "sharpness (Laplacian var)"),
    ("ssim_anchor", "SSIM vs anchor"),
    ("motion", "motion (mean |frame diff|)"),
)
PANEL_W, PANEL_H, MARGIN = 440, 200, 28


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def render_report(report: Mapping, title: str = ""):
    """The report as a PIL RGB image: a 2-column grid of per-frame panels (``report["per_frame"]``
    series, x = frame), red vertical lines at the clip seams (``report["clips"][k]["start"]``,
    k >= 1), each panel's min / max printed at its left edge."""
    from PIL import Image, ImageDraw

    per_frame = report.get("per_frame", {})
    series = [(k, label) for k, label in SERIES if k in per_frame]
    rows = max(1, math.ceil(len(series) / 2))
    img = Image.new("RGB", (2 * PANEL_W, rows * PANEL_H + MARGIN), "white")
    draw = ImageDraw.Draw(img)
    clips = report.get("clips", [])
    draw.text((8, 8), title or f"drift report: {len(clips)} clips", fill="black")
    seams = [int(c["start"]) for c in clips[1:]]
    for i, (key, label) in enumerate(series):
        x0 = (i % 2) * PANEL_W + MARGIN
        y0 = (i // 2) * PANEL_H + 2 * MARGIN
        w, h = PANEL_W - 2 * MARGIN, PANEL_H - 2 * MARGIN
        draw.rectangle((x0, y0, x0 + w, y0 + h), outline=(120, 120, 120))
        draw.text((x0, y0 - 14), label, fill="black")
        values = list(per_frame[key])
        good = _finite(values)
        n = len(values)
        if n < 1 or not good:
            continue
        lo, hi = min(good), max(good)
        span = (hi - lo) or 1.0
        draw.text((x0 + 2, y0 + 2), f"{hi:.4g}", fill=(90, 90, 90))
        draw.text((x0 + 2, y0 + h - 12), f"{lo:.4g}", fill=(90, 90, 90))

        def px(j: int, x0: int = x0, w: int = w, n: int = n) -> float:
            return x0 + (j / max(n - 1, 1)) * w

        for s in seams:
            draw.line((px(s), y0, px(s), y0 + h), fill=(240, 150, 150))
        points = [
            (px(j), y0 + h - (float(v) - lo) / span * h)
            for j, v in enumerate(values)
            if v is not None and math.isfinite(float(v))
        ]
        if len(points) > 1:
            draw.line(points, fill=(30, 80, 200), width=1)
    return img
