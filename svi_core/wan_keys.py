"""Module names of the Wan DiT in the official (= ComfyUI) layout and in diffusers.

The official layout (``blocks.3.self_attn.q``) is this project's canonical naming: LoRA files
are written with it (prefixed ``diffusion_model.``) and validated against it. The diffusers
``WanTransformer3DModel`` names the same layers differently (``blocks.3.attn1.to_q``); these
two functions translate a module path (no ``.weight`` / ``.bias`` suffix) both ways.
"""

from __future__ import annotations

import re

# Per-block sub-module renames, official -> diffusers.
_BLOCK_OFFICIAL_TO_DIFFUSERS: dict[str, str] = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "self_attn.norm_q": "attn1.norm_q",
    "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.norm_q": "attn2.norm_q",
    "cross_attn.norm_k": "attn2.norm_k",
    "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj",
    "cross_attn.norm_k_img": "attn2.norm_added_k",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
    "norm3": "norm2",  # the affine cross-attention norm
}
_BLOCK_DIFFUSERS_TO_OFFICIAL = {v: k for k, v in _BLOCK_OFFICIAL_TO_DIFFUSERS.items()}

# Top-level renames, official -> diffusers.
_TOP_OFFICIAL_TO_DIFFUSERS: dict[str, str] = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
}
_TOP_DIFFUSERS_TO_OFFICIAL = {v: k for k, v in _TOP_OFFICIAL_TO_DIFFUSERS.items()}

BLOCK_MODULES: tuple[str, ...] = (*_BLOCK_OFFICIAL_TO_DIFFUSERS, "modulation")
"""Every per-block module of the official layout (``blocks.N.<module>``), plus the block's bare
``modulation`` parameter (diffusers: ``scale_shift_table``, a parameter of the block itself)."""

TOP_MODULES: tuple[str, ...] = tuple(_TOP_OFFICIAL_TO_DIFFUSERS)
"""Every top-level module of the official layout (``head.modulation`` is a bare parameter)."""

# The Linear layers SVI LoRAs target in every block (official ``lora_target_modules``).
SVI_LORA_TARGETS: tuple[str, ...] = (
    "self_attn.q",
    "self_attn.k",
    "self_attn.v",
    "self_attn.o",
    "cross_attn.q",
    "cross_attn.k",
    "cross_attn.v",
    "cross_attn.o",
    "ffn.0",
    "ffn.2",
)

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def official_to_diffusers(module: str) -> str:
    """``blocks.3.self_attn.q`` -> ``blocks.3.attn1.to_q``; raises KeyError if unknown."""
    m = _BLOCK_RE.match(module)
    if m:
        return f"blocks.{m.group(1)}.{_BLOCK_OFFICIAL_TO_DIFFUSERS[m.group(2)]}"
    return _TOP_OFFICIAL_TO_DIFFUSERS[module]


def diffusers_to_official(module: str) -> str:
    """``blocks.3.attn1.to_q`` -> ``blocks.3.self_attn.q``; raises KeyError if unknown."""
    m = _BLOCK_RE.match(module)
    if m:
        return f"blocks.{m.group(1)}.{_BLOCK_DIFFUSERS_TO_OFFICIAL[m.group(2)]}"
    return _TOP_DIFFUSERS_TO_OFFICIAL[module]
