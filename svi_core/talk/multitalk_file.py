"""What a MultiTalk ``multitalk.safetensors`` holds: key names, sizes, and whether it fits a DiT / wav2vec2.

MeiGen-MultiTalk's audio modules, used by SVI-Talk (official ``diffsynth/models/wan_video_dit.py:52-113,
339-351, 455-470``; ComfyUI detects the same names in ``ModelPatchLoader``). Keys carry no prefix:

* ``audio_proj.proj1.{weight,bias}`` ``[I, window * L * C]`` (first latent frame's audio window),
  ``audio_proj.proj1_vf.*`` ``[I, (window + vae_scale - 1) * L * C]`` (later latent frames),
  ``audio_proj.proj2.*`` ``[I, I]``, ``audio_proj.proj3.*`` ``[tokens * D_a, I]``,
  ``audio_proj.norm.{weight,bias}`` ``[D_a]``;
* per DiT block i: ``blocks.i.audio_cross_attn.q_linear.*`` ``[dim, dim]``,
  ``blocks.i.audio_cross_attn.kv_linear.*`` ``[2 dim, D_a]``, ``blocks.i.audio_cross_attn.proj.*``
  ``[dim, dim]``, ``blocks.i.norm_x.{weight,bias}`` ``[dim]``.

The official file: dim 5120 (Wan2.1 14B), 40 blocks, I = 512, D_a = 768, 32 tokens per latent frame,
window 5, vae_scale 4, L * C = 12 * 768 (chinese-wav2vec2-base, all 12 layers). The attention head count
is not stored: the official code uses the DiT's (40), ComfyUI hard-codes 40.
Pure torch; shared by the standalone loader and the ComfyUI nodes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import CheckpointError
from ..log import logger

MULTITALK_MARKER = "audio_proj.proj1.weight"
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "pipe.dit.", "dit.", "model.")
_BLOCK_PARTS = (
    "audio_cross_attn.q_linear.weight",
    "audio_cross_attn.q_linear.bias",
    "audio_cross_attn.kv_linear.weight",
    "audio_cross_attn.kv_linear.bias",
    "audio_cross_attn.proj.weight",
    "audio_cross_attn.proj.bias",
    "norm_x.weight",
    "norm_x.bias",
)
_PROJ_PARTS = (
    "proj1.weight",
    "proj1.bias",
    "proj1_vf.weight",
    "proj1_vf.bias",
    "proj2.weight",
    "proj2.bias",
    "proj3.weight",
    "proj3.bias",
    "norm.weight",
    "norm.bias",
)


@dataclass(frozen=True)
class MultiTalkConfig:
    """Sizes of a MultiTalk audio-module file.

    Attributes:
        dim: DiT hidden width the audio attention writes into (5120 for Wan2.1 14B).
        num_layers: audio attention blocks (one per DiT block; 40).
        intermediate_dim: width of the audio projection MLP (512).
        token_dim: width of the audio context tokens, the key/value input (768).
        context_tokens: audio tokens per latent frame (32).
        window, vae_scale: audio context of the first latent frame (5) and video frames per later
            latent frame (4); a later latent frame sees ``window + vae_scale - 1`` feature frames.
        feature_width: wav2vec2 values per feature frame, layers x channels (12 x 768 = 9216).
    """

    dim: int
    num_layers: int
    intermediate_dim: int
    token_dim: int
    context_tokens: int
    window: int = 5
    vae_scale: int = 4
    feature_width: int = 12 * 768

    @property
    def latter_window(self) -> int:
        """Feature frames per later latent frame (8)."""
        return self.window + self.vae_scale - 1


def is_multitalk(sd: Mapping[str, object]) -> bool:
    """True when the state dict holds MultiTalk audio modules (any common prefix)."""
    return any(k == MULTITALK_MARKER or k.endswith("." + MULTITALK_MARKER) for k in sd)


def strip_multitalk_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop one known prefix (``model.diffusion_model.``, ``diffusion_model.``, ...) when every audio key
    carries it; keys that are not MultiTalk's (e.g. DiT weights in a merged file) are dropped."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        bare = k
        for p in _PREFIXES:
            if bare.startswith(p) and (bare[len(p) :].startswith(("audio_proj.", "blocks."))):
                bare = bare[len(p) :]
                break
        if bare.startswith("audio_proj.") or re.match(
            r"blocks\.\d+\.(audio_cross_attn|norm_x)\.", bare
        ):
            out[bare] = v
    return out


def inspect_multitalk(
    sd: Mapping[str, torch.Tensor], source: str, *, window: int = 5, vae_scale: int = 4
) -> MultiTalkConfig:
    """Sizes of a MultiTalk state dict (bare keys, see :func:`strip_multitalk_prefix`).

    Raises:
        CheckpointError: not a MultiTalk file, a missing tensor, or shapes that do not fit together,
            naming ``source`` and the key.
    """
    if MULTITALK_MARKER not in sd:
        sample = ", ".join(list(sd)[:3]) or "no tensors"
        raise CheckpointError(
            f"'{source}' is not a MultiTalk audio-module file (no '{MULTITALK_MARKER}'; keys such as "
            f"{sample}). SVI-Talk needs MeiGen-MultiTalk's multitalk.safetensors (ComfyUI: "
            "models/model_patches/)."
        )

    def need(key: str) -> torch.Tensor:
        if key not in sd:
            raise CheckpointError(
                f"'{source}': MultiTalk tensor '{key}' is missing; the file is incomplete or another "
                "variant. Use MeiGen-MultiTalk's multitalk.safetensors."
            )
        return sd[key]

    for part in _PROJ_PARTS:
        need("audio_proj." + part)
    proj1 = need("audio_proj.proj1.weight")
    inter, audio_in = int(proj1.shape[0]), int(proj1.shape[1])
    token_dim = int(need("audio_proj.norm.weight").shape[0])
    proj3_out = int(need("audio_proj.proj3.weight").shape[0])
    indices = sorted({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    if not indices:
        raise CheckpointError(
            f"'{source}': MultiTalk file has no 'blocks.N.audio_cross_attn' tensors."
        )
    if indices != list(range(len(indices))):
        missing = sorted(set(range(indices[-1] + 1)) - set(indices))
        raise CheckpointError(f"'{source}': MultiTalk blocks {missing[:5]} are missing.")
    for i in indices:
        for part in _BLOCK_PARTS:
            need(f"blocks.{i}.{part}")
    dim = int(need("blocks.0.audio_cross_attn.q_linear.weight").shape[0])
    problems = []
    if audio_in % window:
        problems.append(f"proj1 input {audio_in} is not a multiple of the audio window {window}")
    width = audio_in // window
    vf_in = int(need("audio_proj.proj1_vf.weight").shape[1])
    if vf_in != (window + vae_scale - 1) * width:
        problems.append(f"proj1_vf input {vf_in} != {(window + vae_scale - 1)} x {width}")
    if proj3_out % token_dim:
        problems.append(
            f"proj3 output {proj3_out} is not a multiple of the token width {token_dim}"
        )
    expect = {
        "audio_proj.proj1_vf.weight": (inter, vf_in),
        "audio_proj.proj2.weight": (inter, inter),
        "audio_proj.proj3.weight": (proj3_out, inter),
    }
    for i in indices:
        b = f"blocks.{i}."
        expect[b + "audio_cross_attn.q_linear.weight"] = (dim, dim)
        expect[b + "audio_cross_attn.kv_linear.weight"] = (2 * dim, token_dim)
        expect[b + "audio_cross_attn.proj.weight"] = (dim, dim)
        expect[b + "norm_x.weight"] = (dim,)
    for key, shape in expect.items():
        if tuple(sd[key].shape) != shape:
            problems.append(f"'{key}' is {tuple(sd[key].shape)}, expected {shape}")
    if problems:
        raise CheckpointError(f"'{source}': MultiTalk tensors do not fit together: {problems[0]}.")
    return MultiTalkConfig(
        dim=dim,
        num_layers=len(indices),
        intermediate_dim=inter,
        token_dim=token_dim,
        context_tokens=proj3_out // token_dim,
        window=window,
        vae_scale=vae_scale,
        feature_width=width,
    )


def check_multitalk_fits_dit(
    cfg: MultiTalkConfig, dit_dim: int, dit_layers: int, source: str, dit_source: str = "the DiT"
) -> None:
    """Refuse a MultiTalk file made for another model size.

    Raises:
        CheckpointError: width differs (e.g. a file for Wan 14B, dim 5120, with a 1.3B DiT, dim 1536) or
            the file has fewer blocks than the DiT. More blocks than the DiT is only logged.
    """
    if cfg.dim != dit_dim:
        raise CheckpointError(
            f"'{source}' is a MultiTalk patch for a DiT of width {cfg.dim}, but {dit_source} has width "
            f"{dit_dim}. MultiTalk / SVI-Talk need Wan2.1-I2V-14B (width 5120) and MeiGen-MultiTalk's "
            "multitalk.safetensors."
        )
    if cfg.num_layers < dit_layers:
        raise CheckpointError(
            f"'{source}' has audio attention for {cfg.num_layers} blocks but {dit_source} has "
            f"{dit_layers}; use the MultiTalk file made for this DiT."
        )
    if cfg.num_layers > dit_layers:
        logger.warning(
            "%s has %d audio blocks, the DiT %d; the extra blocks are unused",
            source,
            cfg.num_layers,
            dit_layers,
        )


def check_features_fit_multitalk(
    cfg: MultiTalkConfig, layers: int, channels: int, source: str, encoder_source: str
) -> None:
    """Refuse a wav2vec2 whose (layers x hidden size) is not what the MultiTalk projection reads.

    Raises:
        CheckpointError: e.g. a wav2vec2-large (24 x 1024) with MultiTalk (12 x 768 = 9216).
    """
    if layers * channels != cfg.feature_width:
        raise CheckpointError(
            f"the audio encoder '{encoder_source}' gives {layers} layers x {channels} channels = "
            f"{layers * channels} values per frame, but the MultiTalk patch '{source}' reads "
            f"{cfg.feature_width}. MultiTalk / SVI-Talk need TencentGameMate/chinese-wav2vec2-base "
            "(12 layers x 768)."
        )
