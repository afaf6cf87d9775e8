"""Keyframes on the CPU toy world: how close does a scheduled clip's last frame get to its
keyframe, against the same clips without keyframes? (issue 13, "Measure")

    OMP_NUM_THREADS=1 nice python experiments/keyframes_toy.py [--scenes 8] [--clips 6]

Per held-out toy scene: the reference is frame 0 of the scene; clips 2, 4 and 6 (1-based) get
a keyframe, the scene's own frame at the moment that clip ends in the real toy video (where
the story should be by then). Each scene runs through the real SVI clip loop
(``svi_core.loop.run_clips``, mode ``tom`` at the toy size: 13 frames, 48x64, 10 steps, CFG 1)
on the shipped toy models with the standalone backend, once without keyframes and once per
keyframe slot (``frame`` = WanFirstLastFrameToVideo's layout, ``latent`` = the whole last
latent frame), same seeds.

Per keyed clip, against its keyframe: mean absolute error of the clip's last decoded frame
(0-1 scale), CIE76 colour distance of the mean Lab colour, SSIM of the luma; and two symptoms
users report with end frames on SVI LoRAs: ``end motion`` (mean frame-to-frame change over the
clip's last 4 frames, ~0 = a frozen end) and ``end contrast`` (luma std of the last frame ÷
the keyframe's, < 1 = greyer). A second, VAE-only table compares how the SVI 2.0 Pro keyframe
latent is built (the keyframe encoded alone, as a first frame, vs where it sits in a clip):
the last 4 decoded frames of ``[anchor, zeros, keyframe latent]`` against the keyframe.
Prints markdown tables and the CPU time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from svi_core.clip_schedule import ScheduleCondition, parse_schedule  # noqa: E402
from svi_core.conditioning import frames_to_pixels, quantise_frames  # noqa: E402
from svi_core.drift import luma, mean_lab_u8, ssim  # noqa: E402
from svi_core.loop import LoopInputs, RunSettings, run_clips  # noqa: E402
from svi_core.toy.demo import toy_mode  # noqa: E402
from svi_core.toy.models import TOY_FRAMES, TOY_HEIGHT, TOY_WIDTH, toy_backend  # noqa: E402
from svi_core.toy.world import ToyScene  # noqa: E402

SCENES = (3, 7, 11, 19, 23, 29, 31, 37)
KEYED = (2, 4, 6)
VARIANTS = ("none", "frame", "latent")


def end_frame(clip: int, frames: int = TOY_FRAMES, overlap: int = 1) -> int:
    """Index in the toy video of clip ``clip``'s (1-based) last frame (tom: drop 1 per seam)."""
    return frames - 1 + (clip - 1) * (frames - overlap)


def run_scene(backend, scene: int, clips: int, variant: str, work: Path) -> dict[int, np.ndarray]:
    """Decoded uint8 frames ``[F, H, W, 3]`` of every clip of one rollout."""
    world = ToyScene(scene)
    reference = torch.from_numpy(world.frame(0).copy())
    keys = [torch.from_numpy(world.frame(end_frame(k)).copy()) for k in KEYED]
    conditions = ()
    if variant != "none":
        lines = "\n".join(
            f"clip {k}: keyframe=image {i}, keyframe_slot={variant}"
            for i, k in enumerate(KEYED, start=1)
            if k <= clips
        )
        conditions = (ScheduleCondition(parse_schedule(lines), images=keys),)
    settings = RunSettings(mode=toy_mode(10), width=TOY_WIDTH, height=TOY_HEIGHT, num_clips=clips)
    out: dict[int, np.ndarray] = {}

    def on_clip(result) -> None:
        out[result.record.index + 1] = quantise_frames(backend.decode(result.latent)).numpy()

    run_clips(
        backend,
        settings,
        LoopInputs(reference=reference, prompts=["toy world"], conditions=conditions),
        work / f"s{scene}_{variant}",
        on_clip=on_clip,
    )
    return out


def keyed_metrics(frames: np.ndarray, key: np.ndarray) -> dict[str, float]:
    last = frames[-1]
    mae = float(np.abs(last.astype(np.float32) - key.astype(np.float32)).mean() / 255.0)
    de = float(np.linalg.norm(mean_lab_u8(last) - mean_lab_u8(key)))
    s = float(ssim(luma(last), luma(key)))
    tail = frames[-4:].astype(np.float32) / 255.0
    end_motion = float(np.abs(np.diff(tail, axis=0)).mean())
    all_motion = float(np.abs(np.diff(frames.astype(np.float32) / 255.0, axis=0)).mean())
    contrast = float(luma(last).std() / max(luma(key).std(), 1e-6))
    return {
        "mae": mae,
        "delta_e": de,
        "ssim": s,
        "end_motion": end_motion,
        "motion": all_motion,
        "end_contrast": contrast,
    }


