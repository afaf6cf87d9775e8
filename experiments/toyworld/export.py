"""Convert the pretrained toy models (diffusers state dicts) to the official Wan file formats.

    python experiments/toyworld/export.py --src /work/toyrun/pretrain --dst svi_core/assets

Writes into --dst:
  toy_wan_dit.safetensors   official Wan DiT key names (``blocks.0.self_attn.q.weight``,
                            ``head.modulation``, ``img_emb.proj.0.weight`` ...), float16
  toy_wan_dit.json          official WanModel config (``dim``, ``num_heads`` ...) -- kept as
                            ``config.json`` next to the DiT for the project's loader
  toy_wan_vae.safetensors   official WanVAE key names (``encoder.conv1.weight``,
                            ``decoder.middle.0.residual.0.gamma`` ...), float16
Then checks both files load back through ``svi_core.standalone.models`` and give the same
outputs as the diffusers modules they came from.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from svi_core.checkpoints import diffusers_dit_to_official  # noqa: E402

_RES = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma",
        "conv2": "residual.6", "conv_shortcut": "shortcut"}  # fmt: skip


def _res(rest: str) -> str:
    """``norm1.gamma`` / ``conv1.weight`` ... of a diffusers resnet -> official residual name."""
    for d, o in _RES.items():
        if rest == d or rest.startswith(d + "."):
            return o + rest[len(d) :]
    raise KeyError(rest)


def vae_diffusers_to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of diffusers' ``convert_wan_vae_to_diffusers`` (2 res blocks, 4 levels)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        new = None
        if k.startswith("quant_conv."):
            new = "conv1." + k[len("quant_conv.") :]
        elif k.startswith("post_quant_conv."):
            new = "conv2." + k[len("post_quant_conv.") :]
        else:
            side, rest = k.split(".", 1)
            if rest.startswith("conv_in."):
                new = f"{side}.conv1." + rest[len("conv_in.") :]
            elif rest.startswith("norm_out."):
                new = f"{side}.head.0." + rest[len("norm_out.") :]
            elif rest.startswith("conv_out."):
                new = f"{side}.head.2." + rest[len("conv_out.") :]
            elif m := re.match(r"mid_block\.resnets\.(\d)\.(.+)$", rest):
                new = f"{side}.middle.{2 * int(m.group(1))}.{_res(m.group(2))}"
            elif m := re.match(r"mid_block\.attentions\.0\.(.+)$", rest):
                new = f"{side}.middle.1.{m.group(1)}"
            elif m := re.match(r"down_blocks\.(\d+)\.(.+)$", rest):
                tail = m.group(2)
                if not (tail.startswith("resample") or tail.startswith("time_conv")):
                    tail = _res(tail)
                new = f"encoder.downsamples.{m.group(1)}.{tail}"
            elif m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", rest):
                new = (
                    f"decoder.upsamples.{4 * int(m.group(1)) + int(m.group(2))}.{_res(m.group(3))}"
                )
            elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)$", rest):
                new = f"decoder.upsamples.{4 * int(m.group(1)) + 3}.{m.group(2)}"
        if new is None:
            raise KeyError(f"no official name for VAE tensor {k}")
        out[new] = v
    return out


def official_dit_config(dit_cfg: dict) -> dict:
    """Official WanModel config for the diffusers toy config."""
    dim = dit_cfg["num_attention_heads"] * dit_cfg["attention_head_dim"]
    return {
        "_class_name": "WanModel",
        "model_type": "i2v",
        "patch_size": list(dit_cfg["patch_size"]),
        "text_len": 512,
        "in_dim": dit_cfg["in_channels"],
        "dim": dim,
        "ffn_dim": dit_cfg["ffn_dim"],
        "freq_dim": dit_cfg["freq_dim"],
        "text_dim": dit_cfg["text_dim"],
        "out_dim": dit_cfg["out_channels"],
        "num_heads": dit_cfg["num_attention_heads"],
        "num_layers": dit_cfg["num_layers"],
        "window_size": [-1, -1],
        "qk_norm": True,
        "cross_attn_norm": True,
        "eps": dit_cfg["eps"],
    }


def export(
    src: Path, dst: Path, dit_file: str = "dit.safetensors", prefix: str = "toy_wan"
) -> None:
    cfgs = json.loads((src / "configs.json").read_text())
    dst.mkdir(parents=True, exist_ok=True)
    dit_sd = load_file(str(src / dit_file))
    off = diffusers_dit_to_official(dit_sd)
    save_file(
        {k: v.half().contiguous() for k, v in off.items()}, str(dst / f"{prefix}_dit.safetensors")
    )
    (dst / f"{prefix}_dit.json").write_text(
        json.dumps(official_dit_config(cfgs["dit"]), indent=1) + "\n"
    )
    vae_sd = load_file(str(src / "vae.safetensors"))
    save_file({k: v.half().contiguous() for k, v in vae_diffusers_to_official(vae_sd).items()},
              str(dst / f"{prefix}_vae.safetensors"))  # fmt: skip
    check(src, dst, prefix, dit_file)


@torch.no_grad()
def check(src: Path, dst: Path, prefix: str, dit_file: str = "dit.safetensors") -> None:
    """Load the exported files through the project's loaders; compare with the originals."""
    from pretrain import make_dit, make_vae  # noqa: PLC0415

    from svi_core.toy.models import load_toy_dit, load_toy_vae

    vae0 = make_vae().eval()
    vae0.load_state_dict(
        {k: v.half().float() for k, v in load_file(str(src / "vae.safetensors")).items()}
    )
    vae1 = load_toy_vae(dst / f"{prefix}_vae.safetensors")
    x = torch.rand(1, 3, 5, 48, 64) * 2 - 1
    a = vae0.encode(x).latent_dist.mean
    b = vae1.encode(x).latent_dist.mean
    print("vae encode max diff", (a - b).abs().max().item())
    dit0 = make_dit().eval()
    dit0.load_state_dict({k: v.half().float() for k, v in load_file(str(src / dit_file)).items()})
    dit1 = load_toy_dit(dst / f"{prefix}_dit.safetensors")
    inp = torch.randn(1, 36, 4, 6, 8)
    t = torch.tensor([500.0])
    ctx, img = torch.zeros(1, 512, 4096), torch.zeros(1, 257, 1280)
    o0 = dit0(inp, t, ctx, encoder_hidden_states_image=img, return_dict=False)[0]
    o1 = dit1(inp, t, ctx, encoder_hidden_states_image=img, return_dict=False)[0]
    print("dit max diff", (o0 - o1).abs().max().item())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--src", type=Path, required=True)
    p.add_argument("--dst", type=Path, default=REPO / "svi_core" / "assets")
    p.add_argument("--dit-file", default="dit.safetensors")
    p.add_argument("--prefix", default="toy_wan")
    a = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    export(a.src, a.dst, a.dit_file, a.prefix)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
