"""Tables, plots, the target check and the CPU ledger of the ERFT study (``erft_study.py``).

Every number is a mean over test scenes with a 95 % percentile bootstrap interval over scenes
(:func:`svi_core.ground_truth.bootstrap_ci`, 10 000 resamples, seeded); differences between
models are paired by scene (:func:`svi_core.ground_truth.paired_bootstrap_ci`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from svi_core.ground_truth import bootstrap_ci, paired_bootstrap_ci

METRICS: dict[str, str] = {
    "truth_colour_w1": "appearance error to truth (Lab W1)",
    "truth_delta_e": "colour ΔE to truth",
    "truth_rmse": "pixel RMSE to truth",
    "truth_sharpness_log2": "sharpness vs truth (log2)",
    "truth_motion_ratio": "motion / true motion",
    "delta_e": "colour ΔE vs clip 1",
    "brightness": "brightness",
    "contrast": "contrast",
    "sharpness": "sharpness (Laplacian var)",
    "ssim_anchor": "SSIM vs reference",
    "flicker": "flicker",
    "motion": "motion",
}
LOWER_IS_BETTER = ("truth_colour_w1", "truth_delta_e", "truth_rmse", "delta_e")
TARGET_METRICS = ("delta_e", "truth_colour_w1")
ARM_COLOURS = {"base": "tab:blue", "plain": "tab:orange", "erft": "tab:green"}
OTHER_COLOURS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray")  # variants


def curves(results: list[dict], metric: str) -> np.ndarray:
    """``[scenes, clips]`` values of ``metric``."""
    return np.array([[c[metric] for c in r["per_clip"]] for r in results], dtype=np.float64)


def checkpoints(clips: int) -> list[int]:
    ks = [k for k in (1, 10, 25, 50) if k <= clips]
    return ks if clips in ks else ks + [clips]


def fmt(x: float) -> str:
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 1:
        return f"{x:.2f}"
    if a >= 0.01:
        return f"{x:.3f}"
    return f"{x:.2e}"


def cell(ci, i: int | None = None) -> str:
    m, lo, hi = (ci.mean, ci.lo, ci.hi) if i is None else (ci.mean[i], ci.lo[i], ci.hi[i])
    return f"{fmt(m)} [{fmt(lo)}, {fmt(hi)}]"


def paired_at(a: list[dict], b: list[dict], metric: str, k: int):
    """Paired-by-scene bootstrap interval of ``a − b`` in ``metric`` at clip index ``k``."""
    return paired_bootstrap_ci(curves(a, metric)[:, k], curves(b, metric)[:, k])


def targets(test: dict[str, list[dict]], clips: int) -> dict:
    """The issue's targets at the last clip: ERFT's colour drift (ΔE vs clip 1) and appearance
    error to truth below both plain's and base's with non-overlapping 95 % intervals, and
    ERFT's motion (mean over clips) at least the base's (``met``). ``paired_met``: the same
    with the paired-by-scene differences' intervals below zero instead (the sharper test, as
    scene-to-scene spread widens every per-model interval)."""
    k = clips - 1
    out: dict = {"checks": {}}
    met = paired_met = True
    for metric in TARGET_METRICS:
        ci = {a: bootstrap_ci(curves(test[a], metric)[:, k]) for a in ("base", "plain", "erft")}
        ok = all(ci["erft"].hi < ci[o].lo for o in ("base", "plain"))
        paired = {o: paired_at(test["erft"], test[o], metric, k) for o in ("base", "plain")}
        out["checks"][metric] = {
            "intervals": {a: [float(ci[a].mean), float(ci[a].lo), float(ci[a].hi)] for a in ci},
            "erft_minus": {o: [float(d.mean), float(d.lo), float(d.hi)] for o, d in paired.items()},
            "met": bool(ok),
            "paired_met": bool(all(d.hi < 0 for d in paired.values())),
        }
        met &= ok
        paired_met &= out["checks"][metric]["paired_met"]
    mb = curves(test["base"], "motion").mean(1)
    me = curves(test["erft"], "motion").mean(1)
    motion_ok = bool(me.mean() >= mb.mean())
    out["checks"]["motion"] = {"base": float(mb.mean()), "erft": float(me.mean()),
                               "met": motion_ok}  # fmt: skip
    out["met"] = bool(met and motion_ok)
    out["paired_met"] = bool(paired_met and motion_ok)
    return out


def table(runs: dict[str, list[dict]], clips: int, metrics=METRICS) -> list[str]:
    ks = checkpoints(clips)
    lines = ["| metric | model | " + " | ".join(f"clip {k}" for k in ks) + " | mean over clips |",
             "|---|---|" + "---|" * (len(ks) + 1)]  # fmt: skip
    for metric, label in metrics.items():
        for j, (arm, res) in enumerate(runs.items()):
            v = curves(res, metric)
            ci = bootstrap_ci(v[:, [k - 1 for k in ks]])
            whole = bootstrap_ci(v.mean(1))
            lines.append(f"| {label if j == 0 else ''} | {arm} | "
                         + " | ".join(cell(ci, i) for i in range(len(ks)))
                         + f" | {cell(whole)} |")  # fmt: skip
    return lines


def paired_table(test: dict[str, list[dict]], clips: int) -> list[str]:
    k = clips - 1
    lines = ["| metric | ERFT − plain | ERFT − base | plain − base |", "|---|---|---|---|"]
    pairs = (("erft", "plain"), ("erft", "base"), ("plain", "base"))
    for metric, label in METRICS.items():
        lines.append(f"| {label} | " + " | ".join(
            cell(paired_at(test[x], test[y], metric, k)) for x, y in pairs) + " |")  # fmt: skip
    return lines


def plot(runs: dict[str, list[dict]], metrics: dict[str, str], path: Path, title: str) -> None:
    """One panel per metric: per-clip mean of each arm with its 95 % band over scenes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(metrics)
    cols = 3 if n > 4 else n
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.9 * rows), squeeze=False)
    others = iter(OTHER_COLOURS * 4)
    colours = {a: ARM_COLOURS.get(a) or next(others) for a in runs}
    for ax, (metric, label) in zip(axes.ravel(), metrics.items(), strict=False):
        for arm, res in runs.items():
            v = curves(res, metric)
            ci = bootstrap_ci(v, n_boot=2000)
            x = np.arange(1, v.shape[1] + 1)
            colour = colours[arm]
            ax.plot(x, ci.mean, label=arm, color=colour, lw=1.3)
            ax.fill_between(x, ci.lo, ci.hi, alpha=0.2, color=colour, lw=0)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("clip", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def scaled_section(out: Path, test: dict, scaled: dict, clips: int) -> list[str]:
    """Report lines (and ``out/scaled.png``) for ERFT trained with its injected errors scaled:
    its table next to the three arms, and paired differences at the last clip against each."""
    runs = {**test, **scaled}
    shown = {k: METRICS[k] for k in TARGET_METRICS + ("truth_motion_ratio",)}
    plot(runs, shown, out / "scaled.png", "ERFT with its injected errors scaled")
    k = clips - 1
    lines = ["", "## ERFT with scaled errors (error_scale; same lr and seeds)", ""]
    lines += table(runs, clips, shown)
    lines += ["", f"Paired by scene at clip {clips} (variant − arm; below zero: the variant "
              "has less error, above zero in motion: more motion):", "",
              "| variant | metric | − ERFT | − plain | − base |", "|---|---|---|---|---|"]  # fmt: skip
    for name, res in scaled.items():
        for j, m in enumerate(shown):
            lines.append(f"| {name if j == 0 else ''} | {shown[m]} | " + " | ".join(
                cell(paired_at(res, test[arm], m, k)) for arm in ("erft", "plain", "base"))
                + " |")  # fmt: skip
    return lines


def replicate_section(test: dict, replicates: dict, seed: int, clips: int) -> list[str]:
    """Report lines: ERFT − plain and ERFT − base paired by scene, at clip 10 and the last
    clip, for the main training seed and each replicate seed (same data, lrs, test seeds)."""
    ks = sorted({min(10, clips), clips})
    runs = {seed: {"erft": test["erft"], "plain": test["plain"]}, **replicates}
    lines = ["", "## Other training seeds (ERFT and plain retrained; same data, lrs, tests)", "",
             "Paired by scene (ERFT − plain, ERFT − base; the base is the same model in "
             "every row):", "",
             "| training seed | metric | " + " | ".join(
                 f"ERFT − plain, clip {k} | ERFT − base, clip {k}" for k in ks) + " |",
             "|---|---|" + "---|---|" * len(ks)]  # fmt: skip
    for s, arms in runs.items():
        for j, m in enumerate(TARGET_METRICS):
            cells = [cell(paired_at(arms["erft"], ref, m, k - 1))
                     for k in ks for ref in (arms["plain"], test["base"])]  # fmt: skip
            lines.append(f"| {s if j == 0 else ''} | {METRICS[m]} | " + " | ".join(cells) + " |")
    return lines


def spread_section(spread: dict[str, dict]) -> list[str]:
    """Report lines for :func:`erft_rollout.scene_spread` per arm: the true frames' spread
    between scenes first, then each arm's (same clips)."""
    truth = next(iter(spread.values()))["truth"]  # the same true frames for every arm
    ks = list(truth)
    lines = ["", "## Do the rollouts still tell their scenes apart?", "",
             "Mean pixel RMSE between the scenes' last frames of a clip (pixels in [0, 1]); "
             "near 0: every scene has become the same image.", "",
             "| frames | " + " | ".join(f"clip {k}" for k in ks) + " |",
             "|---|" + "---|" * len(ks),
             "| true continuation | " + " | ".join(
                 fmt(truth[k]) for k in ks) + " |"]  # fmt: skip
    for arm, sp in spread.items():
        lines.append(f"| {arm} | " + " | ".join(fmt(sp["model"][k]) for k in ks) + " |")
    return lines


def ledger(work: Path, st, base_rec: dict, data_rec: dict, loras: dict, val: dict, test: dict,
           ablations: dict, scaled: dict | None = None,
           replicates: dict | None = None) -> dict:  # fmt: skip
    """CPU seconds per phase, from what each unit recorded (so resumed runs add up)."""

    def lora_cpu(name: str) -> float:
        p = work / "loras" / name / "cpu.json"
        return json.loads(p.read_text())["cpu_s"] if p.is_file() else 0.0

    def rollout_cpu(runs) -> float:  # runs: per-scene result lists
        return sum(r["cpu_s"] for rs in runs for r in rs)

    def variant_cpu(pattern: str, runs) -> float:  # its LoRAs (by folder name) + rollouts
        return sum(lora_cpu(p.name) for p in (work / "loras").glob(pattern)) + rollout_cpu(runs)

    phases = {
        "base (encode + continue, or evaluate the shipped one)": float(base_rec.get("cpu_s", 0.0)),
        "training data (render, lossless videos, encode, cache)": float(data_rec["cpu_s"]),
        "LoRA training (all learning rates, both arms)": sum(lora_cpu(n) for n in loras),
        "validation rollouts (lr choice)": rollout_cpu(val.values()),
        "test rollouts (3 arms)": rollout_cpu(test.values()),
        "ablations (training + rollouts)": variant_cpu("erft_no_*", ablations.values()),
    }
    if scaled:
        phases["ERFT with scaled errors (training + rollouts)"] = variant_cpu(
            "erft_scale*", scaled.values())  # fmt: skip
    if replicates:
        phases["other training seeds (training + rollouts)"] = variant_cpu(
            "*_seed*", [rs for arms in replicates.values() for rs in arms.values()])  # fmt: skip
    why = work / "why_cpu.json"
    if why.is_file():
        phases["error analysis (banks vs rollouts)"] = json.loads(why.read_text())["cpu_s"]
    phases["total"] = sum(phases.values())
    return phases


def write(out: Path, st, base_rec, data_rec, chosen, val_scores, test, ablations, verdict, why,
          ledger_: dict, scaled: dict | None = None, spread: dict | None = None,
          replicates: dict | None = None) -> Path:  # fmt: skip
    """``out/RESULTS.md`` + ``out/truth.png`` + ``out/drift.png`` (+ ``ablations.png``,
    ``scaled.png``)."""
    out.mkdir(parents=True, exist_ok=True)
    truth_m = {k: v for k, v in METRICS.items() if k.startswith("truth_")}
    drift_m = {k: v for k, v in METRICS.items() if not k.startswith("truth_")}
    n = len(test["base"])
    plot(test, truth_m, out / "truth.png", f"error to the true continuation ({n} test scenes, "
         "mean and 95 % bootstrap band)")  # fmt: skip
    plot(test, drift_m, out / "drift.png", f"drift vs clip 1 / the reference ({n} scenes)")
    lines = [
        "# ERFT study: results",
        "",
        f"{n} held-out test scenes x {st.clips} clips, mode `tom`, {st.sample_steps} sampling "
        f"steps; LoRAs rank {st.rank}, {st.lora_steps} steps x gradient accumulation "
        f"{st.grad_accum} = {st.lora_steps * st.grad_accum} fresh videos each (none seen twice), "
        f"seed {st.seed}. Learning rate per arm chosen on {st.val_scenes} validation scenes x "
        f"{st.val_clips} clips (lowest appearance error to truth over the second half): "
        f"ERFT {chosen['erft']:g}, plain {chosen['plain']:g} (scores: {val_scores}).",
        "",
        "Every cell: mean over scenes [95 % bootstrap interval over scenes].",
        "",
        "## Base model",
        "",
    ]
    if base_rec.get("skipped"):
        lines.append(f"Shipped toy base, not continued (--skip-pretrain); one-clip validation "
                     f"loss {base_rec['shipped_val']:.5f}.")  # fmt: skip
    else:
        lines.append(
            f"Continued from the shipped toy base on {base_rec['pool_clips']} fresh clips: "
            f"one-clip validation loss {base_rec['shipped_val']:.5f} -> {base_rec['best_val']:.5f}"
            f" after {base_rec['steps']} steps ({base_rec['stopped']}; {base_rec['rule']}); "
            f"{base_rec['cpu_s'] / 60:.0f} CPU min. Curve: `base_curve.png`."
        )
    lines += ["", f"Training data: {json.dumps(data_rec)}", "",
              "## Per clip (test scenes)", ""]  # fmt: skip
    lines += table(test, st.clips)
    lines += ["", f"## Paired differences at clip {st.clips} (same scenes, same seeds)", ""]
    lines += paired_table(test, st.clips)
    lines += ["", f"## Targets at clip {st.clips}", ""]
    for metric, c in verdict["checks"].items():
        if metric == "motion":
            lines.append(f"- motion (mean over clips): base {c['base']:.4f}, ERFT {c['erft']:.4f}: "
                         f"{'met' if c['met'] else 'NOT met'}")  # fmt: skip
        else:
            iv = c["intervals"]
            lines.append(
                f"- {METRICS[metric]}: "
                + ", ".join(f"{a} {fmt(v[0])} [{fmt(v[1])}, {fmt(v[2])}]" for a, v in iv.items())
                + f"; ERFT − plain {fmt(c['erft_minus']['plain'][0])} "
                f"[{fmt(c['erft_minus']['plain'][1])}, {fmt(c['erft_minus']['plain'][2])}], "
                f"ERFT − base {fmt(c['erft_minus']['base'][0])} "
                f"[{fmt(c['erft_minus']['base'][1])}, {fmt(c['erft_minus']['base'][2])}]: "
                f"{'met' if c['met'] else 'NOT met'}; paired differences "
                f"{'both below zero' if c['paired_met'] else 'not both below zero'}"
            )
    lines.append(f"- overall, as written (per-model intervals apart): "
                 f"{'MET' if verdict['met'] else 'NOT met'}; paired by scene (both differences "
                 f"below zero, motion >= base): {'met' if verdict['paired_met'] else 'NOT met'}")  # fmt: skip
    if ablations:
        runs = {"erft": test["erft"], **ablations}
        plot(runs, {k: METRICS[k] for k in TARGET_METRICS + ("truth_motion_ratio",)},
             out / "ablations.png", "ERFT and ERFT without one injection")  # fmt: skip
        lines += ["", "## Ablations (one injection off)", ""]
        lines += table(runs, st.clips, {k: METRICS[k] for k in TARGET_METRICS})
        k = st.clips - 1
        lines += ["", f"Paired by scene at clip {st.clips} (ablation − ERFT; above zero: the "
                  "injection helps):", "", "| ablation | " + " | ".join(
                      METRICS[m] for m in TARGET_METRICS) + " |",
                  "|---|" + "---|" * len(TARGET_METRICS)]  # fmt: skip
        for name, res in ablations.items():
            lines.append(f"| {name} | " + " | ".join(
                cell(paired_at(res, test["erft"], m, k)) for m in TARGET_METRICS) + " |")  # fmt: skip
    if scaled:
        lines += scaled_section(out, test, scaled, st.clips)
    if replicates:
        lines += replicate_section(test, replicates, st.seed, st.clips)
    if spread:
        lines += spread_section(spread)
    lines += ["", "## Why: banks vs rollout errors", "", why.get("text", ""), ""]
    lines += ["## CPU time (one thread per process)", "", "| phase | CPU min |", "|---|---|"]
    lines += [f"| {k} | {v / 60:.1f} |" for k, v in ledger_.items()]
    path = out / "RESULTS.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(
        {"verdict": verdict, "chosen_lr": chosen, "val_scores": val_scores, "ledger": ledger_,
         "why": {k: v for k, v in why.items() if k != "text"}}, indent=1))  # fmt: skip
    return path
