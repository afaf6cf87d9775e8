"""SVI loop overhead: time of the SVI loop for N clips / (N x one plain I2V clip), same model,
same steps, measured side by side in one process (tiny random models on CPU).

The plain I2V clip is what a one-shot image-to-video call costs: one conditioning encode, CLIP
vision, sampling, decode (frames kept in memory, nothing written). The SVI loop adds carrying
the motion frames, quantising, writing the H.264 segment, the clip state and the manifest, and
joining the final mp4. The DiT is a small random diffusers model; by default the VAE is the
cheap stand-in codec of bench/_tiny.py (``--codec vae`` uses a tiny random diffusers VAE, which
on a small CPU costs more than the DiT, unlike real Wan). Rounds alternate which arm runs first;
the ratio is the median of the per-round ratios. Target: ratio <= 1.03. The LAST line printed
is the ratio.

    python bench/loop_overhead.py [--clips 4] [--steps 50] [--size 128] [--frames 17] [--rounds 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tiny import CheapCodecBackend, reference, text_context, tiny_backend  # noqa: E402

from svi_core.backend import ClipRequest  # noqa: E402
from svi_core.conditioning import build_conditioning  # noqa: E402
from svi_core.loop import LoopInputs, RunSettings, clip_noise, run_clips  # noqa: E402
from svi_core.modes import get_mode  # noqa: E402


def plain_clip(backend, mode, ref, prompt, negative, seed):
    cond = build_conditioning(backend, mode, ref, None)
    fea = backend.encode_clip_vision(cond.clip_frame)
    t, h, w = mode.latent_frames, ref.shape[0] // 8, ref.shape[1] // 8
    req = ClipRequest(
        index=0, seed=seed, noise=clip_noise(seed, t, h, w), cond_latent=cond.cond_latent,
        mask=cond.mask, positive=prompt, negative=negative, clip_vision=fea,
        steps=mode.steps, guidance=mode.guidance_for(), shift=mode.shift,
    )  # fmt: skip
    return backend.decode(backend.denoise(req))


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (ffmpeg), all threads."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layers", type=int, default=4, help="DiT blocks")
    ap.add_argument("--heads", type=int, default=4, help="DiT heads of 32 channels")
    ap.add_argument("--codec", choices=["cheap", "vae"], default="cheap")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: less noise)")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(a.threads)
    backend = tiny_backend(dim_heads=a.heads, head_dim=32, layers=a.layers)
    if a.codec == "cheap":
        backend = CheapCodecBackend(backend)
    mode = get_mode("film", frames=a.frames, steps=a.steps)
    ref = reference(a.size, a.size)
    prompts = [text_context(i) for i in range(3)]
    negative = text_context(99)
    settings = RunSettings(mode=mode, width=a.size, height=a.size, num_clips=a.clips)
    plain_clip(backend, mode, ref, prompts[0], negative, 0)  # warm-up
    wall = {"plain": [], "svi": []}
    cpu = {"plain": [], "svi": []}

    def plain_run() -> None:
        for k in range(a.clips):
            plain_clip(backend, mode, ref, prompts[k % 3], negative, mode.seed_for(k))

    def svi_run() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            inputs = LoopInputs(reference=ref, prompts=prompts, negative=negative)
            run_clips(backend, settings, inputs, Path(tmp) / "run", output=Path(tmp) / "out.mp4")

    for r in range(a.rounds):
        order = [("plain", plain_run), ("svi", svi_run)]
        for name, fn in order if r % 2 == 0 else order[::-1]:  # alternate who goes first
            c0, t0 = cpu_seconds(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(cpu_seconds() - c0)
        print(
            f"round {r}: plain {wall['plain'][-1]:.2f} s wall / {cpu['plain'][-1]:.2f} s CPU, "
            f"SVI loop {wall['svi'][-1]:.2f} s wall / {cpu['svi'][-1]:.2f} s CPU"
        )
    ratios = sorted(s / p for s, p in zip(wall["svi"], wall["plain"], strict=True))
    cpu_ratios = sorted(s / p for s, p in zip(cpu["svi"], cpu["plain"], strict=True))
    plain, svi = statistics.median(wall["plain"]), statistics.median(wall["svi"])
    print(
        f"{a.clips} clips, {a.frames} frames, {a.size}x{a.size}, {a.steps} steps, codec {a.codec}, "
        f"{a.rounds} rounds: median plain {plain / a.clips:.3f} s/clip, SVI {svi / a.clips:.3f} "
        f"s/clip; per-round ratios {', '.join(f'{r:.3f}' for r in ratios)}; median CPU-time "
        f"ratio {statistics.median(cpu_ratios):.4f}"
    )
    print(f"{statistics.median(ratios):.4f}")


if __name__ == "__main__":
    main()
