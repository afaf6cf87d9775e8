"""LoRA files for the Wan DiT: read every common spelling, validate, merge, write canonical.

Pure torch + safetensors. Accepted key spellings (all normalised to the official module path,
e.g. ``blocks.3.self_attn.q``):

* official SVI / PEFT: ``blocks.3.self_attn.q.lora_A.weight`` / ``lora_B.weight``, optionally
  prefixed ``pipe.dit.``, ``diffusion_model.``, ``model.diffusion_model.``,
  ``base_model.model.`` and/or with PEFT's ``.default`` adapter infix;
* kohya: ``lora_unet_blocks_3_self_attn_q.lora_down.weight`` / ``lora_up.weight`` /
  ``.alpha`` (also Wan-Fun's ``lora_unet__blocks_...``);
* diffusers: ``transformer.blocks.3.attn1.to_q.lora_A.weight`` (diffusers module names);
* ComfyUI full-difference patches ``<module>.diff`` / ``<module>.diff_b`` (e.g. in LightX2V
  files), applied as ``W += strength * diff``, ``bias += strength * diff_b``.

Canonical form written by :func:`save_lora_canonical`:
``diffusion_model.blocks.{i}.<module>.lora_A.weight`` / ``.lora_B.weight`` (+ ``.alpha``),
which stock ComfyUI also applies. Scale = ``strength * alpha / rank`` when an alpha is
stored, else ``strength`` (official SVI files have no alpha: r = alpha).

A LoRA that does not fit the model (a key without a matching layer, a shape for another
model size) is an error that names the file and the first bad key, never a silent no-op.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoints import FP8_DTYPES, load_state_dict, strip_dit_prefix
from .errors import CheckpointError
from .log import logger
from .wan_keys import BLOCK_MODULES, TOP_MODULES, diffusers_to_official

__all__ = [
    "LoraEntry",
    "LoraWeights",
    "apply_lora_to_diffusers",
    "diffusers_target_shapes",
    "load_lora",
    "lora_bias_delta",
    "lora_delta",
    "normalise_lora_keys",
    "official_target_shapes_from_state_dict",
    "save_lora_canonical",
    "validate_lora",
]

CANONICAL_PREFIX = "diffusion_model."

# Prefixes removed (repeatedly, in any order) before the module path.
_PREFIXES: tuple[str, ...] = (
    "pipe.dit.",
    "pipe.",
    "model.diffusion_model.",
    "diffusion_model.",
    "base_model.model.",
    "transformer.",
    "dit.",
    "model.",
)
# Suffix -> part. Longest first so ".lora_A.default.weight" wins over ".weight".
_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".lora_A.default.weight", "A"),
    (".lora_B.default.weight", "B"),
    (".lora_A.weight", "A"),
    (".lora_B.weight", "B"),
    (".lora_down.weight", "A"),
    (".lora_up.weight", "B"),
    (".lora.down.weight", "A"),
    (".lora.up.weight", "B"),
    (".alpha", "alpha"),
    (".diff_b", "diff_b"),
    (".diff", "diff"),
)

# kohya's underscore names of the official modules (the list lives in svi_core.wan_keys).
_KOHYA_BLOCK = {m.replace(".", "_"): m for m in BLOCK_MODULES}
_KOHYA_TOP = {m.replace(".", "_"): m for m in TOP_MODULES}
_DIFFUSERS_MARKERS = ("attn1.", "attn2.", ".to_q", ".to_out.", "ffn.net.", "condition_embedder.")


@dataclass(frozen=True)
class LoraEntry:
    """One patched layer.

    ``lora_a``: [rank, in_features] (conv: [rank, in, *kernel]); ``lora_b``: [out, rank]
    (conv: [out, rank, 1, ...]); ``alpha``: stored alpha or None (scale 1 per unit strength).
    ``diff`` / ``diff_b``: full weight / bias differences (ComfyUI ``.diff`` patches).
    """

    lora_a: torch.Tensor | None = None
    lora_b: torch.Tensor | None = None
    alpha: float | None = None
    diff: torch.Tensor | None = None
    diff_b: torch.Tensor | None = None

    @property
    def rank(self) -> int | None:
        return None if self.lora_a is None else int(self.lora_a.shape[0])

    def scale(self, strength: float) -> float:
        """``strength * alpha / rank`` with an alpha, else ``strength``."""
        if self.alpha is None or self.rank is None:
            return float(strength)
        return float(strength) * self.alpha / self.rank


@dataclass(frozen=True)
class LoraWeights:
    """A LoRA normalised to official module paths (``blocks.0.self_attn.q`` -> entry).

    ``source``: the file (or description) it came from, for messages. ``rank``: the largest
    rank among its entries (0 for a diff-only file). ``source_keys``: module -> one original
    key name, so errors can quote the file's own spelling.
    """

    source: str
    entries: Mapping[str, LoraEntry]
    rank: int
    source_keys: Mapping[str, str]

    def __len__(self) -> int:
        return len(self.entries)


# --------------------------------------------------------------------------------------
# Key normalisation
# --------------------------------------------------------------------------------------


def _split_suffix(key: str) -> tuple[str, str] | None:
    for suffix, part in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return None


def _strip_prefixes(module: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if module.startswith(prefix):
                module = module[len(prefix) :]
                changed = True
    return module


def _kohya_module(name: str) -> str | None:
    """``blocks_3_self_attn_q`` -> ``blocks.3.self_attn.q``; None if unknown."""
    name = name.lstrip("_")
    m = re.match(r"^blocks_(\d+)_(.+)$", name)
    if m:
        sub = _KOHYA_BLOCK.get(m.group(2))
        return None if sub is None else f"blocks.{m.group(1)}.{sub}"
    return _KOHYA_TOP.get(name)


def _to_module(raw: str, diffusers_naming: bool) -> str | None:
    if raw.startswith("lora_unet_"):
        return _kohya_module(raw[len("lora_unet_") :])
    module = _strip_prefixes(raw.replace(".default.", "."))
    if diffusers_naming:
        try:
            return diffusers_to_official(module)
        except KeyError:
            return None
    return module


def normalise_lora_keys(sd: Mapping[str, torch.Tensor], source: str) -> LoraWeights:
    """Group a LoRA state dict by layer, in official module paths.

    ``sd``: tensors as stored in any accepted spelling (see the module docstring).
    ``source``: file name for error messages. Raises :class:`CheckpointError` for a key it
    cannot read, an incomplete A/B pair, or a file with no LoRA tensors at all.
    """
    diffusers_naming = any(any(mk in k for mk in _DIFFUSERS_MARKERS) for k in sd)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    source_keys: dict[str, str] = {}
    for key, tensor in sd.items():
        split = _split_suffix(key)
        module = None if split is None else _to_module(split[0], diffusers_naming)
        if split is None or module is None:
            raise CheckpointError(
                f"LoRA file '{source}': cannot read key '{key}'. Expected Wan DiT LoRA keys "
                "like 'blocks.0.self_attn.q.lora_A.weight' (optionally prefixed "
                "'diffusion_model.' / 'pipe.dit.'), kohya 'lora_unet_blocks_0_self_attn_q."
                "lora_down.weight', or diffusers 'transformer.blocks.0.attn1.to_q.lora_A."
                "weight'. Is this a LoRA for a Wan2.1/2.2 DiT?"
            )
        part = split[1]
        slot = parts.setdefault(module, {})
        if part in slot:
            raise CheckpointError(
                f"LoRA file '{source}': layer '{module}' appears twice ('{key}' and "
                f"'{source_keys[module]}' spell the same {part}). Keep one spelling."
            )
        slot[part] = tensor
        source_keys.setdefault(module, key)
    if not parts:
        raise CheckpointError(
            f"LoRA file '{source}' holds no LoRA tensors; expected lora_A/lora_B (or "
            "lora_down/lora_up) pairs. It matches no layer, so it would do nothing."
        )
    entries: dict[str, LoraEntry] = {}
    for module in sorted(parts, key=_natural_key):
        slot = parts[module]
        a, b = slot.get("A"), slot.get("B")
        if (a is None) != (b is None):
            have, lack = ("lora_A", "lora_B") if b is None else ("lora_B", "lora_A")
            raise CheckpointError(
                f"LoRA file '{source}': layer '{module}' has {have} but no {lack} "
                f"(key '{source_keys[module]}'). The file is incomplete."
            )
        if a is None and "diff" not in slot and "diff_b" not in slot:
            raise CheckpointError(
                f"LoRA file '{source}': layer '{module}' has only an alpha "
                f"('{source_keys[module]}'), no lora_A/lora_B. The file is incomplete."
            )
        if a is not None and b is not None and a.shape[0] != b.shape[1]:
            raise CheckpointError(
                f"LoRA file '{source}': layer '{module}' has lora_A {tuple(a.shape)} and "
                f"lora_B {tuple(b.shape)}; their ranks ({a.shape[0]} vs {b.shape[1]}) differ. "
                "The file is corrupt."
            )
        alpha = slot.get("alpha")
        entries[module] = LoraEntry(
            lora_a=a,
            lora_b=b,
            alpha=None if alpha is None else float(alpha.float().reshape(-1)[0]),
            diff=slot.get("diff"),
            diff_b=slot.get("diff_b"),
        )
    ranks = [e.rank for e in entries.values() if e.rank is not None]
    return LoraWeights(
        source=source,
        entries=entries,
        rank=max(ranks) if ranks else 0,
        source_keys=source_keys,
    )


def _natural_key(module: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", module)]


def load_lora(path: str | os.PathLike[str]) -> LoraWeights:
    """Read a LoRA file (``.safetensors`` or a ``.pth`` of tensors) in any accepted spelling.

    fp8 LoRA tensors are upcast to float32. Validate it against a model with
    :func:`validate_lora` before use.
    """
    sd = load_state_dict(path)
    return normalise_lora_keys(sd, str(path))


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def official_target_shapes_from_state_dict(
    sd: Mapping[str, torch.Tensor],
) -> dict[str, tuple[int, ...]]:
    """Official module path -> weight shape, from an official-named (or prefixed) DiT dict.

    ``blocks.0.self_attn.q.weight`` gives ``blocks.0.self_attn.q``; a bare parameter such as
    ``blocks.0.modulation`` (patched by ``.diff`` entries) is its own path.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for k, v in strip_dit_prefix(sd).items():
        if k.endswith(".weight"):
            shapes[k[: -len(".weight")]] = tuple(v.shape)
        elif not k.endswith(".bias"):
            shapes[k] = tuple(v.shape)
    return shapes


