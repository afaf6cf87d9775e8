"""Drawing a drift report: ``report.png`` with matplotlib when it is installed, else with PIL.

ComfyUI does not ship matplotlib and the ``standalone`` extra does not list it, so
:func:`save_plot` falls back to :func:`render_report`, a plain PIL drawing of the same series
(PIL comes with ComfyUI and with the ``standalone`` extra). Both draw from the report's JSON
form (``DriftReport.to_dict()``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .log import logger

SERIES: tuple[tuple[str, str], ...] = (
    ("delta_e", "colour dE vs clip 0"),
    ("brightness", "brightness (luma)"),
    ("contrast", "contrast (luma std)"),
    ("sharpness", "sharpness (Laplacian var)"),
    ("ssim_anchor", "SSIM vs anchor"),
    ("motion", "motion (mean |frame diff|; 4-frame comb = VAE latent groups)"),
)
PANEL_W, PANEL_H, MARGIN = 440, 200, 28
SEAM_COLOUR = (240, 150, 150)
SEAM_COLOUR_MPL = "r"


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
    legend = _legend_text(report)
    if legend:
        width = draw.textlength(legend)
        draw.text((2 * PANEL_W - width - 8, 8), legend, fill=SEAM_COLOUR_TEXT)
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
            draw.line((px(s), y0, px(s), y0 + h), fill=SEAM_COLOUR)
        points = [
            (px(j), y0 + h - (float(v) - lo) / span * h)
            for j, v in enumerate(values)
            if v is not None and math.isfinite(float(v))
        ]
        if len(points) > 1:
            draw.line(points, fill=(30, 80, 200), width=1)
    return img


SEAM_COLOUR_TEXT = (200, 60, 60)


def _legend_text(report: Mapping) -> str:
    """The PIL plot's one-line legend: the seam lines and the seam ratio against the rhythm."""
    if len(report.get("clips", [])) < 2:
        return ""
    summary = report.get("summary") or {}
    seam, rhythm = summary.get("median_seam_ratio"), summary.get("rhythm_ratio")
    text = "red lines: clip seams"
    if seam is not None and rhythm is not None:
        text += f"; seam ratio {seam:.2g} (4-frame rhythm {rhythm:.2g})"
    return text


def plot_matplotlib(report: Mapping, png_path: str, title: str = "") -> None:
    """The full figure with matplotlib: each per-frame metric over time with the seams marked,
    flicker per clip and the seam ratio per seam."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    per_frame = report.get("per_frame", {})
    clips = report.get("clips", [])
    labels = dict(SERIES)
    labels["delta_e"] = "colour ΔE vs clip 0"
    labels["ssim_anchor"] = f"SSIM vs anchor ({report.get('anchor', 'first_frame')})"
    labels["motion"] = "motion (mean |frame diff|); the 4-frame comb is the Wan VAE's latent groups"
    fig, axes = plt.subplots(4, 2, figsize=(12, 11))
    axes = axes.ravel()
    seams = [int(c["start"]) for c in clips[1:]]
    for ax, (key, _) in zip(axes, SERIES, strict=False):
        y = [float("nan") if v is None else float(v) for v in per_frame.get(key, [])]
        ax.plot(range(len(y)), y, lw=0.8)
        for s in seams:
            ax.axvline(s, color=SEAM_COLOUR_MPL, alpha=0.35, lw=0.6)
        ax.set_title(labels[key], fontsize=9)
        ax.set_xlabel("frame", fontsize=8)
    ax = axes[6]
    ax.plot([c["index"] for c in clips], [c["flicker"] for c in clips], "o-", ms=3)
    ax.set_title("flicker per clip", fontsize=9)
    ax.set_xlabel("clip", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax = axes[7]
    sr = [(c["index"], c["seam_ratio"]) for c in clips if c.get("seam_ratio") is not None]
    if sr:
        ax.bar([i for i, _ in sr], [v for _, v in sr], label="seam ratio at the clip's start")
        ax.axhline(1.0, color="k", lw=0.6, ls="--", label="1 = no jump")
    rhythm = (report.get("summary") or {}).get("rhythm_ratio")
    if rhythm is not None:
        ax.axhline(rhythm, color="tab:orange", lw=0.9, ls=":", label="4-frame rhythm inside clips")
    if sr or rhythm is not None:
        top = max([v for _, v in sr] + ([rhythm] if rhythm is not None else []))
        ax.set_ylim(0, top * 1.45)  # room for the legend above the bars
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    ax.set_title("seam ratio (jump / median change around it)", fontsize=9)
    ax.set_xlabel("clip (seam at its start)", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    n_frames = report.get("frames", len(per_frame.get("motion", [])))
    fig.suptitle(title or f"drift report: {len(clips)} clips, {n_frames} frames", fontsize=11)
    if seams:
        seam = Line2D([], [], color=SEAM_COLOUR_MPL, alpha=0.6, lw=1.0)
        fig.legend([seam], ["clip seam (a new clip starts)"], loc="upper right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(png_path, dpi=80, format="png")
    plt.close(fig)


def save_plot(report: Mapping, png_path: str, title: str = "") -> bool:
    """Draw ``report`` (the JSON form) into ``png_path``: matplotlib when installed, else PIL.
    Returns False (with a warning) when neither is installed and nothing was written."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        plot_matplotlib(report, png_path, title)
        return True
    try:
        img = render_report(report, title)
    except ImportError:
        logger.warning("report: neither matplotlib nor pillow is installed; no report.png")
        return False
    logger.info("report: matplotlib is not installed; drawing a plain PIL plot")
    img.save(png_path, format="PNG")
    return True
