"""Test helper, run with ComfyUI's python: SVI-Dance pose tokens through ``nodes.pose_patch``.

Usage: ``python check_pose_patch.py <comfyui_path> <pack_root> <work_dir>``.

Writes into ``work_dir``: ``dit.safetensors`` (a tiny Wan T2V DiT, official key names, dim
128 = one 128-wide head as ComfyUI assumes, text_dim 4096), ``pose.safetensors`` (a seeded
pose embedding of width 128 + the pose window) and ``out.safetensors``:
- ``x``, ``t``, ``context``: the inputs of one direct ``WanModel`` forward;
- ``plain`` / ``pose``: that forward without / with the pose wrapper (ComfyUI's own WanModel,
  wrappers taken from the patched MODEL's transformer_options), ``plain_after``: the original
  model again after the patched call (the hook must be gone);
- ``sample_plain`` / ``sample_pose`` / ``sample_pose_again`` / ``sample_pose_clone``:
  ``comfy.sample.sample`` (2 steps, CFG 2, shift 5) without / with the pose, again, and
  through a clone of the patched MODEL.
Prints one JSON line with the ComfyUI version.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys


def main(comfy: str, pack: str, work: str) -> None:
    sys.path.insert(0, comfy)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    os.chdir(comfy)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.ops
    import comfy.sample
    import comfy.sd
    import torch
    from comfy.ldm.wan.model import WanModel
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    from make_models import _init
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location(
        "svi_pack", os.path.join(pack, "__init__.py"), submodule_search_locations=[pack]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["svi_pack"] = module
    spec.loader.exec_module(module)
    from svi_pack.nodes.pose_patch import POSE_WRAPPER_KEY, with_pose_tokens
    from svi_pack.svi_core.pose import PoseEmbedding

    dim = 128
    dit = WanModel(model_type="t2v", in_dim=16, dim=dim, ffn_dim=2 * dim, freq_dim=256,
                   text_dim=4096, out_dim=16, num_heads=1, num_layers=1,
                   operations=comfy.ops.disable_weight_init)  # fmt: skip
    sd = _init(dit, 77)
    dit_path = os.path.join(work, "dit.safetensors")
    save_file(sd, dit_path)
    gen = torch.Generator().manual_seed(5)
    emb = PoseEmbedding(dim)
    with torch.no_grad():
        for p in emb.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / max(1, p[0].numel()) ** 0.5))
    emb.train(False).requires_grad_(False)
    window = torch.zeros(5, 32, 48, 3, dtype=torch.uint8)
    window[:, 8:20, 10:30] = torch.randint(0, 256, (5, 12, 20, 3), generator=gen).to(torch.uint8)
    save_file({**{f"dwpose_embedding.{k}": v for k, v in emb.state_dict().items()},
               "window": window}, os.path.join(work, "pose.safetensors"))  # fmt: skip

    model = comfy.sd.load_diffusion_model(dit_path)
    patched = with_pose_tokens(model, emb, window)
    dm = model.model.diffusion_model
    x = torch.randn(1, 16, 2, 4, 6, generator=gen)
    t = torch.tensor([700.0])
    ctx = torch.randn(1, 16, 4096, generator=gen)
    ctx_neg = torch.randn(1, 16, 4096, generator=gen)
    out: dict[str, torch.Tensor] = {"x": x, "t": t, "context": ctx, "context_neg": ctx_neg}
    with torch.no_grad():
        out["plain"] = dm(x, t, ctx, transformer_options={}).float()
        # what ComfyUI's sampler puts into transformer_options (sampler_helpers: the patcher's
        # wrappers merged into transformer_options["wrappers"])
        topts = {"wrappers": patched.wrappers}
        out["pose"] = dm(x, t, ctx, transformer_options=topts).float()
        out["plain_after"] = dm(x, t, ctx, transformer_options={}).float()
        # a guidance batch [cond, uncond] whose uncond pass runs without the pose (null_passes)
        out["plain_neg"] = dm(x, t, ctx_neg, transformer_options={}).float()
        rows = with_pose_tokens(model, emb, window, frozenset({1}))
        topts = {"wrappers": rows.wrappers, "cond_or_uncond": [0, 1]}
        out["rows"] = dm(torch.cat([x, x]), t.repeat(2), torch.cat([ctx, ctx_neg]),
                         transformer_options=topts).float()  # fmt: skip

    def sample(m) -> torch.Tensor:
        m = ModelSamplingSD3().patch(m, 5.0)[0]
        noise = torch.randn(1, 16, 2, 4, 6, generator=torch.Generator().manual_seed(9))
        return comfy.sample.sample(
            m, noise, 2, 2.0, "euler", "simple", [[ctx, {}]], [[ctx_neg, {}]],
            torch.zeros_like(noise), disable_pbar=True, seed=9,
        ).float()  # fmt: skip

    out["sample_plain"] = sample(model)
    out["sample_pose"] = sample(patched)
    out["sample_pose_again"] = sample(patched)
    out["sample_pose_clone"] = sample(patched.clone())
    out["sample_uncond_without_pose"] = sample(rows)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(work, "out.safetensors"))
    import comfyui_version

    wrappers = patched.wrappers
    print(json.dumps({"comfyui": comfyui_version.__version__,
                      "wrapper_keys": sorted(k for w in wrappers.values() for k in w),
                      "key": POSE_WRAPPER_KEY}))  # fmt: skip


if __name__ == "__main__":
    main(*sys.argv[1:4])
