"""Test helper, run with ComfyUI's python: which timesteps does the DiT see under
``nodes.backend.with_shift(..., timestep_dtype)``? Prints one JSON line per dtype.

Usage: ``python check_bf16_timestep.py <comfyui_path> <pack_root> <wan22 dit file>``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys


def main(comfy: str, pack: str, dit_file: str) -> None:
    sys.path.insert(0, comfy)
    os.chdir(comfy)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.sample
    import comfy.sd
    import torch

    spec = importlib.util.spec_from_file_location(
        "svi_pack", os.path.join(pack, "__init__.py"), submodule_search_locations=[pack]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["svi_pack"] = module
    spec.loader.exec_module(module)
    from svi_pack.nodes.backend import with_shift

    model = comfy.sd.load_diffusion_model(dit_file)
    dit = model.model.diffusion_model
    seen: list[float] = []
    forward = dit._forward

    def spy(x, timestep, *a, **k):
        seen.append(float(timestep.flatten()[0]))
        return forward(x, timestep, *a, **k)

    dit._forward = spy
    for dtype in ("float32", "bfloat16"):
        seen.clear()
        patched = with_shift(model, 5.0, dtype)
        noise = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
        cond = [[torch.zeros(1, 512, 4096), {}]]
        comfy.sample.sample(patched, noise, 4, 1.0, "euler", "simple", cond, cond,
                            torch.zeros_like(noise), disable_pbar=True, seed=0)  # fmt: skip
        print(json.dumps({"dtype": dtype, "timesteps": seen}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
