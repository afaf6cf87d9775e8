"""Reproduce the toy-world ERFT experiment end to end (CPU, seeded).

    nice python experiments/toyworld/run_all.py --seed 0 [--work /tmp/toyrun] [--clips 50]

1. pretrain the tiny Wan VAE + I2V DiT on the toy world (``pretrain.py``; skipped when done),
2. export them to the official formats in ``svi_core/assets`` (``export.py``),
3. write a toy training set (mp4s of training-seed scenes) and the fixed toy context,
4. train two LoRAs through the real trainer ``train.loop.train``: ERFT and plain
   (``erft_enabled=False``), same data, steps and seed,
5. roll out ``--clips`` clips from held-out first frames with base / plain / ERFT through the
   real SVI loop (``svi_core.loop.run_clips``, mode ``tom`` at the toy size, standalone
   ``DiffusersBackend``), same seeds,
6. drift reports of every rollout (``svi_core.report``) and a table + plots at clips
   1, 10, 25, 50 in ``--work/results.md`` / ``results.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

TRAIN_SEED_BASE = 10_000
EVAL_SCENES = (3, 7, 11, 19)
METRICS = ("delta_e", "brightness", "contrast", "sharpness", "ssim_anchor", "flicker", "motion")


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def write_dataset(root: Path, n_videos: int, frames: int, seed: int) -> None:
    """``n_videos`` toy videos of training-seed scenes as near-lossless mp4 (16 fps)."""
    import imageio_ffmpeg

    from svi_core.toy.models import TOY_HEIGHT, TOY_WIDTH
    from svi_core.toy.world import ToyScene, WorldConfig

    root.mkdir(parents=True, exist_ok=True)
    if len(list(root.glob("*.mp4"))) >= n_videos:
        return
    rng = np.random.default_rng(seed + 7)
    cfg = WorldConfig(height=TOY_HEIGHT, width=TOY_WIDTH)
    for i in range(n_videos):
        scene = ToyScene(int(rng.integers(TRAIN_SEED_BASE, TRAIN_SEED_BASE + 100_000)), cfg)
        v = scene.frames(int(rng.integers(0, 200)), frames)
        w = imageio_ffmpeg.write_frames(
            str(root / f"toy_{i:03d}.mp4"),
            (TOY_WIDTH, TOY_HEIGHT),
            fps=16,
            quality=None,
            output_params=["-crf", "4"],
            macro_block_size=1,
        )
        w.send(None)
        for f in v:
            w.send(np.ascontiguousarray(f))
        w.close()
        (root / f"toy_{i:03d}.txt").write_text("toy world\n")


def write_context(path: Path) -> None:
    from safetensors.torch import save_file

    from svi_core.toy.models import IMAGE_SHAPE, TEXT_SHAPE

    save_file(
        {"context": torch.zeros(TEXT_SHAPE[1:]), "clip_fea": torch.zeros(IMAGE_SHAPE[1:])},
        str(path),
    )


def train_loras(
    work: Path,
    seed: int,
    steps: int,
    lr: float,
    rank: int,
    names: tuple[str, ...] = ("erft", "plain"),
) -> dict[str, Path | None]:
    from svi_core.toy.models import TOY_FRAMES, TOY_HEIGHT, TOY_VAE, TOY_WIDTH, load_toy_dit
    from train.config import preset
    from train.loop import TrainModels, train

    out = {}
    for name, erft in (("erft", True), ("plain", False)):
        if name not in names:
            out[name] = None
            continue
        target = work / f"lora_{name}" / f"toy-{name}.safetensors"
        if target.is_file():
            out[name] = target
            continue
        cfg = preset(
            "film",  # zero padding (the toy rollouts use mode tom: m = 1, zeros)
            num_motion_frames=1,
            dataset=str(work / "dataset"),
            output_dir=str(work / f"lora_{name}"),
            cache_dir=str(work / "train_cache"),
            num_frames=TOY_FRAMES,
            height=TOY_HEIGHT,
            width=TOY_WIDTH,
            augment_draws=2,
            context_file=str(work / "toy_context.safetensors"),
            vae_path=str(TOY_VAE),
            lora_rank=rank,
            lora_alpha=float(rank),
            learning_rate=lr,
            max_steps=steps,
            precision="fp32",
            gradient_checkpointing=False,
            seed=seed,
            erft_enabled=erft,
            bank_capacity=100,
            bank_warmup_iters=1,
            checkpoint_every=max(steps // 2, 1),
            save_banks=False,
            log_every=50,
            export_dtype="fp32",
            export_name=f"toy-{name}",
        )
        log(f"training {name} LoRA: {steps} steps")
        out[name] = Path(train(cfg, TrainModels(transformer=load_toy_dit())))
    return out


def rollout(work: Path, name: str, lora: Path | None, scene: int, clips: int, steps: int) -> dict:
    from svi_core.loop import LoopInputs, RunSettings, run_clips
    from svi_core.report import build_report, layout_from_run
    from svi_core.toy.demo import toy_mode
    from svi_core.toy.models import TOY_HEIGHT, TOY_WIDTH, toy_backend
    from svi_core.toy.world import WorldConfig, toy_first_frame

    d = work / "rollouts" / f"{name}_scene{scene}"
    rep_path = d / "report.json"
    if rep_path.is_file():
        data = json.loads(rep_path.read_text())
        if len(data["clips"]) >= clips:
            return data
    ref = toy_first_frame(scene, WorldConfig(height=TOY_HEIGHT, width=TOY_WIDTH))
    backend = toy_backend(lora=lora)
    settings = RunSettings(
        mode=toy_mode(steps), width=TOY_WIDTH, height=TOY_HEIGHT, num_clips=clips
    )
    t0 = time.time()
    res = run_clips(
        backend,
        settings,
        LoopInputs(reference=torch.from_numpy(ref.copy()), prompts=["toy world"]),
        d / "run",
        output=d / "video.mp4",
    )
    spans, f, m = layout_from_run(str(res.run_dir))
    build_report(str(res.video), str(d), f, m, anchor=ref, spans=spans[:clips])
    log(f"rollout {name} scene {scene}: {clips} clips in {time.time() - t0:.0f} s")
    return json.loads(rep_path.read_text())


def clip_value(data: dict, metric: str, k: int) -> float:
    c = data["clips"][k]
    return float(c[metric])


def summarise(work: Path, results: dict[str, list[dict]], clips: int) -> str:
    checkpoints = [k for k in (1, 10, 25, 50) if k <= clips]
    if clips not in checkpoints:
        checkpoints.append(clips)
    lines = [
        f"Toy world, {len(next(iter(results.values())))} held-out scene(s), mode tom, "
        f"{clips} clips; mean over scenes. Clip numbers are 1-based.",
        "",
        "| metric | model | " + " | ".join(f"clip {k}" for k in checkpoints) + " | VDE |",
        "|---|---|" + "---|" * (len(checkpoints) + 1),
    ]
    for metric in METRICS:
        for name, reps in results.items():
            vals = [np.mean([clip_value(r, metric, k - 1) for r in reps]) for k in checkpoints]
            vde_key = "colour" if metric == "delta_e" else metric
            v = [r["vde"].get(vde_key) for r in reps]
            vde = (
                np.mean([x for x in v if x is not None]) if any(x is not None for x in v) else None
            )
            lines.append(
                f"| {metric} | {name} | "
                + " | ".join(f"{x:.4f}" for x in vals)
                + f" | {'' if vde is None else f'{vde:.3f}'} |"
            )
    # relative drift at the last clip against clip 1
    lines += ["", "Relative change, last clip vs clip 1 (mean over scenes):", ""]
    lines.append("| model | ΔE colour | sharpness | contrast | brightness | motion |")
    lines.append("|---|---|---|---|---|---|")
    for name, reps in results.items():

        def rel(metric: str, reps=reps) -> float:
            return float(
                np.mean(
                    [
                        (clip_value(r, metric, clips - 1) - clip_value(r, metric, 0))
                        / abs(clip_value(r, metric, 0))
                        for r in reps
                    ]
                )
            )

        de = np.mean([clip_value(r, "delta_e", clips - 1) for r in reps])
        lines.append(
            f"| {name} | {de:.3f} | {rel('sharpness'):+.1%} | {rel('contrast'):+.1%} | "
            f"{rel('brightness'):+.1%} | {rel('motion'):+.1%} |"
        )

    # the target: ERFT colour / sharpness drift at the last clip <= half of base's and
    # below plain's, motion not lower than base
    def last(name: str, metric: str) -> float:
        reps = results[name]
        if metric == "delta_e":
            return float(np.mean([clip_value(r, "delta_e", clips - 1) for r in reps]))
        return float(
            np.mean(
                [
                    abs(clip_value(r, metric, clips - 1) - clip_value(r, metric, 0))
                    / abs(clip_value(r, metric, 0))
                    for r in reps
                ]
            )
        )

    if {"base", "plain", "erft"} <= set(results):
        lines += ["", f"Target check at clip {clips} (drift = ΔE, or |relative change|):", ""]
        for metric in ("delta_e", "sharpness"):
            b, pl, e = last("base", metric), last("plain", metric), last("erft", metric)
            lines.append(
                f"- {metric}: base {b:.4f}, plain {pl:.4f}, ERFT {e:.4f}; ERFT/base {e / b:.2f} "
                f"(target <= 0.5: {'met' if e <= 0.5 * b else 'NOT met'}), ERFT < plain: "
                f"{'yes' if e < pl else 'no'}"
            )
        mb = np.mean([clip_value(r, "motion", k) for r in results["base"] for k in range(clips)])
        me = np.mean([clip_value(r, "motion", k) for r in results["erft"] for k in range(clips)])
        lines.append(
            f"- motion (mean over all clips): base {mb:.4f}, ERFT {me:.4f} "
            f"({'not lower' if me >= mb else 'LOWER'} than base)"
        )
    return "\n".join(lines) + "\n"


def plot(work: Path, results: dict[str, list[dict]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for ax, metric in zip(axes.ravel(), METRICS + ("seam_ratio",), strict=False):
        for name, reps in results.items():
            n = min(len(r["clips"]) for r in reps)
            ys = []
            for k in range(n):
                vals = [r["clips"][k][metric] for r in reps]
                vals = [v for v in vals if v is not None]
                ys.append(np.mean(vals) if vals else np.nan)
            ax.plot(np.arange(1, n + 1), ys, label=name)
        ax.set_title(metric)
        ax.set_xlabel("clip")
    axes[0, 0].legend()
    fig.tight_layout()
    p = work / "results.png"
    fig.savefig(p, dpi=80)
    plt.close(fig)
    return p


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("/tmp/svi_toyrun"))
    p.add_argument("--clips", type=int, default=50)
    p.add_argument("--scenes", type=int, default=4, help="held-out scenes per model")
    p.add_argument("--steps", type=int, default=10, help="sampling steps per clip")
    p.add_argument("--lora-steps", type=int, default=2000)
    p.add_argument("--lora-lr", type=float, default=5e-4)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--videos", type=int, default=24)
    p.add_argument(
        "--skip-pretrain", action="store_true", help="use the shipped assets as the base"
    )
    p.add_argument(
        "--models",
        default="base,plain,erft",
        help="rollouts to run (comma list; 'none' = train only). Separate invocations with one "
        "model each can run side by side; a last full invocation reuses their reports.",
    )
    p.add_argument(
        "--ship-lora", action="store_true", help="copy the ERFT LoRA into svi_core/assets"
    )
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    torch.set_num_threads(1)
    a.work.mkdir(parents=True, exist_ok=True)
    if not a.skip_pretrain:
        import export
        import pretrain

        pretrain.main(["--seed", str(a.seed), "--out", str(a.work / "pretrain")])
        export.main(["--src", str(a.work / "pretrain")])
    write_dataset(a.work / "dataset", a.videos, 40, a.seed)
    write_context(a.work / "toy_context.safetensors")
    wanted = [m.strip() for m in a.models.split(",") if m.strip() and m.strip() != "none"]
    need = tuple(m for m in ("erft", "plain") if m in wanted or not wanted)
    loras = train_loras(a.work, a.seed, a.lora_steps, a.lora_lr, a.lora_rank, need)
    if a.ship_lora and loras["erft"] is not None:
        from svi_core.lora import load_lora, save_lora_canonical
        from svi_core.toy.demo import TOY_LORA

        save_lora_canonical(load_lora(loras["erft"]), TOY_LORA)
    results: dict[str, list[dict]] = {}
    for name, lora in (("base", None), ("plain", loras["plain"]), ("erft", loras["erft"])):
        if name not in wanted:
            continue
        results[name] = [
            rollout(a.work, name, lora, s, a.clips, a.steps) for s in EVAL_SCENES[: a.scenes]
        ]
    if len(results) < 3:
        return 0
    table = summarise(a.work, results, a.clips)
    (a.work / "results.md").write_text(table)
    plot(a.work, results)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
