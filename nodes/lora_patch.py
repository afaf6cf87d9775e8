"""Per-clip LoRA strengths through ComfyUI's own model patcher (no ComfyUI import here, so
tier-1 tests cover the rules with a stand-in patcher).

The SVI loaders (``nodes/loaders.py``) apply a LoRA the way ComfyUI's ``load_lora_for_models``
does (``clone()`` + ``add_patches(patches, strength)``) and record it on the patched MODEL as
an attachment: its schedule name, the strength it was loaded with and the patch dict. A clip
whose plan sets another strength gets a clone of the MODEL with the same patches added once
more at ``new - loaded`` (ComfyUI sums a key's patches, and a LoRA patch is linear in its
strength), so the model file is never read again; ComfyUI re-applies the patched weights when
it loads that clone (only when the strengths change from one clip to the next).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..svi_core.clip_schedule import LoadedLora, check_lora_name, lora_key
from ..svi_core.errors import SVIError

ATTACHMENT = "svi_loras"
"""The ModelPatcher attachment holding the :class:`PatchedLora` records (a tuple)."""


@dataclass(frozen=True)
class PatchedLora:
    """A LoRA an SVI loader applied to a MODEL.

    Attributes:
        name: the schedule name (``lora.NAME``).
        strength: the strength it was applied with.
        patches: ComfyUI's patch dict for it (``comfy.lora.load_lora``), kept to re-patch.
        source: the LoRA file, for messages.
    """

    name: str
    strength: float
    patches: Mapping[Any, Any]
    source: str


def recorded_loras(model: Any) -> tuple[PatchedLora, ...]:
    """The SVI-loaded LoRAs recorded on ``model`` (a ModelPatcher; empty for None)."""
    if model is None:
        return ()
    return tuple((getattr(model, "attachments", None) or {}).get(ATTACHMENT, ()))


def record_lora(model: Any, record: PatchedLora, label: str = "the model") -> None:
    """Record ``record`` on ``model`` (a freshly patched clone). Refuses a second LoRA of the
    same schedule name on one model."""
    check_lora_name(record.name, f"LoRA '{record.source}'")
    have = recorded_loras(model)
    if any(r.name == record.name for r in have):
        raise SVIError(
            f"{label} already has a LoRA named {record.name!r} for the schedule; give this one "
            "another name (the SVI LoRA Loader's schedule_name)"
        )
    model.set_attachments(ATTACHMENT, have + (record,))


def schedule_loras(model: Any, low_noise_model: Any = None) -> tuple[LoadedLora, ...]:
    """The LoRAs a schedule can set on the sampler's models (``high`` = ``model``)."""
    out = [LoadedLora(r.name, "high", r.strength) for r in recorded_loras(model)]
    out += [LoadedLora(r.name, "low", r.strength) for r in recorded_loras(low_noise_model)]
    return tuple(out)


def with_strengths(model: Any, expert: str, strengths: Mapping[str, float]) -> Any:
    """``model`` with the clip's LoRA strengths: itself when none differs from the loaded
    strength, else ONE clone with each changed LoRA's patches added at ``new - loaded``.

    ``strengths``: ``ClipPlan.lora_strengths`` (keys ``NAME`` / ``NAME@low``); keys of the
    other expert are ignored here.
    """
    out = model
    for record in recorded_loras(model):
        key = lora_key(record.name, expert)
        if key not in strengths:
            continue
        delta = float(strengths[key]) - record.strength
        if delta == 0.0:
            continue
        if out is model:
            out = model.clone()
        out.add_patches(dict(record.patches), delta)
    return out


def check_strength_keys(
    strengths: Mapping[str, float], model: Any, low_noise_model: Any, clip: int
) -> None:
    """Refuse a strength for a LoRA neither model has an SVI-loader record of."""
    known = {x.key for x in schedule_loras(model, low_noise_model)}
    unknown = sorted(set(strengths) - known)
    if unknown:
        raise SVIError(
            f"clip {clip}: a strength for LoRA {unknown[0]!r}, which no SVI loader applied to "
            f"these models (known: {', '.join(sorted(known)) or 'none'}); load it with SVI Model "
            "Loader / SVI LoRA Loader"
        )
