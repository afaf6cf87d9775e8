"""What the drift guard's ``carry`` can mean for latent carry (SVI 2.0 Pro), measured on the toy
VAE, and which frames to encode when a video is extended in a latent-carry mode (CPU).

    OMP_NUM_THREADS=1 nice python experiments/toyworld/latent_carry.py --work /tmp/svi_latent

Part 1, a drift chain. SVI 2.0 Pro carries the previous clip's denoised latent, never decoded
and re-encoded. The toy DiT is a Wan2.1 I2V model trained with pixel carry only, so it cannot
run the Pro loop; what can be measured is what each way of correcting a carried LATENT does
over many clips, with the toy VAE (the Wan2.1 layout). Each of 4 held-out toy scenes gives a
13-frame clip X and its latent z0 = E(X). Per "clip" the latent drifts by d = E(cast(X)) -
E(X) (a warm cast of ΔE ~3.4, about what the toy model adds per clip) and is then corrected:

* ``none``: nothing (the guard's ``output`` mode: only saved frames are corrected);
* ``re-encode``: decode, correct the frames' mean colour onto the anchor (X[0]) with the
  guard's transfer, encode again: a VAE round trip per clip (what ``carry`` means for pixel
  carry, where the official loop round-trips anyway);
* ``delta``: keep the latent and add the encoder's view of the correction,
  ``z + E(corrected) - E(decoded)``: the round-trip error cancels to first order;
* ``delta, channel mean``: as ``delta``, but only the spatial mean of the encoder's
  correction per latent channel and frame is added: a colour correction is global, so its
  latent is smooth; the rest of the difference (gamut clipping, quantisation) would pile up;
* ``latent mean``: shift each latent channel's mean onto the anchor latent's (no VAE call).

After 10, 25 and 50 clips: colour error (ΔE of the mean Lab colour against D(z0)), structure
(PSNR of the frames against D(z0), with each frame's mean colour removed so colour does not
count) and sharpness (Laplacian variance ratio against D(z0)).

Part 2, the extend window: a generated toy clip latent z (from the toy loop) is decoded and
quantised; its last latent frame is then re-made from the frames by encoding the last 5
(4k + 1, k = 1) or all 13 frames (one clip): relative error against z's last latent frame.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

SCENES = (3, 7, 11, 19)
STEPS = (10, 25, 50)
CAST = np.array([0.0, 1.5, 3.0])  # Lab shift per clip: warmer


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--work", type=Path, default=Path("/tmp/svi_latent"))
    p.add_argument(
        "--variants", nargs="*", default=None, help="run only these (others from results.json)"
    )
    a = p.parse_args()
    torch.set_num_threads(1)
    a.work.mkdir(parents=True, exist_ok=True)
    from svi_core.conditioning import frames_to_pixels, quantise_frames
    from svi_core.drift import laplacian_variance, luma, mean_lab_u8
    from svi_core.drift_guard import (
        ColourTransfer,
        apply_transfers,
        colour_stats,
        lab_to_u8,
        u8_to_lab,
    )
    from svi_core.toy.models import TOY_FRAMES, TOY_HEIGHT, TOY_WIDTH, toy_backend
    from svi_core.toy.world import ToyScene, WorldConfig

    c0 = cpu_seconds()
    be = toy_backend()
    cfg = WorldConfig(height=TOY_HEIGHT, width=TOY_WIDTH)

    def enc(frames: np.ndarray) -> torch.Tensor:
        return be.encode(frames_to_pixels(torch.from_numpy(np.ascontiguousarray(frames))))

    def dec(z: torch.Tensor) -> np.ndarray:
        return quantise_frames(be.decode(z)).numpy()

    def metrics(frames: np.ndarray, ref: np.ndarray) -> dict[str, float]:
        de = float(
            np.linalg.norm(
                np.mean([mean_lab_u8(f) for f in frames], 0)
                - np.mean([mean_lab_u8(f) for f in ref], 0)
            )
        )
        x = np.stack([luma(f) for f in frames])
        y = np.stack([luma(f) for f in ref])
        x = x - x.mean((1, 2), keepdims=True)
        y = y - y.mean((1, 2), keepdims=True)
        psnr = float(10 * np.log10(1.0 / max(np.mean((x - y) ** 2), 1e-12)))
        sharp = float(
            np.mean([laplacian_variance(luma(f)) for f in frames])
            / np.mean([laplacian_variance(luma(f)) for f in ref])
        )
        return {"delta_e": de, "psnr": psnr, "sharpness": sharp}

    all_variants = ("none", "re-encode", "delta", "delta, channel mean", "latent mean")
    previous = {}
    if (a.work / "results.json").is_file():
        previous = json.loads((a.work / "results.json").read_text())
    variants = tuple(a.variants) if a.variants else all_variants
    chain: dict[str, dict[int, list[dict[str, float]]]] = {
        v: {k: [] for k in STEPS} for v in variants
    }
    for scene in SCENES:
        x = ToyScene(scene, cfg).frames(0, TOY_FRAMES)
        anchor = x[0]
        target = colour_stats(anchor)
        z0 = enc(x)
        ref = dec(z0)
        cast = lab_to_u8(u8_to_lab(x) + CAST)
        d = enc(cast) - z0
        a_lat = enc(anchor[None])
        for v in variants:
            z = z0.clone()
            for step in range(1, max(STEPS) + 1):
                z = z + d
                if v in ("re-encode", "delta", "delta, channel mean"):
                    raw = dec(z)
                    t = ColourTransfer.matching(colour_stats(raw), target)
                    fixed = apply_transfers(raw, [t] * len(raw))
                    if v == "re-encode":
                        z = enc(fixed)
                    else:
                        delta = enc(fixed) - enc(raw)
                        if v == "delta, channel mean":
                            delta = delta.mean(dim=(3, 4), keepdim=True)
                        z = z + delta
                elif v == "latent mean":
                    mu = z.mean(dim=(3, 4), keepdim=True)
                    z = z - mu + a_lat.mean(dim=(3, 4), keepdim=True)
                if step in STEPS:
                    chain[v][step].append(metrics(dec(z), ref))
        print(f"scene {scene} done, {cpu_seconds() - c0:.0f} s CPU", flush=True)

    lines = [
        "| carried latent | " + " | ".join(f"ΔE clip {k}" for k in STEPS) + " | "
        + " | ".join(f"PSNR clip {k}" for k in STEPS) + " | sharpness clip 50 |",
        "|---|" + "---|" * (2 * len(STEPS) + 1),
    ]  # fmt: skip
    summary: dict = {}
    for v in all_variants:
        if v in variants:
            m = {
                k: {key: float(np.mean([r[key] for r in chain[v][k]])) for key in chain[v][k][0]}
                for k in STEPS
            }
        elif v in previous.get("chain", {}):
            m = {int(k): x for k, x in previous["chain"][v].items()}
        else:
            continue
        summary[v] = m
        lines.append(
            f"| {v} | "
            + " | ".join(f"{m[k]['delta_e']:.2f}" for k in STEPS)
            + " | "
            + " | ".join(f"{m[k]['psnr']:.1f}" for k in STEPS)
            + f" | {m[50]['sharpness']:.2f} |"
        )

    # part 2: which frames to encode for an extended latent carry
    from svi_core.loop import LoopInputs, RunSettings, run_clips
    from svi_core.toy.demo import toy_mode
    from svi_core.toy.world import toy_first_frame

    errs: dict[str, list[float]] = {"last 5 frames": [], "last 13 frames (one clip)": []}
    for scene in SCENES if "window" not in previous else ():
        ref_img = torch.from_numpy(toy_first_frame(scene, cfg).copy())
        s = RunSettings(mode=toy_mode(10), width=TOY_WIDTH, height=TOY_HEIGHT, num_clips=3)
        run_clips(be, s, LoopInputs(ref_img, ["toy world"]), a.work / f"run{scene}")
        for k in range(3):
            from safetensors.torch import load_file

            z = load_file(str(a.work / f"run{scene}" / "clips" / f"clip_{k:05d}.safetensors"))[
                "latent"
            ]
            frames = dec(z)
            last = z[:, :, -1:]
            for name, n in (("last 5 frames", 5), ("last 13 frames (one clip)", 13)):
                e = enc(frames[-n:])[:, :, -1:]
                errs[name].append(float((e - last).norm() / last.norm()))
    window = previous.get("window") or {k: float(np.mean(v)) for k, v in errs.items()}
    text = (
        "Carried latent under a per-clip warm drift (toy VAE, 4 held-out scenes, means):\n\n"
        + "\n".join(lines)
        + "\n\nExtend, latent carry re-made from decoded frames: relative error of the last "
        "latent frame against the generated one (12 clips): "
        + ", ".join(f"{k}: {v:.3f}" for k, v in window.items())
        + f"\n\nCPU time: {(cpu_seconds() - c0) / 60:.1f} min (1 thread)\n"
    )
    (a.work / "results.md").write_text(text)
    (a.work / "results.json").write_text(json.dumps({"chain": summary, "window": window}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    t0 = time.time()
    raise SystemExit(main())
