"""Why (or why not): the errors ERFT stores in its banks against the errors the models really
make in their rollouts, in the same space (NORMALISED latents, 16 channels) and units.

Every error tensor ``E [16, T, h, w]`` (or ``[16, h, w]``) is split into a per-channel BIAS
(its mean over time and space: a colour / brightness shift of the whole clip) and a RESIDUAL
(what is left: detail, texture, position). Sizes are root mean squares over channels (and
over entries / scenes), so bias² + residual² = total².

Banks (the ERFT LoRA's final checkpoint): ``E_vid`` per timestep cell (what the latent
injection adds to x0 at that timestep) and the window that the condition injection adds to
the first latent frame of y (drawn from every stored ``E_vid``).

Rollouts (probed test scenes): the CONDITION error of clip k, the first latent frame of its y
(the carried last frame of clip k-1, encoded) minus the same for the true frame at that time;
and the one-step clean estimate ``x0_hat`` of every sampling step minus the true clip's latent
(at the sampling timesteps, which are the bank cells' timesteps: 10 of the 50). The true frame
differs from the generated one also where content moved differently (unpredictable from one
frame), which lands in the residual; the bias is free of that.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from erft_data import WORLD, cond_pixels, encode_batched, pixels
from erft_rollout import cpu_seconds

from svi_core.toy.world import ToyScene


def split(e: np.ndarray, channel_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel bias and residual RMS of errors ``[..., 16, *S]`` (mean over the axes after
    ``channel_axis``); both ``[..., 16]``."""
    axes = tuple(range(channel_axis + 1, e.ndim))
    bias = e.mean(axis=axes)
    resid = np.sqrt(np.maximum((e**2).mean(axis=axes) - bias**2, 0.0))
    return bias, resid


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, dtype=np.float64) ** 2)))


def bank_stats(bank_file: Path) -> dict:
    """Bias / residual sizes of the stored E_vid per cell and of the condition-injection window."""
    from safetensors.torch import load_file

    from train.erft import schedule_timesteps

    banks = load_file(str(bank_file))
    grid = schedule_timesteps(50, 5.0).numpy()
    per_cell = []
    cond_bias, cond_resid = [], []
    for key, v in sorted(banks.items(), key=lambda kv: int(kv[0].split(".")[1])):
        if not key.startswith("video."):
            continue
        e = v.float().numpy()  # [n, 16, T, h, w]
        b, r = split(e, 1)
        per_cell.append({"cell": int(key.split(".")[1]), "t": float(grid[int(key.split(".")[1])]),
                         "n": int(e.shape[0]), "bias": rms(b), "resid": rms(r),
                         "bias_per_channel": np.sqrt((b**2).mean(0)).tolist()})  # fmt: skip
        t = e.shape[2]
        for start in range(max(1, t - 3 + 1)):  # window start uniform in [0, T - 3]
            f0 = e[:, :, start]  # [n, 16, h, w]: lands on y's first latent frame
            b0, r0 = split(f0, 1)
            cond_bias.append(b0)
            cond_resid.append(r0)
    cb = np.concatenate(cond_bias)
    cr = np.concatenate(cond_resid)
    return {
        "cells": per_cell,
        "entries": int(sum(c["n"] for c in per_cell)),
        "cond_bias": rms(cb),
        "cond_resid": rms(cr),
        "cond_bias_per_channel": np.sqrt((cb**2).mean(0)).tolist(),
    }


@torch.no_grad()
def truth_pack(scene: int, clips: int, vae, stride: int = 12) -> dict:
    """What the truth looks like in latent space for one scene, and what a PERFECT DiT would
    still get wrong through the VAE alone:

    * ``cond`` [clips, 16, h, w]: first latent frame of y for the true frame at clip k's start;
    * ``clip`` [clips, 16, T, h, w]: latent of the true clip k;
    * ``rt_cond_bias`` / ``rt_cond_resid`` [clips, 16]: condition error of a model that outputs
      the true latent every clip (decoded, stored as uint8, last frame carried, encoded: the
      VAE round trip only);
    * ``floor``: the truth metrics of the decoded true latents (the best any DiT over this VAE
      can score), mean over clips.
    """
    from erft_data import decode_frames

    from svi_core.ground_truth import TRUTH_METRICS, clip_truth_error

    truth = ToyScene(scene, WORLD).frames(0, stride * (clips - 1) + 13)
    cond = encode_batched(vae, [cond_pixels(truth[stride * k]) for k in range(clips)])
    clip = encode_batched(vae, [pixels(truth[stride * k : stride * k + 13]) for k in range(clips)])
    dec = decode_frames(vae, clip)  # uint8 [13, H, W, 3] per clip
    rt = encode_batched(vae, [cond_pixels(dec[k - 1][-1]) for k in range(1, clips)])
    rb, rr = [np.zeros(16)], [np.zeros(16)]  # clip 1 starts from the true reference frame
    for k in range(1, clips):
        b, r = split(rt[k - 1][0, :, 0].numpy() - cond[k][0, :, 0].numpy(), 0)
        rb.append(b)
        rr.append(r)
    errs = [clip_truth_error(list(dec[k]), list(truth[stride * k : stride * k + 13]))
            for k in range(clips)]  # fmt: skip
    floor = {m: float(np.mean([getattr(e, m) for e in errs])) for m in TRUTH_METRICS}
    return {"cond": np.stack([c[0, :, 0].numpy() for c in cond]),
            "clip": np.stack([c[0].numpy() for c in clip]),
            "rt_cond_bias": np.array(rb), "rt_cond_resid": np.array(rr), "floor": floor}  # fmt: skip