def pro_latent_probe(scenes) -> dict[str, list[float]]:
    """VAE only: decode ``[A, zeros..., K]`` (NORMALISED, 4 latent frames) and compare the last
    4 frames with the keyframe, for three ways of building K."""
    from svi_core.latents import denormalise, normalise
    from svi_core.standalone.models import vae_decode, vae_encode
    from svi_core.toy.models import load_toy_vae

    vae = load_toy_vae()
    res: dict[str, list[tuple[float, float]]] = {"image alone": [], "frame": [], "latent": []}
    with torch.no_grad():
        for scene in scenes:
            world = ToyScene(scene)
            key_u8 = world.frame(end_frame(4))
            key = frames_to_pixels(torch.from_numpy(key_u8.copy())[None])
            first = frames_to_pixels(torch.from_numpy(world.frame(0).copy())[None])
            anchor = normalise(vae_encode(vae, first))
            grey = torch.zeros_like(key).expand(-1, -1, 4, -1, -1)
            ks = {
                "image alone": normalise(vae_encode(vae, key)),
                "frame": normalise(vae_encode(vae, torch.cat([grey, key], 2)))[:, :, 1:2],
                "latent": normalise(vae_encode(vae, key.expand(-1, -1, 5, -1, -1)))[:, :, 1:2],
            }
            for name, k in ks.items():
                z = torch.zeros(1, 16, 4, *anchor.shape[3:])
                z[:, :, :1], z[:, :, -1:] = anchor, k
                last = quantise_frames(vae_decode(vae, denormalise(z)))[-1].numpy()
                de = float(np.linalg.norm(mean_lab_u8(last) - mean_lab_u8(key_u8)))
                con = float(luma(last).std() / max(luma(key_u8).std(), 1e-6))
                res[name].append((de, con))
    return {k: [float(np.mean([v[0] for v in vs])), float(np.mean([v[1] for v in vs]))]
            for k, vs in res.items()}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=len(SCENES))
    p.add_argument("--clips", type=int, default=6)
    p.add_argument("--work", type=Path, default=Path("/tmp/svi_keyframes_toy"))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    import logging

    logging.getLogger("svi").setLevel(logging.WARNING)
    scenes = SCENES[: a.scenes]
    backend = toy_backend()
    t0 = time.process_time()
    rows: dict[str, dict[int, list[dict[str, float]]]] = {
        v: {k: [] for k in KEYED} for v in VARIANTS
    }
    import shutil

    shutil.rmtree(a.work, ignore_errors=True)
    for scene in scenes:
        world = ToyScene(scene)
        for variant in VARIANTS:
            frames = run_scene(backend, scene, a.clips, variant, a.work)
            for k in KEYED:
                if k <= a.clips:
                    rows[variant][k].append(keyed_metrics(frames[k], world.frame(end_frame(k))))
        print(f"scene {scene} done ({time.process_time() - t0:.0f} s CPU)", flush=True)
    cpu = time.process_time() - t0
    n_clips = len(scenes) * len(VARIANTS) * a.clips
    print(f"\n{len(scenes)} scenes x {len(VARIANTS)} variants x {a.clips} clips = {n_clips} "
          f"toy clips, {cpu:.0f} s CPU ({cpu / n_clips:.2f} s per clip)\n")  # fmt: skip
    cols = ("mae", "delta_e", "ssim", "end_motion", "motion", "end_contrast")
    print("| keyframes | clip | last-frame MAE to keyframe | ΔE to keyframe | SSIM to keyframe "
          "| end motion | clip motion | end contrast ÷ keyframe's |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for variant in VARIANTS:
        for k in KEYED:
            if k > a.clips:
                continue
            m = {c: float(np.mean([r[c] for r in rows[variant][k]])) for c in cols}
            print(f"| {variant} | {k} | {m['mae']:.3f} | {m['delta_e']:.1f} | {m['ssim']:.3f} | "
                  f"{m['end_motion']:.4f} | {m['motion']:.4f} | {m['end_contrast']:.2f} |")  # fmt: skip
        allm = {c: float(np.mean([r[c] for k in KEYED for r in rows[variant][k]])) for c in cols}
        print(f"| **{variant}** | all | **{allm['mae']:.3f}** | **{allm['delta_e']:.1f}** | "
              f"**{allm['ssim']:.3f}** | {allm['end_motion']:.4f} | {allm['motion']:.4f} | "
              f"{allm['end_contrast']:.2f} |")  # fmt: skip
    t1 = time.process_time()
    probe = pro_latent_probe(scenes)
    print(f"\nSVI 2.0 Pro keyframe latent, VAE only ({len(scenes)} scenes, "
          f"{time.process_time() - t1:.0f} s CPU): last decoded frame of [anchor, 0, 0, K]\n")  # fmt: skip
    print("| K built from | ΔE to keyframe | contrast ÷ keyframe's |")
    print("|---|---|---|")
    for name, (de, con) in probe.items():
        print(f"| {name} | {de:.1f} | {con:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
