"""Talk and dance training steps vs a shot step on the same tiny DiT, measured side by side.

All three run the same train-loop code (``train.loop.erft_step`` + backward + grad clip +
AdamW, banks empty) on one cached sample of the same pixel count; talk adds the MultiTalk
projection + one audio attention per block (frozen), dance the pose embedding (trained, seven
Conv3d at full resolution) and its gradients. Each round times the three back to back (order
rotating) in CPU time of this process (``time.process_time``); ratios are medians of per-round
ratios. The tiny DiT is so small that the pose embedding dominates the dance step here; at
Wan 14B size (81 x 832 x 480) its forward is about 1 TFLOP against about 2 PFLOP for the DiT,
but its full-resolution activations (16 channels x 84 x 832 x 480 per conv, ~1 GB each in bf16)
add several GB of memory for the backward, as in the official trainer.

Also measured: the dance pose cache at the official training size (81 frames x 832 x 480),
dense vs sparse (:func:`train.dance.pack_pose_frames`), on skeletons drawn by
:func:`svi_core.pose_align.draw_pose` (a DWPose-style body walking across the frame).

Run: ``python bench/train_conditions.py``. The last two lines are the talk / shot and
dance / shot step-time ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.banks import ErrorBanks  # noqa: E402
from train.cache import (  # noqa: E402
    Encoders,
    FeatureCache,
    build_cache,
    diffusers_vae_encoder,
    load_sample,  # noqa: E402
)
from train.conditions import condition_rng, family_for  # noqa: E402
from train.config import preset  # noqa: E402
from train.erft import InjectionProbs, TrainingSchedule  # noqa: E402
from train.loop import add_lora, erft_step, step_rngs  # noqa: E402
from train.talk import wav2vec2_encoder  # noqa: E402
from train.tiny import (  # noqa: E402
    moving_frames,
    skeleton_frames,
    speech_like,
    tiny_clip_encoder,
    tiny_multitalk,
    tiny_text_encoder,
    tiny_transformer,
    tiny_vae,
    tiny_wav2vec2,
    write_video,
    write_video_with_audio,
)


def _walker(n: int, width: int, height: int) -> np.ndarray:
    """uint8 [n, H, W, 3] skeletons of a body crossing the frame (official palette)."""
    from svi_core.pose_align import PoseKeypoints, draw_pose

    # OpenPose body order: nose, neck, r shoulder, r elbow, r wrist, l shoulder, l elbow,
    # l wrist, r hip, r knee, r ankle, l hip, l knee, l ankle, r eye, l eye, r ear, l ear
    base = np.array(
        [
            [0.50, 0.12], [0.50, 0.22], [0.42, 0.23], [0.38, 0.36], [0.36, 0.48],
            [0.58, 0.23], [0.62, 0.36], [0.64, 0.48], [0.45, 0.52], [0.44, 0.70],
            [0.44, 0.88], [0.55, 0.52], [0.56, 0.70], [0.56, 0.88], [0.48, 0.10],
            [0.52, 0.10], [0.46, 0.11], [0.54, 0.11], [0.42, 0.90], [0.58, 0.90],
        ]
    )  # fmt: skip
    out = np.empty((n, height, width, 3), dtype=np.uint8)
    for t in range(n):
        body = base.copy()
        body[:, 0] += 0.2 * np.sin(2 * np.pi * t / n)
        body[[4, 7], 1] -= 0.1 * np.abs(np.sin(2 * np.pi * t / 20))
        kp = PoseKeypoints(
            body=body, hands=np.full((2, 21, 2), np.nan), face=np.full((68, 2), np.nan)
        )
        out[t] = draw_pose(kp, width, height)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=3, help="steps per family per round")
    args = ap.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_video(root / "shot" / "v.mp4", moving_frames(30, 32, 48), fps=25)
        write_video_with_audio(root / "talk" / "v.mp4", moving_frames(30, 32, 48), speech_like(1.2))
        write_video(root / "dance" / "a" / "video.mp4", moving_frames(30, 48, 32))
        write_video(root / "dance" / "a" / "dwpose.mp4", skeleton_frames(30, 48, 32))
        w2v = tiny_wav2vec2(root / "w2v")
        mt = tiny_multitalk(root / "mt.safetensors", tiny_transformer(num_layers=2))
        features, audio_id = wav2vec2_encoder(str(w2v))
        enc = Encoders(
            diffusers_vae_encoder(tiny_vae()), tiny_text_encoder(), tiny_clip_encoder(),
            "v", "t", "c", features, audio_id,
        )  # fmt: skip
        common = dict(num_frames=9, augment_draws=1, precision="fp32", lora_rank=8,
                      lora_alpha=8.0, erft_enabled=True)  # fmt: skip
        cfgs = {
            "shot": preset("shot", dataset=str(root / "shot"), height=32, width=48, **common),
            "talk": preset(
                "talk",
                dataset=str(root / "talk"),
                height=32,
                width=48,
                multitalk_path=str(mt),
                **common,
            ),  # fmt: skip
            "dance": preset("dance", dataset=str(root / "dance"), height=48, width=32, **common),
        }
        runs = {}
        for name, cfg in cfgs.items():
            cfg = cfg.replace(output_dir=str(root / f"out-{name}"))
            fam = family_for(cfg)
            samples, _ = build_cache(cfg, fam.list_items(cfg), enc)
            sample = load_sample(FeatureCache(cfg.cache_path), samples[0])
            model = add_lora(tiny_transformer(num_layers=2), cfg)
            fam.attach(model, cfg)
            model.train()
            trainable = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(trainable, lr=1e-4)
            runs[name] = (cfg, fam, model, sample, trainable, opt)

        sched = TrainingSchedule.build()
        dev = torch.device("cpu")

        def run(name: str, step: int) -> float:
            cfg, fam, model, sample, trainable, opt = runs[name]
            banks = ErrorBanks(cfg.bank_cells, cfg.bank_capacity, cfg.shift, cfg.bank_dtype)
            t0 = time.process_time()
            for k in range(args.steps):
                gen, rng = step_rngs(0, 0, step * args.steps + k)
                cond = fam.step_condition(sample, cfg, condition_rng(0, 0, step), dev)
                loss, _, _ = erft_step(
                    model, sample, cfg, sched, banks, InjectionProbs(), gen, rng, dev,
                    torch.float32, True, cond,
                )  # fmt: skip
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                opt.step()
            return (time.process_time() - t0) / args.steps

        for name in runs:  # warm-up
            run(name, 0)
        times = {n: [] for n in runs}
        order = list(runs)
        for r in range(args.rounds):
            for name in order[r % 3 :] + order[: r % 3]:
                times[name].append(run(name, r + 1))
        for name in runs:
            print(f"{name:5s} step: median {statistics.median(times[name]) * 1000:.1f} ms (CPU)")

    frames = torch.from_numpy(_walker(81, 480, 832))
    from train.dance import pack_pose_frames

    packed = pack_pose_frames(frames)
    dense = frames.numel()
    sparse = sum(t.numel() * t.element_size() for t in packed.values())
    lit = float(frames.reshape(-1, 3).any(dim=1).float().mean())
    print(
        f"pose cache per sample at 81 x 832 x 480: dense {dense / 1e6:.1f} MB, sparse "
        f"{sparse / 1e6:.1f} MB ({lit * 100:.1f} % of pixels lit)"
    )
    talk = statistics.median(a / b for a, b in zip(times["talk"], times["shot"], strict=True))
    dance = statistics.median(a / b for a, b in zip(times["dance"], times["shot"], strict=True))
    print(f"talk / shot step time: {talk:.2f}")
    print(f"dance / shot step time: {dance:.2f}")


if __name__ == "__main__":
    main()