def rollout_stats(folder: Path, pack: dict, clips: int) -> dict:
    """Condition and x0_hat errors of one probed rollout against the true continuation."""
    cond_b, cond_r, step_b, step_r, own_b, own_r, ts = [], [], [], [], [], [], None
    for k in range(clips):
        z = np.load(folder / f"probe_{k:03d}.npz")
        b, r = split(z["cond0"] - pack["cond"][k], 0)  # [16, h, w]
        cond_b.append(b)
        cond_r.append(r)
        b, r = split(z["x0_hat"] - pack["clip"][k][None], 1)  # [steps, 16, T, h, w]
        step_b.append(b)
        step_r.append(r)
        b, r = split(z["x0_hat"] - z["final"][None], 1)
        own_b.append(b)
        own_r.append(r)
        ts = z["t"]
    return {"cond_bias": np.array(cond_b), "cond_resid": np.array(cond_r),  # [clips, 16]
            "step_bias": np.array(step_b), "step_resid": np.array(step_r),  # [clips, steps, 16]
            "own_bias": np.array(own_b), "own_resid": np.array(own_r), "t": ts}  # fmt: skip


def _per_clip(per: list[dict], key: str, clips: int) -> list[float]:
    return [rms(np.stack([p[key][k] for p in per])) for k in range(clips)]


def _per_step(per: list[dict], key: str, clips: int) -> dict[str, list[float]]:
    n = len(per[0]["t"])
    return {str(k): [rms(np.stack([p[key][k, i] for p in per])) for i in range(n)]
            for k in range(clips)}  # fmt: skip


def analyse(work: Path, bank_file: Path, test: dict[str, list[dict]], st, out: Path) -> dict:
    """Compare bank errors with rollout errors; writes ``out/why.png`` and returns numbers and a
    paragraph of text for the results."""
    from svi_core.toy.models import load_toy_vae

    c0 = cpu_seconds()
    cache = work / "why.json"
    if cache.is_file():
        res = json.loads(cache.read_text())
    else:
        bank = bank_stats(bank_file)
        vae = load_toy_vae()
        scenes = [r["scene"] for r in test["base"][: st.probe_scenes]]
        packs = {s: truth_pack(s, st.clips, vae) for s in scenes}
        arms = {}
        for arm in test:
            per = [rollout_stats(work / "rollouts" / "test" / arm / f"scene{s}", packs[s],
                                 st.clips) for s in scenes]  # fmt: skip
            arms[arm] = {
                "cond_bias": _per_clip(per, "cond_bias", st.clips),
                "cond_resid": _per_clip(per, "cond_resid", st.clips),
                "cond_bias_per_channel_last": np.sqrt(
                    np.mean([p["cond_bias"][-1] ** 2 for p in per], axis=0)
                ).tolist(),
                "step_t": [float(t) for t in per[0]["t"]],
                "step_bias": _per_step(per, "step_bias", st.clips),
                "step_resid": _per_step(per, "step_resid", st.clips),
                "own_resid": _per_step(per, "own_resid", st.clips),
            }
        plist = list(packs.values())
        perfect = {"cond_bias": _per_clip(plist, "rt_cond_bias", st.clips),
                   "cond_resid": _per_clip(plist, "rt_cond_resid", st.clips),
                   "floor": {m: float(np.mean([p["floor"][m] for p in plist]))
                             for m in plist[0]["floor"]}}  # fmt: skip
        res = {"bank": bank, "arms": arms, "perfect": perfect, "scenes": scenes}
        cache.write_text(json.dumps(res))
    plot(res, st, out / "why.png")
    res["text"] = describe(res, st)
    spent = cpu_seconds() - c0
    prev_file = work / "why_cpu.json"
    prev = json.loads(prev_file.read_text())["cpu_s"] if prev_file.is_file() else 0.0
    prev_file.write_text(json.dumps({"cpu_s": prev + spent, "at": time.time()}))
    return res


