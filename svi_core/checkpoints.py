"""Reading Wan model files: state dicts, what kind of model a file holds, and its sizes.

Pure torch + safetensors. Files are read with ``safetensors`` or with
``torch.load(..., weights_only=True)`` (plain tensors only, never arbitrary pickles).

Accepted files:

* one ``.safetensors`` (``.sft``) file;
* a sharded set, given as its ``*.index.json`` or as any shard whose index lies beside it;
* ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` holding a dict of tensors (optionally wrapped
  in ``{"state_dict": ...}``, ``{"model": ...}`` or ``{"module": ...}``).

fp8 tensors (``float8_e4m3fn`` / ``float8_e5m2``, with or without ComfyUI's per-layer
``scale_weight`` / ``weight_scale``) are upcast on load (multiplied by their scale) with a
logged warning: this project computes in bf16/fp16/fp32.

The DiT's sizes (:class:`WanDiTConfig`) and the VAE's (:class:`WanVAEConfig`) are read
from the tensor shapes; the attention head count and the norm epsilon cannot be, so they
come from a ``config.json`` beside the model file or from explicit overrides.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .log import logger

__all__ = [
    "DIT_PREFIXES",
    "WanDiTConfig",
    "WanVAEConfig",
    "check_safetensors_header",
    "detect_kind",
    "diffusers_dit_to_official",
    "dit_overrides_from_config",
    "find_config_json",
    "inspect_dit",
    "inspect_vae",
    "load_dit_state_dict",
    "load_state_dict",
    "precheck_model_file",
    "require_kind",
    "strip_dit_prefix",
]

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
FP8_DTYPES: tuple[torch.dtype, ...] = tuple(
    getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name)
)
# Key prefixes a Wan DiT file may carry (ComfyUI checkpoints, official / DiffSynth saves).
DIT_PREFIXES: tuple[str, ...] = ("model.diffusion_model.", "diffusion_model.", "model.")
# Wrappers some training scripts put around the state dict in a .pth file.
_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict")
# ComfyUI scaled-fp8 bookkeeping tensors that are not model weights.
_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
_DROP_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")
_DROP_KEYS = ("scaled_fp8",)

KIND_NAMES = {
    "wan_dit": "a Wan DiT (diffusion model)",
    "wan_vae": "a Wan2.1 VAE",
    "umt5": "a UMT5 text encoder",
    "clip_vision": "a CLIP vision encoder",
    "lora": "a LoRA",
    "unknown": "an unrecognised model",
}
_KIND_HINT = {
    "wan_dit": "ComfyUI: models/diffusion_models/ (e.g. wan2.1_i2v_480p_14B_fp16.safetensors)",
    "wan_vae": "ComfyUI: models/vae/ (wan_2.1_vae.safetensors or the official Wan2.1_VAE.pth)",
    "umt5": "ComfyUI: models/text_encoders/ (umt5_xxl_fp16.safetensors or "
    "models_t5_umt5-xxl-enc-bf16.pth)",
    "clip_vision": "ComfyUI: models/clip_vision/ (clip_vision_h.safetensors or "
    "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth)",
    "lora": "ComfyUI: models/loras/",
}


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def load_state_dict(
    path: str | os.PathLike[str], *, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Read every tensor of a model file onto the CPU.

    ``path``: a ``.safetensors`` file, a sharded set's ``.index.json`` (or one of its shards
    with the index beside it), a ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` of plain tensors,
    or a folder holding exactly one of these (e.g. an official Wan expert folder).
    ``dtype``: when given, floating-point tensors are cast to it. fp8 tensors are always
    upcast (to ``dtype``, or float32 when ``dtype`` is None), multiplied by their ComfyUI
    scale tensor when one is present; the scale tensors are removed.

    Keys are returned as stored (no prefix stripping; see :func:`strip_dit_prefix`).
    Raises :class:`CheckpointError` naming the file for a missing, unreadable, truncated or
    pickled-object file.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(
            f"model file not found: '{p}'. Check the path (and that the download finished); "
            "put the file in the matching ComfyUI models folder or pass its full path."
        )
    if p.is_dir():
        p = _resolve_dir(p)
    name = p.name.lower()
    if name.endswith(".index.json"):
        sd = _load_sharded(p, dtype)
    elif name.endswith(SAFETENSORS_SUFFIXES):
        index = _index_beside_shard(p)
        sd = _load_sharded(index, dtype) if index is not None else _load_safetensors(p, dtype)
    elif name.endswith(TORCH_SUFFIXES):
        sd = _load_torch(p, dtype)
    else:
        raise _unsupported(p)
    if not sd:
        raise CheckpointError(f"'{p}' holds no tensors; the file is empty or not a model.")
    return sd


def _unsupported(p: Path) -> CheckpointError:
    if p.name.lower().endswith(".gguf"):
        return CheckpointError(
            f"'{p}' is a GGUF file; only .safetensors and .pth files of plain tensors are "
            "supported. Use the fp16/bf16/fp8 .safetensors release of this model."
        )
    return CheckpointError(
        f"'{p}': unknown model file type '{p.suffix}'. Expected .safetensors, a sharded "
        "set's .index.json, or .pth/.pt/.bin of plain tensors."
    )


def precheck_model_file(path: str | os.PathLike[str], what: str = "model file") -> None:
    """The cheap checks :func:`load_state_dict` would make late, made before any model loads:
    the file exists, its type is one this project reads, and a ``.safetensors`` file has a
    sound header (:func:`check_safetensors_header`). Folders and sharded sets are checked
    when loaded.

    Raises:
        CheckpointError: naming ``what`` and the file.
    """
    p = Path(path)
    if p.is_dir():
        return
    if not p.is_file():
        raise CheckpointError(f"{what} '{p}' does not exist; check the path")
    name = p.name.lower()
    if name.endswith(SAFETENSORS_SUFFIXES):
        check_safetensors_header(p, what)
    elif not name.endswith(".index.json") and not name.endswith(TORCH_SUFFIXES):
        raise CheckpointError(f"{what}: {_unsupported(p)}")


_ST_FP8 = ("F8_E4M3", "F8_E5M2")

_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header


def check_safetensors_header(path: str | os.PathLike[str], what: str = "file") -> None:
    """Cheap up-front check of a ``.safetensors`` file (reads the header only, no tensor):
    the 8-byte header length and JSON header are valid and the file is as long as the header
    says. So a pickle / torch ``.pt`` file or a truncated download is refused with the file
    named before any model is loaded, not after the first one.

    Raises:
        CheckpointError: naming ``what`` and the file; what it looks like; how to fix it.
    """
    p = Path(path)
    size = p.stat().st_size
    with p.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= n <= min(_MAX_HEADER, size - 8):
            looks = _looks_like(head)
            raise CheckpointError(
                f"{what} '{p}' is not a safetensors file{looks}; expected a complete "
                ".safetensors file (a pickle is never loaded: convert it with safetensors' "
                "save_file, or download it again if it is truncated)"
            )
        try:
            header = json.loads(f.read(n))
            ends = [
                int(v["data_offsets"][1])
                for k, v in header.items()
                if k != "__metadata__" and isinstance(v, dict)
            ]
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise CheckpointError(
                f"{what} '{p}' has a damaged safetensors header ({type(e).__name__}); the file "
                "is corrupt or truncated: download or write it again"
            ) from None
    need = 8 + n + max(ends, default=0)
    if size < need:
        raise CheckpointError(
            f"{what} '{p}' is truncated: its header promises {need} bytes, the file has {size} "
            "(an interrupted download or write?); download or write it again"
        )


def _looks_like(head: bytes) -> str:
    if head[:1] == b"\x80":
        return " (it looks like a Python pickle)"
    if head[:2] == b"PK":
        return " (it looks like a zip / torch.save .pt file)"
    if not head:
        return " (it is empty)"
    return ""


def _resolve_dir(d: Path) -> Path:
    """The model in a folder: its one ``*.index.json``, else its one model file."""
    indexes = sorted(d.glob("*.index.json"))
    if len(indexes) == 1:
        return indexes[0]
    files = sorted(
        f for f in d.iterdir() if f.name.lower().endswith(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)
    )
    if not indexes and len(files) == 1:
        return files[0]
    found = [f.name for f in (indexes or files)][:6]
    raise CheckpointError(
        f"'{d}' is a folder holding {'no' if not found else 'several'} model files "
        f"({', '.join(found) or 'none'}); expected one model (one .safetensors / .pth, or one "
        "sharded set's .index.json). Pass the model file itself."
    )


def _corrupt(p: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"cannot read safetensors file '{p}' ({type(exc).__name__}: {exc}). The file is "
        "truncated or corrupt (often an interrupted download): expected a complete "
        "safetensors file. Download it again and compare its size / sha256 with the source."
    )


def _load_safetensors(
    p: Path, dtype: torch.dtype | None, scales: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Read one safetensors file tensor by tensor, converting each as it is read.

    ``scales``: fp8 scale tensors of the whole (sharded) model; by default this file's own.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            keys = list(f.keys())
            fp8 = any(f.get_slice(k).get_dtype() in _ST_FP8 for k in keys)
            if scales is None:
                scales = {k: f.get_tensor(k) for k in keys if k.endswith(_SCALE_SUFFIXES)}
            else:  # a shard: the model is scaled fp8 when its index lists scales
                fp8 = fp8 or bool(scales)
            return _convert(keys, f.get_tensor, fp8, scales, dtype, p)
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError
        raise _corrupt(p, exc) from exc


def _index_beside_shard(p: Path) -> Path | None:
    """The ``*.index.json`` next to ``p`` that lists ``p`` as a shard, if any."""
    if not re.search(r"-\d+-of-\d+\.", p.name):
        return None
    for cand in sorted(p.parent.glob("*.index.json")):
        try:
            weight_map = json.loads(cand.read_text(encoding="utf-8")).get("weight_map", {})
        except (OSError, ValueError):
            continue
        if p.name in set(weight_map.values()):
            return cand
    return None


def _load_sharded(index: Path, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        weight_map = data["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"cannot read shard index '{index}' ({exc}); expected a JSON object with a "
            "'weight_map' {tensor name: shard file}. Download the index file again."
        ) from exc
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        raise CheckpointError(
            f"sharded model '{index}': {len(missing)} of {len(shards)} shard files are "
            f"missing beside the index, first '{missing[0]}'. Download every shard into "
            f"'{index.parent}'."
        )
    # fp8 scales may sit in another shard than their weight: gather them (tiny) first.
    scales: dict[str, torch.Tensor] = {}
    scale_keys = [k for k in weight_map if k.endswith(_SCALE_SUFFIXES)]
    if scale_keys:
        from safetensors import safe_open

        for shard in sorted({weight_map[k] for k in scale_keys}):
            try:
                with safe_open(str(index.parent / shard), framework="pt", device="cpu") as f:
                    scales.update({k: f.get_tensor(k) for k in scale_keys if k in f.keys()})
            except Exception as exc:
                raise _corrupt(index.parent / shard, exc) from exc
    sd: dict[str, torch.Tensor] = {}
    for shard in shards:
        sp = index.parent / shard
        if shard.lower().endswith(TORCH_SUFFIXES):
            sd.update(_load_torch(sp, dtype))
        else:
            sd.update(_load_safetensors(sp, dtype, scales))
    absent = [
        k for k in weight_map if k not in sd and not k.endswith(_SCALE_SUFFIXES + _DROP_SUFFIXES)
    ]
    absent = [k for k in absent if k not in _DROP_KEYS]
    if absent:
        raise CheckpointError(
            f"sharded model '{index}': {len(absent)} tensors listed in the index are not in "
            f"its shards, first '{absent[0]}' (expected in '{weight_map[absent[0]]}'). "
            "A shard is from another version of the model: download the set again."
        )
    return sd


def _load_torch(p: Path, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"'{p}' contains Python objects besides tensors; for safety only plain tensors "
            "are loaded (torch.load weights_only=True). Convert it to safetensors with a "
            "tool you trust (load it once, save `{name: tensor}` with "
            f"safetensors.torch.save_file). Loader said: {str(exc).splitlines()[0]}"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read '{p}' as a PyTorch file ({type(exc).__name__}: {exc}). The file is "
            "truncated or corrupt: download it again."
        ) from exc
    raw = _unwrap(obj, p)
    del obj
    has_fp8 = any(t.dtype in FP8_DTYPES for t in raw.values())
    scales = {k: t for k, t in raw.items() if k.endswith(_SCALE_SUFFIXES)}
    return _convert(list(raw), raw.pop, has_fp8, scales, dtype, p)


def _unwrap(obj: Any, p: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
        else:
            break
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"'{p}' holds a {type(obj).__name__}, not a dict of tensors; expected a state "
            "dict {name: tensor}. Save the model's state_dict() instead."
        )
    sd: dict[str, torch.Tensor] = {}
    skipped = []
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            sd[str(k)] = v
        else:
            skipped.append(str(k))
    if skipped:
        logger.warning("'%s': ignored %d non-tensor entries (%s)", p, len(skipped), skipped[:5])
    return sd


def _convert(
    keys: list[str],
    get: Callable[[str], torch.Tensor],
    has_fp8: bool,
    scales: Mapping[str, torch.Tensor],
    dtype: torch.dtype | None,
    p: Path,
) -> dict[str, torch.Tensor]:
    """Fetch ``keys`` one at a time: upcast fp8 (times its scale), cast floats to ``dtype``.

    Drops ComfyUI's scaled-fp8 bookkeeping tensors. Converting one tensor at a time keeps
    the peak memory near the size of the result.
    """
    target = dtype or torch.float32
    if has_fp8:
        logger.warning(
            "'%s' holds fp8 weights; upcasting them to %s (scaled by their scale_weight / "
            "weight_scale when present). Quality is that of the fp8 file.",
            p,
            target,
        )
    out: dict[str, torch.Tensor] = {}
    for k in keys:
        if k in _DROP_KEYS or k.endswith(_DROP_SUFFIXES):
            continue
        if has_fp8 and k.endswith(_SCALE_SUFFIXES):
            continue  # folded into its weight below
        t = get(k)
        if t.dtype in FP8_DTYPES:
            w = t.to(torch.float32)
            base = k[: -len(".weight")] if k.endswith(".weight") else k
            scale = next((scales[base + s] for s in _SCALE_SUFFIXES if base + s in scales), None)
            if scale is not None:
                w = w * _broadcast_scale(scale.to(torch.float32), w, k, p)
            out[k] = w.to(target)
        elif dtype is not None and t.is_floating_point() and t.dtype != dtype:
            out[k] = t.to(dtype)
        else:
            out[k] = t
    return out


def _broadcast_scale(scale: torch.Tensor, w: torch.Tensor, key: str, p: Path) -> torch.Tensor:
    if scale.numel() == 1:
        return scale.reshape(())
    if scale.shape[0] == w.shape[0] and scale.numel() == w.shape[0]:
        return scale.reshape((w.shape[0],) + (1,) * (w.ndim - 1))
    raise CheckpointError(
        f"'{p}': the fp8 scale of '{key}' has shape {tuple(scale.shape)}; expected one value "
        f"or one per output row ({w.shape[0]}). This fp8 format is not supported: use an "
        "fp16/bf16 file."
    )


# --------------------------------------------------------------------------------------
# What a file holds
# --------------------------------------------------------------------------------------


def _has_suffix(sd: Mapping[str, Any], suffix: str) -> bool:
    return any(k == suffix or k.endswith("." + suffix) for k in sd)


def detect_kind(state_dict: Mapping[str, Any]) -> str:
    """``"wan_dit"``, ``"wan_vae"``, ``"umt5"``, ``"clip_vision"``, ``"lora"`` or ``"unknown"``.

    Works on official, ComfyUI (prefixed) and Hugging Face key naming.
    """
    keys = state_dict.keys()
    if any(".lora_A." in k or ".lora_down." in k or ".lora_B." in k for k in keys):
        return "lora"
    if _has_suffix(state_dict, "head.modulation") or (
        _has_suffix(state_dict, "patch_embedding.weight")
        and _has_suffix(state_dict, "blocks.0.self_attn.q.weight")
    ):
        return "wan_dit"
    if _is_diffusers_dit(state_dict):
        return "wan_dit"
    if "decoder.middle.0.residual.0.gamma" in keys and "encoder.conv1.weight" in keys:
        return "wan_vae"
    if _has_suffix(state_dict, "encoder.block.0.layer.0.SelfAttention.q.weight") or (
        "token_embedding.weight" in keys and "blocks.0.attn.q.weight" in keys
    ):
        return "umt5"
    if any("vision_model.encoder.layers." in k for k in keys) or any(
        k.startswith("visual.transformer.") for k in keys
    ):
        return "clip_vision"
    return "unknown"


def require_kind(
    state_dict: Mapping[str, Any], expected: str, path: str | os.PathLike[str]
) -> None:
    """Raise :class:`CheckpointError` unless ``state_dict`` holds an ``expected`` model."""
    if expected not in KIND_NAMES:
        raise ValueError(f"unknown model kind {expected!r}; one of {sorted(KIND_NAMES)}")
    found = detect_kind(state_dict)
    if found == expected:
        return
    where = _KIND_HINT.get(found, "")
    hint = f" That file belongs in {where}." if where else ""
    sample = ", ".join(list(state_dict.keys())[:3])
    raise CheckpointError(
        f"'{path}' looks like {KIND_NAMES[found]} (keys such as {sample}), but "
        f"{KIND_NAMES[expected]} was expected here.{hint} Select {KIND_NAMES[expected]} "
        f"file for this input ({_KIND_HINT.get(expected, '')})."
    )


def _is_diffusers_dit(sd: Mapping[str, Any]) -> bool:
    return "condition_embedder.time_embedder.linear_1.weight" in sd and (
        "blocks.0.attn1.to_q.weight" in sd
    )


def diffusers_dit_to_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``WanTransformer3DModel`` key names -> official Wan names (same tensors).

    The inverse of diffusers' ``convert_wan_transformer_to_diffusers`` for Wan2.1 / 2.2
    I2V / T2V models (``transformer/diffusion_pytorch_model*.safetensors`` of a
    ``*-Diffusers`` download).
    """
    from .wan_keys import diffusers_to_official

    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key == "scale_shift_table":
            out["head.modulation"] = value
            continue
        if key.endswith(".scale_shift_table"):
            out[key[: -len("scale_shift_table")] + "modulation"] = value
            continue
        if key == "condition_embedder.image_embedder.pos_embed":
            out["img_emb.emb_pos"] = value
            continue
        module, _, param = key.rpartition(".")
        try:
            out[f"{diffusers_to_official(module)}.{param}"] = value
        except KeyError as exc:
            raise CheckpointError(
                f"diffusers Wan DiT tensor '{key}' has no official counterpart; this variant "
                "(VACE / Animate / S2V ...) is not supported. Use a Wan2.1 / 2.2 I2V or T2V DiT."
            ) from exc
    return out


