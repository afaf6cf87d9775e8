"""Write tiny random Wan model files that a real ComfyUI loads (test-only; run with ComfyUI's python).

Usage: ``python make_models.py <comfyui_path> <models_dir>``. Writes, under the standard file
names of the official Wan / ComfyUI model pages:

- ``diffusion_models/``: tiny Wan2.1 I2V DiT and two Wan2.2 I2V experts (dim 256, 2 heads of
  128, 2 layers, text_dim 4096, freq_dim 256: the sizes ComfyUI's detection assumes);
- ``loras/``: SVI LoRAs with BARE official keys (``blocks.0.self_attn.q.lora_A.weight``, which
  stock ComfyUI ignores), one per DiT, a speed LoRA with kohya keys, and a LoRA for another
  model (more blocks, wrong width);
- ``loras/svi-dance.safetensors``: an SVI-Dance file for the Wan2.1 DiT: its LoRA (bare keys)
  and a random pose embedding (``dwpose_embedding.{0..12}``, 256 wide, the official layout);
- ``vae/wan_2.1_vae.safetensors``: a FULL-size random Wan2.1 VAE (ComfyUI builds the VAE with
  a fixed width, so a narrower one cannot load).

With ``--talk`` (ComfyUI with core MultiTalk support only) it writes the SVI-Talk set instead, in
fp16: a Wan2.1 I2V DiT of width 160 (ComfyUI's MultiTalk attention has 40 heads, so the width must
be a multiple of 40; ComfyUI's detection gives the DiT 160 // 128 = 1 head) with its ``svi-talk``
LoRA, ``model_patches/multitalk.safetensors`` (core fixes 40 blocks, 32 tokens and a wav2vec2 of
12 x 768: proj1 reads 5 x 12 x 768; the rest is tiny), and
``audio_encoders/wav2vec2-chinese-base_fp16.safetensors`` (core builds the base wav2vec2 from the
768-wide layer norm: 12 layers x 768, ~95 M parameters, the one large file).

Weights are seeded, so every run writes the same files.
"""

from __future__ import annotations

import os
import sys


def _init(module, seed: int) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in sorted(module.state_dict().items()):
        shape = tuple(p.shape)
        if name.endswith("gamma") or "norm" in name and name.endswith("weight"):
            t = 1 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith("modulation"):
            t = 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith("bias"):
            t = 0.02 * torch.randn(shape, generator=gen)
        elif len(shape) >= 2:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            t = torch.randn(shape, generator=gen) / fan_in**0.5
        else:
            t = 0.02 * torch.randn(shape, generator=gen)
        out[name] = t.float().contiguous()
    return out


def make_dit(i2v: bool, seed: int, dim: int = 256, layers: int = 2) -> dict:
    import comfy.ops
    from comfy.ldm.wan.model import WanModel

    model = WanModel(
        model_type="i2v" if i2v else "t2v",
        in_dim=36,
        dim=dim,
        ffn_dim=2 * dim,
        freq_dim=256,
        text_dim=4096,
        out_dim=16,
        num_heads=dim // 128,
        num_layers=layers,
        operations=comfy.ops.disable_weight_init,
    )
    sd = _init(model, seed)
    # a zero-initialised output head would hide every other mistake
    return sd


def make_lora(dit: dict, seed: int, rank: int = 4, scale: float = 0.3) -> dict:
    """Bare official SVI keys (what the official files use), every SVI target of every block."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    targets = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q",
               "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")  # fmt: skip
    out = {}
    blocks = sorted({int(k.split(".")[1]) for k in dit if k.startswith("blocks.")})
    for b in blocks:
        for t in targets:
            w = dit[f"blocks.{b}.{t}.weight"]
            out[f"blocks.{b}.{t}.lora_A.weight"] = (
                torch.randn(rank, w.shape[1], generator=gen) / w.shape[1] ** 0.5
            )
            out[f"blocks.{b}.{t}.lora_B.weight"] = scale * torch.randn(
                w.shape[0], rank, generator=gen
            )
    return out


def make_pose_embedding(dim: int, seed: int) -> dict:
    """The official ``dwpose_embedding`` layout (svi_video_dance.py:254-268) with random weights,
    scaled so its output moves a tiny DiT visibly."""
    import torch

    specs = [((3, 3, 3), 3, 16), ((3, 3, 3), 16, 16), ((3, 3, 3), 16, 16), ((3, 3, 3), 16, 16),
             ((3, 3, 3), 16, 16), ((3, 3, 3), 16, 16), ((1, 2, 2), 16, dim)]  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for j, (kernel, cin, cout) in enumerate(specs):
        fan_in = cin * kernel[0] * kernel[1] * kernel[2]
        w = torch.randn(cout, cin, *kernel, generator=gen) * (1.5 / fan_in**0.5)
        out[f"dwpose_embedding.{2 * j}.weight"] = w
        out[f"dwpose_embedding.{2 * j}.bias"] = 0.02 * torch.randn(cout, generator=gen)
    return out


def make_vae(seed: int) -> dict:
    from comfy.ldm.wan.vae import WanVAE

    vae = WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                 temperal_downsample=[False, True, True])  # fmt: skip
    sd = _init(vae, seed)
    # keep decoded pixels mostly inside [-1, 1]
    for k in list(sd):
        if k.startswith("decoder.head.2."):
            sd[k] = sd[k] * 0.4
    return sd


NAMES = {
    "wan21": "wan2.1_i2v_480p_14B_fp16.safetensors",
    "high": "wan2.2_i2v_high_noise_14B_fp16.safetensors",
    "low": "wan2.2_i2v_low_noise_14B_fp16.safetensors",
    "lora_shot": "svi-shot.safetensors",
    "lora_film": "svi-film-opt-10212025.safetensors",
    "lora_high": "SVI_Wan2.2-I2V-A14B_high_noise_lora_v2.0_pro.safetensors",
    "lora_low": "SVI_Wan2.2-I2V-A14B_low_noise_lora_v2.0_pro.safetensors",
    "speed_high": "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors",
    "speed_low": "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors",
    "lora_other": "lora_for_another_model.safetensors",
    "dance": "svi-dance.safetensors",
    "vae": "wan_2.1_vae.safetensors",
}


TALK_NAMES = {
    "dit": "wan2.1_i2v_talk_tiny_dim160_fp16.safetensors",
    "lora": "svi-talk.safetensors",
    "multitalk": "multitalk.safetensors",
    "wav2vec": "wav2vec2-chinese-base_fp16.safetensors",
}


def make_multitalk(seed: int, dim: int = 160, blocks: int = 40, inter: int = 8, token: int = 16):
    """MeiGen-MultiTalk key names and the sizes core's Load Model Patch accepts."""
    import comfy.ops
    import torch
    from comfy.ldm.wan.model_multitalk import MultiTalkAudioProjModel, WanMultiTalkAttentionBlock

    ops = comfy.ops.disable_weight_init
    patch = torch.nn.Module()
    patch.audio_proj = MultiTalkAudioProjModel(seq_len=5, seq_len_vf=8, intermediate_dim=inter,
                                               out_dim=token, context_tokens=32, operations=ops)  # fmt: skip
    patch.blocks = torch.nn.ModuleList(
        WanMultiTalkAttentionBlock(dim, token, operations=ops) for _ in range(blocks)
    )
    return _init(patch, seed)


