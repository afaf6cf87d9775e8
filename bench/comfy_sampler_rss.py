"""Peak RSS of the SVI Infinite Sampler inside ComfyUI vs the number of clips.

Runs the node in a fresh ComfyUI process per clip count (tiny random Wan models from
``tests/tier2/make_models.py``, the test-only text / CLIP-vision stand-ins) and prints the peak
resident memory side by side, with what the same frames would take as a ComfyUI IMAGE batch
(what a chained graph keeps in RAM). Needs a ComfyUI checkout:

    COMFYUI_PATH=... COMFYUI_PYTHON=... python bench/comfy_sampler_rss.py --clips 2 8

Not a test: it prints measurements, it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIER2 = REPO / "tests" / "tier2"

CHILD = r"""
import importlib.util, json, os, resource, sys, time
comfy, base, clips, frames, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
sys.path.insert(0, comfy); os.chdir(comfy)
from comfy.cli_args import args
args.cpu = True
import folder_paths, torch
for sub in ("diffusion_models", "loras", "vae"):
    folder_paths.add_model_folder_path(sub, os.path.join(base, "models", sub), is_default=True)
folder_paths.set_output_directory(os.path.join(base, "output"))
spec = importlib.util.spec_from_file_location("svi_pack", os.path.join(sys.argv[6], "__init__.py"),
                                              submodule_search_locations=[sys.argv[6]])
pack = importlib.util.module_from_spec(spec); sys.modules["svi_pack"] = pack; spec.loader.exec_module(pack)
sys.path.insert(0, sys.argv[7])
import svi_test_nodes as T
from svi_pack.nodes.loaders import SVIModelLoader
from svi_pack.nodes.prompts import SVIPromptStream
from svi_pack.nodes.sampler import SVIInfiniteSampler
model, low, vae = SVIModelLoader.execute(
    model_name="wan2.1_i2v_480p_14B_fp16.safetensors", lora_name="svi-film-opt-10212025.safetensors",
    lora_strength=1.0, vae_name="wan_2.1_vae.safetensors").args
prompts = SVIPromptStream.execute(clip=T.FakeUMT5(), prompts="a\n\nb\n\nc", repeat=0, negative_prompt="").args[0]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.time()
SVIInfiniteSampler.execute(
    model=model, vae=vae, prompt_stream=prompts, reference_image=torch.rand(1, size, size, 3),
    mode="film", clips=clips, frames=frames, width=size, height=size, steps=1, cfg=1.0,
    sampler_name="euler", scheduler="simple", shift=5.0, seed=0, seed_stride=42, fps=16.0,
    run_name=f"rss_{clips}", on_existing_run="new", clip_vision=T.FakeClipVisionH())
print(json.dumps({"clips": clips, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_before_sampler_mb": before / 1024, "seconds": time.time() - t}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--size", type=int, default=160)
    args = ap.parse_args()
    comfy = os.environ.get("COMFYUI_PATH")
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    if not comfy:
        sys.exit("set COMFYUI_PATH (and COMFYUI_PYTHON) to a ComfyUI checkout and its python")
    with tempfile.TemporaryDirectory() as base:
        subprocess.run([python, str(TIER2 / "make_models.py"), comfy, os.path.join(base, "models")],
                       check=True, cwd=comfy)  # fmt: skip
        rows = []
        for n in args.clips:
            out = subprocess.run(
                [
                    python,
                    "-c",
                    CHILD,
                    comfy,
                    base,
                    str(n),
                    str(args.frames),
                    str(args.size),
                    str(REPO),
                    str(TIER2),
                ],  # fmt: skip
                check=True,
                cwd=comfy,
                capture_output=True,
                text=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    m = 5  # film motion frames
    print(f"film mode, {args.frames} frames/clip at {args.size}x{args.size}, 1 step per clip")
    print(
        f"{'clips':>6} {'peak RSS MB':>12} {'RSS before MB':>14} {'seconds':>8} {'IMAGE batch MB':>15}"
    )
    for r in rows:
        n = r["clips"]
        frames = n * args.frames - (n - 1) * m
        image_mb = frames * args.size * args.size * 3 * 4 / 2**20
        print(f"{n:>6} {r['peak_rss_mb']:>12.0f} {r['rss_before_sampler_mb']:>14.0f} "
              f"{r['seconds']:>8.1f} {image_mb:>15.1f}")  # fmt: skip
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        print(
            f"peak RSS ratio {b['clips']} vs {a['clips']} clips: {b['peak_rss_mb'] / a['peak_rss_mb']:.3f}"
        )


if __name__ == "__main__":
    main()