def strip_dit_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official DiT key names: drop ``model.diffusion_model.`` / ``diffusion_model.`` /
    ``model.``, or rename diffusers keys (:func:`diffusers_dit_to_official`).

    Only keys under the prefix that holds the DiT are kept (a ComfyUI all-in-one
    checkpoint's VAE / text-encoder tensors are dropped). Official dicts pass unchanged.
    """
    if _is_diffusers_dit(sd):
        return diffusers_dit_to_official(sd)
    for prefix in DIT_PREFIXES:
        if prefix + "head.modulation" in sd or prefix + "patch_embedding.weight" in sd:
            return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return dict(sd)


def load_dit_state_dict(
    path: str | os.PathLike[str], *, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Load a Wan DiT file, check it is one, and return it with official (unprefixed) keys."""
    sd = load_state_dict(path, dtype=dtype)
    require_kind(sd, "wan_dit", path)
    return strip_dit_prefix(sd)


# --------------------------------------------------------------------------------------
# DiT sizes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WanDiTConfig:
    """Sizes of a Wan DiT (official ``WanModel`` argument names).

    ``model_type``: ``"i2v"`` (Wan2.1 I2V: ``img_emb`` + ``k_img``/``v_img``),
    ``"wan22_expert"`` (Wan2.2 I2V expert: 36 input channels, no ``img_emb``) or ``"t2v"``.
    ``image_dim`` is the CLIP-vision width the ``img_emb`` takes (1280 for real Wan2.1 I2V),
    None without ``img_emb``. ``num_heads`` and ``eps`` are not stored in the tensors.
    """

    dim: int
    ffn_dim: int
    num_layers: int
    in_dim: int
    out_dim: int
    text_dim: int
    freq_dim: int
    patch_size: tuple[int, int, int]
    image_dim: int | None
    has_img_emb: bool
    model_type: str
    num_heads: int
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    text_len: int = 512
    pos_embed_seq_len: int | None = None

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def diffusers_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of diffusers' ``WanTransformer3DModel`` for these sizes."""
        return {
            "patch_size": tuple(self.patch_size),
            "num_attention_heads": self.num_heads,
            "attention_head_dim": self.head_dim,
            "in_channels": self.in_dim,
            "out_channels": self.out_dim,
            "text_dim": self.text_dim,
            "freq_dim": self.freq_dim,
            "ffn_dim": self.ffn_dim,
            "num_layers": self.num_layers,
            "cross_attn_norm": self.cross_attn_norm,
            "qk_norm": "rms_norm_across_heads" if self.qk_norm else None,
            "eps": self.eps,
            "image_dim": self.image_dim,
            "added_kv_proj_dim": self.dim if self.has_img_emb else None,
            "rope_max_seq_len": 1024,
            "pos_embed_seq_len": self.pos_embed_seq_len,
        }


_OVERRIDABLE = ("num_heads", "eps")


def _need(sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(
            f"Wan DiT state dict has no '{key}'; expected the full official key set "
            "(patch_embedding, text_embedding, time_embedding, blocks.N, head). The file is "
            "incomplete or not a Wan2.1/2.2 DiT."
        )
    return sd[key]


def inspect_dit(
    sd: Mapping[str, torch.Tensor], overrides: Mapping[str, Any] | None = None
) -> WanDiTConfig:
    """Read a Wan DiT's sizes from its (official-named or prefixed) state dict.

    ``overrides``: ``num_heads`` and/or ``eps`` (the values a ``config.json`` gives; see
    :func:`dit_overrides_from_config`). Without them ``num_heads = dim // 128`` (every
    released Wan model and ComfyUI use 128-wide heads) and ``eps = 1e-6``.
    """
    if detect_kind(sd) != "wan_dit":
        raise CheckpointError(
            f"not a Wan DiT state dict (looks like {KIND_NAMES[detect_kind(sd)]}); expected "
            "keys such as 'patch_embedding.weight', 'blocks.0.self_attn.q.weight', "
            "'head.modulation'."
        )
    sd = strip_dit_prefix(sd)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(_OVERRIDABLE))
    if unknown:
        raise ValueError(f"inspect_dit overrides: unknown keys {unknown}; allowed {_OVERRIDABLE}")
    patch = _need(sd, "patch_embedding.weight")
    dim, in_dim = int(patch.shape[0]), int(patch.shape[1])
    patch_size = tuple(int(s) for s in patch.shape[2:])
    if len(patch_size) != 3:
        raise CheckpointError(
            f"'patch_embedding.weight' has shape {tuple(patch.shape)}; expected a 3-D conv "
            "weight [dim, in_dim, pt, ph, pw]."
        )
    layer_ids = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    num_layers = len(layer_ids)
    if num_layers == 0 or layer_ids != set(range(num_layers)):
        raise CheckpointError(
            f"Wan DiT blocks are not numbered 0..N-1 (found {sorted(layer_ids)[:8]}...); the "
            "file is incomplete."
        )
    ffn_dim = int(_need(sd, "blocks.0.ffn.0.weight").shape[0])
    text_dim = int(_need(sd, "text_embedding.0.weight").shape[1])
    freq_dim = int(_need(sd, "time_embedding.0.weight").shape[1])
    head_w = _need(sd, "head.head.weight")
    n_patch = patch_size[0] * patch_size[1] * patch_size[2]
    out_dim = int(head_w.shape[0]) // n_patch
    has_img_emb = "img_emb.proj.0.weight" in sd
    image_dim = int(sd["img_emb.proj.0.weight"].shape[0]) if has_img_emb else None
    pos_embed_seq_len = int(sd["img_emb.emb_pos"].shape[1]) if "img_emb.emb_pos" in sd else None
    if has_img_emb:
        model_type = "i2v"
    elif in_dim > out_dim:
        model_type = "wan22_expert"
    else:
        model_type = "t2v"
    num_heads = int(overrides.get("num_heads", max(1, dim // 128)))
    if num_heads <= 0 or dim % num_heads:
        raise CheckpointError(
            f"num_heads={num_heads} does not divide the DiT width dim={dim}; give the "
            "model's head count (config.json 'num_heads' beside the model file)."
        )
    return WanDiTConfig(
        dim=dim,
        ffn_dim=ffn_dim,
        num_layers=num_layers,
        in_dim=in_dim,
        out_dim=out_dim,
        text_dim=text_dim,
        freq_dim=freq_dim,
        patch_size=patch_size,  # type: ignore[arg-type]
        image_dim=image_dim,
        has_img_emb=has_img_emb,
        model_type=model_type,
        num_heads=num_heads,
        eps=float(overrides.get("eps", 1e-6)),
        qk_norm="blocks.0.self_attn.norm_q.weight" in sd,
        cross_attn_norm="blocks.0.norm3.weight" in sd,
        pos_embed_seq_len=pos_embed_seq_len,
    )


def find_config_json(model_path: str | os.PathLike[str]) -> Path | None:
    """``config.json`` in the model file's folder (official Wan / diffusers layout), if any."""
    p = Path(model_path)
    cand = (p if p.is_dir() else p.parent) / "config.json"
    return cand if cand.is_file() else None


def dit_overrides_from_config(
    config: Mapping[str, Any] | str | os.PathLike[str], *, dim: int | None = None
) -> dict[str, Any]:
    """``num_heads`` / ``eps`` from an official Wan, diffusers or fixture ``config.json``.

    ``config``: the parsed JSON or its path. ``dim``: the width read from the tensors; when
    the config states another width it belongs to another model and is ignored (warning).
    """
    if not isinstance(config, Mapping):
        cp = Path(config)
        try:
            config = json.loads(cp.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"cannot read model config '{cp}' ({exc}); expected a JSON object such as the "
                "official Wan config.json. Fix or remove the file."
            ) from exc
        if not isinstance(config, Mapping):
            raise CheckpointError(f"model config '{cp}' is not a JSON object.")
    out: dict[str, Any] = {}
    cfg_dim: int | None = None
    if "num_heads" in config:  # official WanModel arguments
        out["num_heads"] = int(config["num_heads"])
        cfg_dim = int(config["dim"]) if "dim" in config else None
    diff = config.get("diffusers_equivalent")
    if not isinstance(diff, Mapping) and "num_attention_heads" in config:
        diff = config  # a diffusers WanTransformer3DModel config
    if isinstance(diff, Mapping) and "num_attention_heads" in diff:
        heads = int(diff["num_attention_heads"])
        out.setdefault("num_heads", heads)
        if out["num_heads"] != heads:
            raise CheckpointError(
                f"model config: num_heads={out['num_heads']} but its diffusers block says "
                f"num_attention_heads={heads}; fix the config.json."
            )
        if "attention_head_dim" in diff and cfg_dim is None:
            cfg_dim = heads * int(diff["attention_head_dim"])
        if "eps" in diff:
            out.setdefault("eps", float(diff["eps"]))
    if "eps" in config:
        out["eps"] = float(config["eps"])
    if dim is not None and cfg_dim is not None and cfg_dim != dim:
        logger.warning(
            "config.json describes a model of width %d but the weights have width %d; "
            "ignoring that config.json",
            cfg_dim,
            dim,
        )
        return {}
    return out


# --------------------------------------------------------------------------------------
# VAE sizes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WanVAEConfig:
    """Sizes of a Wan2.1 VAE (official ``WanVAE`` arguments; diffusers ``base_dim`` = ``dim``)."""

    base_dim: int
    z_dim: int
    dim_mult: tuple[int, ...]
    num_res_blocks: int
    attn_scales: tuple[float, ...]
    temperal_downsample: tuple[bool, ...]
    dropout: float = 0.0

    def diffusers_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of diffusers' ``AutoencoderKLWan``."""
        return {
            "base_dim": self.base_dim,
            "z_dim": self.z_dim,
            "dim_mult": list(self.dim_mult),
            "num_res_blocks": self.num_res_blocks,
            "attn_scales": list(self.attn_scales),
            "temperal_downsample": list(self.temperal_downsample),
            "dropout": self.dropout,
        }


def inspect_vae(sd: Mapping[str, torch.Tensor]) -> WanVAEConfig:
    """Read a Wan2.1 VAE's sizes from its state dict (official ``WanVAE`` naming)."""
    if detect_kind(sd) != "wan_vae":
        raise CheckpointError(
            f"not a Wan VAE state dict (looks like {KIND_NAMES[detect_kind(sd)]}); expected "
            "keys such as 'encoder.conv1.weight', 'decoder.middle.0.residual.0.gamma'."
        )
    base_dim = int(sd["encoder.conv1.weight"].shape[0])
    z_dim = int(_vae_need(sd, "conv2.weight").shape[0])
    if z_dim != 16 or any(".avg_shortcut" in k or "downsamples.0.downsamples" in k for k in sd):
        raise CheckpointError(
            f"this VAE has a {z_dim}-channel latent / the Wan2.2 layout; SVI runs on the "
            "Wan2.1 VAE (16 channels, also used by Wan2.2-I2V-A14B). Use wan_2.1_vae."
        )
    idx: dict[int, set[str]] = {}
    for k in sd:
        m = re.match(r"encoder\.downsamples\.(\d+)\.(.+)$", k)
        if m:
            idx.setdefault(int(m.group(1)), set()).add(m.group(2))
    levels: list[list[int]] = [[]]  # out widths of the residual blocks per level
    attn_levels: set[int] = set()
    temporal: list[bool] = []
    for i in sorted(idx):
        names = idx[i]
        if "residual.6.weight" in names:
            levels[-1].append(int(sd[f"encoder.downsamples.{i}.residual.6.weight"].shape[0]))
        elif "to_qkv.weight" in names:
            attn_levels.add(len(levels) - 1)
        elif "resample.1.weight" in names:
            temporal.append("time_conv.weight" in names)
            levels.append([])
        else:
            raise CheckpointError(
                f"VAE encoder block {i} has unexpected tensors {sorted(names)[:4]}; expected "
                "the Wan2.1 VAE layout."
            )
    counts = {len(lv) for lv in levels}
    if len(counts) != 1 or 0 in counts:
        raise CheckpointError(
            f"VAE encoder levels have {[len(lv) for lv in levels]} residual blocks; expected "
            "the same number per level (Wan2.1 VAE). The file is incomplete."
        )
    dim_mult = tuple(lv[-1] // base_dim for lv in levels)
    return WanVAEConfig(
        base_dim=base_dim,
        z_dim=z_dim,
        dim_mult=dim_mult,
        num_res_blocks=counts.pop(),
        attn_scales=tuple(1.0 / 2**i for i in sorted(attn_levels)),
        temperal_downsample=tuple(temporal),
    )


def _vae_need(sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"Wan VAE state dict has no '{key}'; the file is incomplete.")
    return sd[key]
