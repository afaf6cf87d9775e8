"""Loading the Wan models into diffusers / transformers classes, plus thin call helpers.

* DiT: diffusers ``WanTransformer3DModel`` (weights converted by diffusers' own
  ``convert_wan_transformer_to_diffusers``), sizes read by :func:`~svi_core.checkpoints.inspect_dit`.
* VAE: diffusers ``AutoencoderKLWan`` (``convert_wan_vae_to_diffusers``).
* Text: transformers ``UMT5EncoderModel`` from ComfyUI's ``umt5_xxl_*.safetensors`` (Hugging
  Face key names) or the official ``models_t5_umt5-xxl-enc-bf16.pth`` (Wan key names).
* CLIP vision: transformers ``CLIPVisionModel`` from ComfyUI's ``clip_vision_h.safetensors``
  or the official ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``.

diffusers and transformers are imported inside the functions. Every loader builds the model
without allocating random weights (accelerate's ``init_empty_weights`` when installed), then
loads the file strictly: a missing or unexpected tensor is an error naming the file.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..checkpoints import (
    WanDiTConfig,
    dit_overrides_from_config,
    find_config_json,
    inspect_dit,
    inspect_vae,
    load_dit_state_dict,
    load_state_dict,
    require_kind,
)
from ..errors import CheckpointError
from ..log import logger

if TYPE_CHECKING:  # pragma: no cover
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import CLIPVisionModel, PreTrainedTokenizerBase, UMT5EncoderModel

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "clip_vision_features",
    "encode_text",
    "load_clip_vision",
    "load_umt5_encoder",
    "load_wan_transformer",
    "load_wan_vae",
    "vae_decode",
    "vae_encode",
]

# OpenAI CLIP normalisation, used by Wan's open-clip ViT-H/14 and ComfyUI's clip_vision_h.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _empty_weights() -> Iterator[None]:
    """Build parameters on the meta device (buffers stay real) when accelerate is present."""
    try:
        from accelerate import init_empty_weights
    except ImportError:  # pragma: no cover - accelerate comes with peft
        yield
        return
    with init_empty_weights(include_buffers=False):
        yield


def _load_strict(
    model: torch.nn.Module, sd: Mapping[str, torch.Tensor], path: str | os.PathLike[str], what: str
) -> None:
    expected = set(model.state_dict().keys())
    got = set(sd.keys())
    missing = sorted(expected - got)
    unexpected = sorted(got - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first '{unexpected[0]}')")
        raise CheckpointError(
            f"'{path}' does not fit the {what} built from its own tensor shapes: "
            f"{', '.join(parts)} tensors. The file is incomplete or a variant this loader "
            "does not know; use the official / ComfyUI release of the model."
        )
    try:
        model.load_state_dict(dict(sd), strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"'{path}': its tensors do not fit the {what} ({str(exc).splitlines()[0]} ...)."
        ) from exc
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:  # pragma: no cover - guarded by the key comparison above
        raise CheckpointError(f"'{path}': {what} parameter '{leftover[0]}' was not loaded.")


def _read_json(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read '{path}' ({exc}); fix or remove it.") from exc
    return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------------------
# DiT
# --------------------------------------------------------------------------------------


def load_wan_transformer(
    path: str | os.PathLike[str],
    *,
    config: WanDiTConfig | None = None,
    dtype: torch.dtype = torch.float32,
) -> WanTransformer3DModel:
    """Load a Wan2.1 / Wan2.2 DiT file into diffusers' ``WanTransformer3DModel`` (inference mode).

    ``path``: official / ComfyUI DiT (``.safetensors``, sharded ``.index.json``, ``.pth``),
    with or without the ``model.diffusion_model.`` prefix; fp8 files are upcast.
    ``config``: sizes; by default read from the tensors, with ``num_heads`` / ``eps`` from a
    ``config.json`` beside the file when one exists (else ``num_heads = dim // 128``).
    ``dtype``: weight dtype; as in diffusers, the time embedder, modulation tables and norms
    stay float32 when ``dtype`` is a half type.

    Call: ``model(hidden_states=x [B, 36, T, H, W] (noisy latent + condition, normalised
    space), timestep=[B] on the 0..1000 scale, encoder_hidden_states=[B, 512, text_dim],
    encoder_hidden_states_image=[B, 257, image_dim] (I2V only), return_dict=False)[0]``
    -> velocity [B, 16, T, H, W].
    """
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    sd = load_dit_state_dict(path, dtype=dtype)
    if config is None:
        dim = int(sd["patch_embedding.weight"].shape[0]) if "patch_embedding.weight" in sd else None
        cfg_path = find_config_json(path)
        overrides = dit_overrides_from_config(cfg_path, dim=dim) if cfg_path else {}
        config = inspect_dit(sd, overrides)
    logger.info("loading Wan DiT '%s': %s", path, config)
    converted = convert_wan_transformer_to_diffusers(sd)
    with _empty_weights():
        model = WanTransformer3DModel(**config.diffusers_kwargs())
    keep = tuple(getattr(WanTransformer3DModel, "_keep_in_fp32_modules", None) or ())
    if dtype != torch.float32 and keep:
        converted = {
            k: (v.float() if v.is_floating_point() and any(m in k for m in keep) else v)
            for k, v in converted.items()
        }
    _load_strict(model, converted, path, "Wan DiT (diffusers WanTransformer3DModel)")
    return model.train(False)


# --------------------------------------------------------------------------------------
# VAE
# --------------------------------------------------------------------------------------


def load_wan_vae(
    path: str | os.PathLike[str], dtype: torch.dtype = torch.float32
) -> AutoencoderKLWan:
    """Load a Wan2.1 VAE (official ``Wan2.1_VAE.pth`` or ComfyUI ``wan_2.1_vae.safetensors``).

    Returns diffusers' ``AutoencoderKLWan`` in inference mode with sizes read from the tensors.
    """
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    sd = load_state_dict(path, dtype=dtype)
    require_kind(sd, "wan_vae", path)
    cfg = inspect_vae(sd)
    if cfg.num_res_blocks != 2 or len(cfg.dim_mult) != 4:
        raise CheckpointError(
            f"'{path}': VAE with {cfg.num_res_blocks} residual blocks and {len(cfg.dim_mult)} "
            "levels; the Wan2.1 VAE (and diffusers' converter) has 2 blocks and 4 levels. "
            "Use the Wan2.1 VAE file."
        )
    converted = convert_wan_vae_to_diffusers(sd)
    with _empty_weights():
        vae = AutoencoderKLWan(**cfg.diffusers_kwargs())
    _load_strict(vae, converted, path, "Wan2.1 VAE (diffusers AutoencoderKLWan)")
    return vae.train(False).requires_grad_(False)


@torch.no_grad()
def vae_encode(vae: AutoencoderKLWan, pixels: torch.Tensor) -> torch.Tensor:
    """Encode a video to its RAW latent (posterior mean, not normalised, no sampling).

    ``pixels``: [1, 3, F, H, W] in [-1, 1], F = 4k + 1, H and W multiples of 8.
    Returns [1, 16, (F - 1) / 4 + 1, H / 8, W / 8], float32, RAW space (see
    :mod:`svi_core.latents` for normalising). One causal encode over all frames.
    """
    if pixels.ndim != 5 or pixels.shape[1] != 3:
        raise ValueError(f"vae_encode expects pixels [B, 3, F, H, W]; got {tuple(pixels.shape)}")
    p = next(vae.parameters())
    mean = vae.encode(pixels.to(device=p.device, dtype=p.dtype)).latent_dist.mean
    return mean.float()


@torch.no_grad()
def vae_decode(vae: AutoencoderKLWan, raw_latent: torch.Tensor) -> torch.Tensor:
    """Decode a RAW latent [1, 16, T, H/8, W/8] to pixels [1, 3, 4(T-1)+1, H, W] in [-1, 1].

    Float32 output, clamped to [-1, 1].
    """
    if raw_latent.ndim != 5:
        raise ValueError(f"vae_decode expects [B, 16, T, H, W]; got {tuple(raw_latent.shape)}")
    p = next(vae.parameters())
    out = vae.decode(raw_latent.to(device=p.device, dtype=p.dtype)).sample
    return out.float().clamp(-1.0, 1.0)


# --------------------------------------------------------------------------------------
# UMT5 text encoder
# --------------------------------------------------------------------------------------

_WAN_T5_BLOCK = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # GELU branch
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",  # linear branch
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}


def _umt5_to_hf(sd: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> dict:
    """Official Wan T5 names -> Hugging Face ``UMT5EncoderModel`` names (HF input passes)."""
    if "token_embedding.weight" not in sd:
        out = {k: v for k, v in sd.items() if k.startswith(("encoder.", "shared."))}
        dropped = sorted(set(sd) - set(out))
        if dropped:
            logger.info("'%s': ignoring non-encoder tensors %s", path, dropped[:5])
        if "shared.weight" not in out and "encoder.embed_tokens.weight" in out:
            out["shared.weight"] = out["encoder.embed_tokens.weight"]
        return out
    out = {
        "shared.weight": sd["token_embedding.weight"],
        "encoder.final_layer_norm.weight": sd["norm.weight"],
    }
    for k, v in sd.items():
        m = re.match(r"blocks\.(\d+)\.(.+)$", k)
        if m is None:
            continue
        name = _WAN_T5_BLOCK.get(m.group(2))
        if name is None:
            raise CheckpointError(
                f"'{path}': unexpected T5 tensor '{k}'; expected the official Wan UMT5 encoder "
                "(models_t5_umt5-xxl-enc-bf16.pth)."
            )
        out[f"encoder.block.{m.group(1)}.{name}"] = v
    return out


def _umt5_config(sd: Mapping[str, torch.Tensor], path: str | os.PathLike[str], extra: dict):
    from transformers import UMT5Config

    def need(key: str) -> torch.Tensor:
        if key not in sd:
            raise CheckpointError(f"'{path}': UMT5 encoder tensor '{key}' is missing.")
        return sd[key]

    vocab, d_model = need("shared.weight").shape
    inner = need("encoder.block.0.layer.0.SelfAttention.q.weight").shape[0]
    buckets, heads = need(
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    ).shape
    d_ff = need("encoder.block.0.layer.1.DenseReluDense.wi_0.weight").shape[0]
    layers = len({m.group(1) for k in sd if (m := re.match(r"encoder\.block\.(\d+)\.", k))})
    if (
        layers > 1
        and "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in sd
    ):
        raise CheckpointError(
            f"'{path}' is a T5 v1.1 encoder (one shared position table, e.g. t5xxl for "
            "Flux / SD3), not UMT5: Wan needs umt5_xxl (umt5_xxl_fp16.safetensors or "
            "models_t5_umt5-xxl-enc-bf16.pth)."
        )
    return UMT5Config(
        vocab_size=int(vocab),
        d_model=int(d_model),
        d_kv=int(inner) // int(heads),
        d_ff=int(d_ff),
        num_layers=layers,
        num_heads=int(heads),
        relative_attention_num_buckets=int(buckets),
        relative_attention_max_distance=int(extra.get("relative_attention_max_distance", 128)),
        layer_norm_epsilon=float(extra.get("layer_norm_epsilon", 1e-6)),
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        tie_word_embeddings=False,
        is_encoder_decoder=False,
        use_cache=False,
    )


def load_umt5_encoder(
    path: str | os.PathLike[str],
    tokenizer_path: str | os.PathLike[str],
    dtype: torch.dtype = torch.bfloat16,
) -> tuple[UMT5EncoderModel, PreTrainedTokenizerBase]:
    """Load the UMT5 text encoder and its tokenizer.

    ``path``: ComfyUI ``umt5_xxl_fp16.safetensors`` / ``umt5_xxl_fp8_e4m3fn_scaled.safetensors``
    (Hugging Face names, fp8 upcast) or the official ``models_t5_umt5-xxl-enc-bf16.pth``
    (Wan names). Sizes come from the tensors (the head count from the relative-position
    table). ``tokenizer_path``: a local folder with the ``google/umt5-xxl`` tokenizer files
    (the official Wan download ships it as ``google/umt5-xxl/``); nothing is downloaded.
    """
    from transformers import AutoTokenizer, UMT5EncoderModel

    tok_dir = Path(tokenizer_path)
    if not tok_dir.exists():
        raise CheckpointError(
            f"UMT5 tokenizer folder not found: '{tok_dir}'. Expected a local copy of the "
            "google/umt5-xxl tokenizer (tokenizer.json / spiece.model), e.g. the "
            "'google/umt5-xxl' folder of the official Wan2.1 download."
        )
    sd = load_state_dict(path, dtype=dtype)
    require_kind(sd, "umt5", path)
    hf = _umt5_to_hf(sd, path)
    cfg = _umt5_config(hf, path, _read_json(find_config_json(path)))
    hf["encoder.embed_tokens.weight"] = hf["shared.weight"]
    with _empty_weights():
        model = UMT5EncoderModel(cfg)
    expected = set(model.state_dict())
    hf = {k: v for k, v in hf.items() if k in expected or not k.endswith("embed_tokens.weight")}
    _load_strict(model, hf, path, "UMT5 encoder (transformers UMT5EncoderModel)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot load the UMT5 tokenizer from '{tok_dir}' ({exc}); expected the "
            "google/umt5-xxl tokenizer files."
        ) from exc
    return model.train(False).requires_grad_(False), tokenizer


def _clean_prompt(text: str) -> str:
    """Wan's prompt cleaning: ftfy (when installed), HTML unescape, collapse whitespace."""
    try:
        import ftfy  # type: ignore[import-not-found]

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


@torch.no_grad()
def encode_text(
    model: UMT5EncoderModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_len: int = 512,
) -> torch.Tensor:
    """Encode prompts to Wan text context [B, max_len, d_model] (float32).

    Tokens are padded / truncated to ``max_len`` (with the end-of-sequence token); the
    hidden states of padded positions are set to exactly zero, as Wan does.
    """
    if isinstance(texts, str):
        texts = [texts]
    batch = tokenizer(
        [_clean_prompt(t) for t in texts],
        padding="max_length",
        max_length=max_len,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    device = next(model.parameters()).device
    ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device)
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    return (hidden.float() * mask.unsqueeze(-1).float()).contiguous()


# --------------------------------------------------------------------------------------
# CLIP vision
# --------------------------------------------------------------------------------------


def _open_clip_visual_to_hf(sd: Mapping[str, torch.Tensor], path) -> dict[str, torch.Tensor]:
    """Wan / open-clip ``visual.*`` names -> HF ``CLIPVisionModel`` names (no prefix)."""
    out: dict[str, torch.Tensor] = {}
    simple = {
        "visual.patch_embedding.weight": "embeddings.patch_embedding.weight",
        "visual.pre_norm.weight": "pre_layrnorm.weight",
        "visual.pre_norm.bias": "pre_layrnorm.bias",
        "visual.post_norm.weight": "post_layernorm.weight",
        "visual.post_norm.bias": "post_layernorm.bias",
    }
    block = {
        "norm1": "layer_norm1",
        "norm2": "layer_norm2",
        "attn.proj": "self_attn.out_proj",
        "mlp.0": "mlp.fc1",
        "mlp.2": "mlp.fc2",
    }
    for k, v in sd.items():
        if not k.startswith("visual."):
            continue
        if k in simple:
            out[simple[k]] = v
        elif k == "visual.cls_embedding":
            out["embeddings.class_embedding"] = v.reshape(-1)
        elif k == "visual.pos_embedding":
            out["embeddings.position_embedding.weight"] = v.reshape(-1, v.shape[-1])
        elif k == "visual.head":
            continue  # projection to the joint space; not used for features
        else:
            m = re.match(r"visual\.transformer\.(\d+)\.(.+)\.(weight|bias)$", k)
            if m is None:
                raise CheckpointError(f"'{path}': unexpected CLIP vision tensor '{k}'.")
            i, name, kind = m.groups()
            base = f"encoder.layers.{i}"
            if name == "attn.to_qkv":
                q, kk, vv = v.chunk(3, dim=0)
                out[f"{base}.self_attn.q_proj.{kind}"] = q
                out[f"{base}.self_attn.k_proj.{kind}"] = kk
                out[f"{base}.self_attn.v_proj.{kind}"] = vv
            elif name in block:
                out[f"{base}.{block[name]}.{kind}"] = v
            else:
                raise CheckpointError(f"'{path}': unexpected CLIP vision tensor '{k}'.")
    return out


def load_clip_vision(
    path: str | os.PathLike[str],
    dtype: torch.dtype = torch.float32,
    *,
    num_heads: int | None = None,
) -> CLIPVisionModel:
    """Load the CLIP ViT-H/14 image encoder Wan2.1 I2V uses.

    ``path``: ComfyUI ``clip_vision_h.safetensors`` (HF ``vision_model.*`` names) or the
    official ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`` (``visual.*``).
    Sizes come from the tensors; the head count cannot, so it is ``num_heads``, else a
    ``config.json`` beside the file, else 16 for the 1280-wide ViT-H (dim // 64 otherwise).
    """
    from transformers import CLIPVisionConfig, CLIPVisionModel

    sd = load_state_dict(path, dtype=dtype)
    require_kind(sd, "clip_vision", path)
    if any(k.startswith("visual.") for k in sd):
        bare = _open_clip_visual_to_hf(sd, path)
    else:
        bare = {
            k[len("vision_model.") :]: v for k, v in sd.items() if k.startswith("vision_model.")
        }
        bare = {k: v for k, v in bare.items() if not k.endswith("position_ids")}
    for key in ("embeddings.patch_embedding.weight", "embeddings.position_embedding.weight"):
        if key not in bare:
            raise CheckpointError(f"'{path}': CLIP vision tensor '{key}' is missing.")
    dim, _, patch, _ = bare["embeddings.patch_embedding.weight"].shape
    n_pos = bare["embeddings.position_embedding.weight"].shape[0]
    grid = int(round((n_pos - 1) ** 0.5))
    layers = len({m.group(1) for k in bare if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    extra = _read_json(find_config_json(path))
    extra = extra.get("vision_config", extra)
    heads = num_heads or extra.get("num_attention_heads") or (16 if dim == 1280 else dim // 64)
    cfg = CLIPVisionConfig(
        hidden_size=int(dim),
        intermediate_size=int(bare["encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=layers,
        num_attention_heads=int(heads),
        image_size=int(grid * patch),
        patch_size=int(patch),
        hidden_act=str(extra.get("hidden_act", "gelu")),
        layer_norm_eps=float(extra.get("layer_norm_eps", 1e-5)),
    )
    with _empty_weights():
        model = CLIPVisionModel(cfg)
    prefix = (
        "vision_model." if any(k.startswith("vision_model.") for k in model.state_dict()) else ""
    )
    full = {prefix + k: v for k, v in bare.items()}
    for name, buf in model.named_buffers():  # position_ids: non-learned, keep the model's own
        if name in model.state_dict():
            full.setdefault(name, buf)
    _load_strict(model, full, path, "CLIP vision encoder (transformers CLIPVisionModel)")
    return model.train(False).requires_grad_(False)


@torch.no_grad()
def clip_vision_features(model: CLIPVisionModel, image: torch.Tensor) -> torch.Tensor:
    """Wan2.1 I2V image feature: the penultimate hidden state of the CLIP vision tower.

    ``image``: one frame [1, 3, H, W] in [-1, 1]. The whole frame is resized (bicubic, no
    crop) to the model's input size (224), mapped to [0, 1] and CLIP-normalised, as the
    official ``CLIPModel.visual`` does. Returns [1, 257, 1280] for ViT-H/14 (float32),
    the output of the second-to-last block (Wan's ``use_31_block``), no final norm.
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"clip_vision_features expects [B, 3, H, W]; got {tuple(image.shape)}")
    p = next(model.parameters())
    size = int(model.config.image_size)
    x = F.interpolate(image.float(), size=(size, size), mode="bicubic", align_corners=False)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    x = ((x * 0.5 + 0.5) - mean) / std
    out = model(pixel_values=x.to(device=p.device, dtype=p.dtype), output_hidden_states=True)
    return out.hidden_states[-2].float()
