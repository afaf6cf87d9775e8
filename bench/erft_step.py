"""ERFT step time vs plain LoRA step time on the same tiny DiT, measured side by side.

Both paths run the same train-loop code (``train.loop.erft_step`` + backward + clip + AdamW);
ERFT adds the bank draws, the injections, the one-step errors and the bank update. The banks
are pre-filled to capacity (``--capacity`` per cell, all 50 cells) so every update pays the
full L2 nearest-entry search (the worst case). Each round times plain and ERFT back to back
(order alternating) in CPU time of this process (``time.process_time``: the shared CI/dev
machine's other jobs do not count); the ratio is the median of the per-round ratios.

Also measured: reading one cached sample vs encoding it online (tiny VAE + tiny text/CLIP
stand-ins), and one bank update into a full cell at the official latent size
[16, 21, 60, 104] (measured at Z = --real-z / 4 and --real-z, extrapolated linearly to 500).

Run: ``python bench/erft_step.py``. The last line is the ERFT / plain step-time ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.banks import ErrorBanks  # noqa: E402
from train.cache import (  # noqa: E402
    Encoders,
    FeatureCache,
    build_cache,
    diffusers_vae_encoder,
    load_sample,
)
from train.config import preset  # noqa: E402
from train.data import list_videos  # noqa: E402
from train.erft import InjectionProbs, TrainingSchedule  # noqa: E402
from train.loop import _update_banks, add_lora, erft_step, step_rngs  # noqa: E402
from train.tiny import (  # noqa: E402
    moving_frames,
    tiny_clip_encoder,
    tiny_text_encoder,
    tiny_transformer,
    tiny_vae,
    write_video,
)


def _fill(banks: ErrorBanks, shape: tuple[int, ...], capacity: int) -> None:
    g = torch.Generator().manual_seed(0)
    for c in range(banks.noise.num_cells):
        for _ in range(capacity):
            e = torch.randn(shape, generator=g) * 0.1
            banks.noise.add(c, e)
            banks.video.add(c, e)


def _steps(model, opt, trainable, sample, cfg, sched, banks, probs, n, start, use_erft) -> float:
    c = cfg.replace(erft_enabled=use_erft)
    t0 = time.process_time()
    for i in range(start, start + n):
        gen, rng = step_rngs(0, 0, i)
        loss, _, info = erft_step(
            model, sample, c, sched, banks, probs, gen, rng, torch.device("cpu"), torch.float32
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        if use_erft:
            _update_banks(banks, info, c, rng, step=10**6)  # past warm-up: local update
    return (time.process_time() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--capacity", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--real-z", type=int, default=80)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)  # 1: CPU time is not inflated by threads spinning

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(2):
            write_video(
                root / "ds" / f"v{i}.mp4",
                moving_frames(args.frames + 8, args.height, args.width, i),
            )
            (root / "ds" / f"v{i}.txt").write_text(f"pattern {i}")
        cfg = preset(
            "shot",
            dataset=str(root / "ds"),
            output_dir=str(root / "out"),
            num_frames=args.frames,
            height=args.height,
            width=args.width,
            augment_draws=1,
            precision="fp32",
            lora_rank=args.rank,
            lora_alpha=float(args.rank),
            bank_capacity=args.capacity,
        )
        vae = tiny_vae()
        enc = Encoders(
            diffusers_vae_encoder(vae), tiny_text_encoder(), tiny_clip_encoder(), "v", "t", "c"
        )
        items = list_videos(cfg.dataset)

        # ---- cache read vs online encode ------------------------------------------------
        t0 = time.perf_counter()
        samples, _ = build_cache(cfg, items, enc)
        encode_s = (time.perf_counter() - t0) / len(samples)
        cache = FeatureCache(cfg.cache_path)
        reads = 20
        t0 = time.perf_counter()
        for i in range(reads):
            load_sample(cache, samples[i % len(samples)])
        read_s = (time.perf_counter() - t0) / reads
        sample = load_sample(cache, samples[0])

        # ---- ERFT vs plain step ------------------------------------------------------------
        sched = TrainingSchedule.build()
        probs = InjectionProbs(clean=cfg.clean_prob)
        models = {}
        for name in ("plain", "erft"):
            m = add_lora(tiny_transformer(seed=0, num_layers=args.layers), cfg)
            m.enable_gradient_checkpointing()
            m.train()
            trainable = [p for p in m.parameters() if p.requires_grad]
            models[name] = (m, torch.optim.AdamW(trainable, lr=1e-4), trainable)
        banks = ErrorBanks(50, args.capacity)
        _fill(banks, tuple(sample.latent.shape[1:]), args.capacity)
        times: dict[str, list[float]] = {"plain": [], "erft": []}
        pairs: list[float] = []
        step = 0
        for r in range(args.rounds + 1):  # round 0 warms up
            order = ("plain", "erft") if r % 2 else ("erft", "plain")
            got = {}
            for name in order:
                m, opt, tr = models[name]
                got[name] = _steps(
                    m, opt, tr, sample, cfg, sched, banks, probs, args.steps, step, name == "erft"
                )
            step += args.steps
            if r > 0:
                for name in got:
                    times[name].append(got[name])
                pairs.append(got["erft"] / got["plain"])
        plain = statistics.median(times["plain"])
        erft = statistics.median(times["erft"])

        # ---- one bank update at the official latent size -----------------------------------
        real_shape = (16, 21, 60, 104)
        real_times = {}
        for z in (args.real_z // 4, args.real_z):
            real = ErrorBanks(1, z)
            _fill(real, real_shape, z)
            new = torch.randn(real_shape)
            t0 = time.perf_counter()
            for _ in range(3):
                real.add(new, new, 1000.0)
            real_times[z] = (time.perf_counter() - t0) / 3
            del real
        z1, z2 = sorted(real_times)
        slope = (real_times[z2] - real_times[z1]) / (z2 - z1)
        real_500 = real_times[z2] + slope * (500 - z2)

    lat = tuple(sample.latent.shape[1:])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(
        f"tiny DiT: {args.layers} layers, dim 32, LoRA r={args.rank}; latent {lat}; "
        f"banks 2 x 50 cells x Z={args.capacity} (full)"
    )
    print(
        f"cache: online encode {encode_s * 1000:.1f} ms/sample, cache read {read_s * 1000:.2f} ms/sample"
    )
    print(f"cache read / online encode throughput: {encode_s / read_s:.1f}x")
    print(
        f"bank update (both banks, full cell) at [16, 21, 60, 104]: "
        f"{real_times[z1]:.3f} s (Z={z1}), {real_times[z2]:.3f} s (Z={z2}), "
        f"~{real_500:.2f} s at Z=500 (linear fit; CPU, this machine)"
    )
    print(
        f"plain LoRA step {plain * 1000:.1f} ms, ERFT step {erft * 1000:.1f} ms "
        f"(process CPU time, median of {args.rounds} rounds)"
    )
    print(f"paired rounds (erft/plain): {' '.join(f'{p:.3f}' for p in pairs)}")
    print(f"erft/plain step time ratio (median of paired rounds): {statistics.median(pairs):.3f}")


if __name__ == "__main__":
    main()