def describe(res: dict, st) -> str:
    bank, base, pf = res["bank"], res["arms"]["base"], res["perfect"]
    last = st.clips - 1
    ks = [k for k in (1, 9, 24, 49) if k <= last]

    def at(a: dict) -> str:
        return ", ".join(f"clip {k + 1}: {a['cond_bias'][k]:.3f} / {a['cond_resid'][k]:.3f}"
                         for k in ks)  # fmt: skip

    cells = bank["cells"]
    hi = max(cells, key=lambda c: c["t"]) if cells else None
    lo = min(cells, key=lambda c: c["t"]) if cells else None
    txt = (
        f"Sizes are bias / residual RMS in normalised latent units ({len(res['scenes'])} probed "
        f"test scenes). Condition error (y's first latent frame against the true frame at that "
        f"time): the ERFT banks inject {bank['cond_bias']:.3f} / {bank['cond_resid']:.3f} "
        f"({bank['entries']} stored E_vid); the base rollouts carry {at(base)}; "
        f"the plain LoRA {at(res['arms']['plain'])}; ERFT {at(res['arms']['erft'])}; "
        f"a perfect DiT (true latents through the VAE) would carry {at(pf)}. "
    )
    if hi and lo:
        txt += (f"Latent injection E_vid: {hi['bias']:.3f} / {hi['resid']:.3f} at t={hi['t']:.0f}"
                f", {lo['bias']:.3f} / {lo['resid']:.3f} at t={lo['t']:.0f}. ")  # fmt: skip
    fl = pf["floor"]
    txt += ("Floor of the truth metrics (true latents decoded, i.e. the VAE alone): "
            + ", ".join(f"{k.replace('_', ' ')} {v:.3g}" for k, v in fl.items()) + ".")  # fmt: skip
    return txt


def plot(res: dict, st, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from erft_report import ARM_COLOURS

    bank = res["bank"]
    fig, ax = plt.subplots(1, 3, figsize=(14, 3.6))
    x = np.arange(1, st.clips + 1)
    for arm, a in res["arms"].items():
        c = ARM_COLOURS.get(arm)
        ax[0].plot(x, a["cond_bias"], color=c, label=f"{arm} rollout: bias")
        ax[0].plot(x, a["cond_resid"], color=c, ls=":", label=f"{arm} rollout: residual")
    pf = res["perfect"]
    ax[0].plot(x, pf["cond_resid"], color="grey", ls=":", label="perfect DiT (VAE only): residual")
    ax[0].plot(x, pf["cond_bias"], color="grey", label="perfect DiT: bias")
    ax[0].axhline(bank["cond_bias"], color="k", label="bank (condition injection): bias")
    ax[0].axhline(bank["cond_resid"], color="k", ls=":", label="bank: residual")
    ax[0].set_title("condition error, y latent frame 0 (RMS)", fontsize=9)
    ax[0].set_xlabel("clip")
    ax[0].xaxis.get_major_locator().set_params(integer=True)
    ax[0].legend(fontsize=6)
    ch = np.arange(16)
    ax[1].bar(ch - 0.2, bank["cond_bias_per_channel"], 0.4, color="k", label="bank bias (RMS)")
    ax[1].bar(ch + 0.2, res["arms"]["base"]["cond_bias_per_channel_last"], 0.4,
              color=ARM_COLOURS["base"], label=f"base rollout bias, clip {st.clips}")  # fmt: skip
    ax[1].set_title("condition bias per latent channel", fontsize=9)
    ax[1].set_xlabel("channel")
    ax[1].legend(fontsize=6)
    cells = bank["cells"]
    ax[2].plot(
        [c["t"] for c in cells], [c["resid"] for c in cells], "k:", label="bank E_vid residual"
    )
    ax[2].plot([c["t"] for c in cells], [c["bias"] for c in cells], "k-", label="bank E_vid bias")
    base = res["arms"]["base"]
    for k, style in ((0, "o"), (st.clips - 1, "s")):
        ax[2].plot(
            base["step_t"],
            base["step_bias"][str(k)],
            style + "-",
            ms=3,
            color=ARM_COLOURS["base"],
            label=f"base x0_hat − truth, clip {k + 1}: bias",
        )
        ax[2].plot(base["step_t"], base["step_resid"][str(k)], style + ":", ms=3,
                   color=ARM_COLOURS["base"], label=f"clip {k + 1}: residual")  # fmt: skip
    ax[2].set_xlabel("timestep t")
    ax[2].set_title("latent error at matching timesteps (RMS)", fontsize=9)
    ax[2].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