def make_wav2vec2(seed: int) -> dict:
    """chinese-wav2vec2-base's layout as core builds it (768 wide, 12 layers, group-norm CNN)."""
    import comfy.ops
    from comfy.audio_encoders.wav2vec2 import Wav2Vec2Model

    model = Wav2Vec2Model(embed_dim=768, num_heads=12, num_layers=12, conv_norm=False,
                          conv_bias=False, do_normalize=False, do_stable_layer_norm=False,
                          operations=comfy.ops.disable_weight_init)  # fmt: skip
    return _init(model, seed)


def main_talk(models: str) -> None:
    from safetensors.torch import save_file

    for sub in ("diffusion_models", "loras", "model_patches", "audio_encoders"):
        os.makedirs(os.path.join(models, sub), exist_ok=True)

    def save(make, sub: str, key: str) -> None:
        path = os.path.join(models, sub, TALK_NAMES[key])
        if not os.path.exists(path):
            sd = {k: v.half().contiguous() for k, v in make().items()}
            save_file(sd, path + ".tmp")
            os.replace(path + ".tmp", path)

    dit = make_dit(True, 21, dim=160)
    save(lambda: dit, "diffusion_models", "dit")
    save(lambda: make_lora(dit, 22), "loras", "lora")
    save(lambda: make_multitalk(23), "model_patches", "multitalk")
    save(lambda: make_wav2vec2(24), "audio_encoders", "wav2vec")


def main(comfy_path: str, models: str) -> None:
    sys.path.insert(0, comfy_path)
    from comfy.cli_args import args

    args.cpu = True
    from safetensors.torch import save_file

    for sub in ("diffusion_models", "loras", "vae", "text_encoders", "clip_vision"):
        os.makedirs(os.path.join(models, sub), exist_ok=True)

    def save(sd: dict, sub: str, key: str) -> None:
        path = os.path.join(models, sub, NAMES[key])
        if not os.path.exists(path):
            save_file(sd, path + ".tmp")
            os.replace(path + ".tmp", path)

    wan21 = make_dit(True, 1)
    high, low = make_dit(False, 2), make_dit(False, 3)
    save(wan21, "diffusion_models", "wan21")
    save(high, "diffusion_models", "high")
    save(low, "diffusion_models", "low")
    save(make_lora(wan21, 11), "loras", "lora_shot")
    save(make_lora(wan21, 12), "loras", "lora_film")
    save(make_lora(high, 13), "loras", "lora_high")
    save(make_lora(low, 14), "loras", "lora_low")
    kohya = {}
    for k, v in make_lora(high, 15, scale=0.05).items():
        mod, part = k.rsplit(".lora_", 1)
        part = "lora_down.weight" if part.startswith("A") else "lora_up.weight"
        kohya["lora_unet_" + mod.replace(".", "_") + "." + part] = v
    save(kohya, "loras", "speed_high")
    save({k.replace("lora_unet_", "lora_unet_"): v for k, v in kohya.items()}, "loras", "speed_low")
    save({**make_lora(wan21, 17), **make_pose_embedding(256, 18)}, "loras", "dance")
    other = make_lora(make_dit(True, 4, dim=128, layers=3), 16)
    save(other, "loras", "lora_other")
    vae_path = os.path.join(models, "vae", NAMES["vae"])
    if not os.path.exists(vae_path):
        save(make_vae(5), "vae", "vae")


if __name__ == "__main__":
    if "--talk" in sys.argv[3:]:
        sys.path.insert(0, sys.argv[1])
        from comfy.cli_args import args as _args

        _args.cpu = True
        main_talk(sys.argv[2])
    else:
        main(sys.argv[1], sys.argv[2])