def _diffusers_params(
    model: torch.nn.Module,
) -> dict[str, tuple[torch.nn.Parameter, torch.nn.Parameter | None]]:
    """Official module path -> (weight-like parameter, bias or None) of a diffusers Wan DiT."""
    params = dict(model.named_parameters())
    out: dict[str, tuple[torch.nn.Parameter, torch.nn.Parameter | None]] = {}
    for name, param in params.items():
        if name.endswith(".weight"):
            module = name[: -len(".weight")]
            try:
                official = diffusers_to_official(module)
            except KeyError:
                continue
            out[official] = (param, params.get(module + ".bias"))
        elif name == "scale_shift_table":
            out["head.modulation"] = (param, None)
        elif name.endswith(".scale_shift_table"):
            out[name[: -len("scale_shift_table")] + "modulation"] = (param, None)
    return out


def diffusers_target_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Official module path -> weight shape, for a diffusers ``WanTransformer3DModel``."""
    return {k: tuple(w.shape) for k, (w, _) in _diffusers_params(model).items()}


def validate_lora(
    lora: LoraWeights,
    target_shapes: Mapping[str, tuple[int, ...]],
    *,
    lora_path: str | os.PathLike[str] | None = None,
    model_name: str = "the model",
) -> None:
    """Check that every layer of ``lora`` exists in the model with matching shapes.

    ``target_shapes``: official module path (``blocks.0.self_attn.q``) -> weight shape.
    Raises :class:`CheckpointError` naming the LoRA file and the first layer that is
    missing or has the wrong size (with the shape expected), so a LoRA for another model
    never applies partly or silently does nothing.
    """
    src = str(lora_path) if lora_path is not None else lora.source
    if not lora.entries:
        raise CheckpointError(f"LoRA file '{src}' holds no layers: it would do nothing.")
    missing = [m for m in lora.entries if m not in target_shapes]
    if missing:
        n_blocks = len({m.split(".")[1] for m in target_shapes if m.startswith("blocks.")})
        raise CheckpointError(
            f"LoRA file '{src}': {len(missing)} of {len(lora.entries)} layers have no "
            f"matching layer in {model_name}; first '{lora.source_keys.get(missing[0], '')}' "
            f"(layer '{missing[0]}'; {model_name} has {n_blocks} blocks). This LoRA is for "
            "another model: pick the LoRA made for this DiT (Wan2.1 I2V 14B vs 1.3B vs "
            "Wan2.2 high/low-noise expert)."
        )
    for module, entry in lora.entries.items():
        w_shape = tuple(target_shapes[module])
        key = lora.source_keys.get(module, module)
        bad = _shape_problem(entry, w_shape)
        if bad:
            raise CheckpointError(
                f"LoRA file '{src}' does not fit {model_name}: key '{key}' (layer '{module}') "
                f"{bad}. The LoRA was made for a model of another size: use the LoRA that "
                "matches this DiT."
            )


def _shape_problem(entry: LoraEntry, w: tuple[int, ...]) -> str | None:
    a, b = entry.lora_a, entry.lora_b
    if a is not None and b is not None:
        r = a.shape[0]
        exp_a = (r, *w[1:])
        exp_b = (w[0], r) + (1,) * max(0, len(w) - 2)
        ok_a = tuple(a.shape) == exp_a or (a.ndim == 2 and a.shape[1] == _prod(w[1:]))
        ok_b = tuple(b.shape[:2]) == exp_b[:2] and _prod(b.shape[2:]) == 1
        if not (ok_a and ok_b):
            return (
                f"has lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)}, but the layer weight "
                f"is {w}, so lora_A {exp_a} / lora_B {exp_b} was expected"
            )
    if entry.diff is not None and tuple(entry.diff.shape) != w:
        return f"has diff {tuple(entry.diff.shape)}, expected the weight shape {w}"
    if entry.diff_b is not None and tuple(entry.diff_b.shape) != (w[0],):
        return f"has diff_b {tuple(entry.diff_b.shape)}, expected the bias shape {(w[0],)}"
    return None


def _prod(shape: tuple[int, ...] | torch.Size) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


# --------------------------------------------------------------------------------------
# Applying
# --------------------------------------------------------------------------------------


def lora_delta(
    entry: LoraEntry, strength: float, weight_shape: tuple[int, ...] | None = None
) -> torch.Tensor:
    """The weight change ``scale * B @ A`` (+ ``strength * diff``), float32.

    ``scale = strength * alpha / rank`` with an alpha, else ``strength``. ``weight_shape``
    reshapes the result for conv layers (defaults to [out, in]).
    """
    delta: torch.Tensor | None = None
    if entry.lora_a is not None and entry.lora_b is not None:
        a = entry.lora_a.to(torch.float32).flatten(1)
        b = entry.lora_b.to(torch.float32).flatten(1)
        delta = (b @ a) * entry.scale(strength)
        shape = weight_shape or (tuple(entry.lora_b.shape[:1]) + tuple(entry.lora_a.shape[1:]))
        delta = delta.reshape(shape)
    if entry.diff is not None:
        d = entry.diff.to(torch.float32) * float(strength)
        delta = d if delta is None else delta + d.reshape(delta.shape)
    if delta is None:
        raise ValueError("this LoRA entry has no weight change (only diff_b)")
    return delta if weight_shape is None else delta.reshape(weight_shape)


def lora_bias_delta(entry: LoraEntry, strength: float) -> torch.Tensor | None:
    """``strength * diff_b`` (float32) when the entry patches the bias, else None."""
    return None if entry.diff_b is None else entry.diff_b.to(torch.float32) * float(strength)


@torch.no_grad()
def apply_lora_to_diffusers(
    model: torch.nn.Module, lora: LoraWeights, strength: float = 1.0
) -> int:
    """Merge ``lora`` into a diffusers ``WanTransformer3DModel`` in place; returns layers changed.

    Validated first (a LoRA for another model raises before any weight changes). The delta
    is computed in float32 and added to each weight in its own dtype. Merging into fp8
    weights loses most of the delta: a warning says so; load the DiT in bf16/fp32 instead.
    """
    targets = _diffusers_params(model)
    validate_lora(lora, {k: tuple(w.shape) for k, (w, _) in targets.items()}, model_name="the DiT")
    for module, entry in lora.entries.items():
        if entry.diff_b is not None and targets[module][1] is None:
            raise CheckpointError(
                f"LoRA file '{lora.source}': '{lora.source_keys.get(module, module)}' patches "
                f"a bias, but layer '{module}' of the DiT has none. The LoRA is for another model."
            )
    for module, entry in lora.entries.items():
        weight, bias = targets[module]
        if weight.dtype in FP8_DTYPES:
            logger.warning(
                "merging LoRA '%s' into fp8 weights of '%s' destroys most of the LoRA; load "
                "the DiT in bf16/fp16 to apply LoRAs",
                lora.source,
                module,
            )
        if entry.lora_a is not None or entry.diff is not None:
            delta = lora_delta(entry, strength, tuple(weight.shape))
            weight.copy_((weight.to(torch.float32) + delta.to(weight.device)).to(weight.dtype))
        bias_delta = lora_bias_delta(entry, strength)
        if bias_delta is not None and bias is not None:
            bias.copy_((bias.to(torch.float32) + bias_delta.to(bias.device)).to(bias.dtype))
    logger.info(
        "merged LoRA '%s' (%d layers, rank %d) at strength %g",
        lora.source,
        len(lora.entries),
        lora.rank,
        strength,
    )
    return len(lora.entries)


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def canonical_state_dict(lora: LoraWeights) -> dict[str, torch.Tensor]:
    """The canonical ``diffusion_model.<module>.lora_A.weight`` ... tensors of ``lora``."""
    out: dict[str, torch.Tensor] = {}
    for module, e in lora.entries.items():
        base = CANONICAL_PREFIX + module
        if e.lora_a is not None and e.lora_b is not None:
            out[base + ".lora_A.weight"] = e.lora_a.contiguous()
            out[base + ".lora_B.weight"] = e.lora_b.contiguous()
        if e.alpha is not None:
            out[base + ".alpha"] = torch.tensor(e.alpha, dtype=torch.float32)
        if e.diff is not None:
            out[base + ".diff"] = e.diff.contiguous()
        if e.diff_b is not None:
            out[base + ".diff_b"] = e.diff_b.contiguous()
    return out


def save_lora_canonical(
    lora: LoraWeights,
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``lora`` as ``.safetensors`` with canonical ``diffusion_model.`` keys.

    The result loads in stock ComfyUI, in diffusers' Wan LoRA loader and here.
    """
    from safetensors.torch import save_file

    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        raise CheckpointError(f"LoRA output '{p}': the file name must end in .safetensors.")
    meta = {"format": "pt", "svi_lora_layout": "diffusion_model.<official module path>"}
    meta.update(dict(metadata or {}))
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file(canonical_state_dict(lora), str(p), metadata=meta)
    return p
