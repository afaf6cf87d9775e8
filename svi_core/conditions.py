"""The per-clip condition seam: what may differ from clip to clip, and how it is recorded.

The clip loop (:mod:`svi_core.loop`) decides each clip in two steps:

1. The mode's official values give a default :class:`ClipPlan` for clip k: its seed
   (``base + k * stride``), its prompt from the prompt stream, the guidance, the reference
   image, no keyframe, the LoRA strengths as loaded, no extra condition.
2. Every :class:`ClipCondition` of the run (SVI-Talk's audio, SVI-Dance's pose, a per-clip
   schedule, keyframes, ...) rewrites that plan in turn with :meth:`ClipCondition.for_clip`.

The plan then becomes the clip's conditioning (:mod:`svi_core.conditioning`) and its
:class:`~svi_core.backend.ClipRequest`; model-side payloads travel in ``ClipRequest.extras``
keyed by condition name and are applied by ONE hook per backend (diffusers: forward keyword
arguments / hooks; ComfyUI: conditioning keys and model patches). A backend that has no hook
for an extra refuses the clip instead of silently ignoring it.

Identity: a condition's run-level settings (:meth:`ClipCondition.identity`) are part of the
run's settings, and every finished clip records the fingerprint of its plan
(:meth:`ClipPlan.identity`), so a resume may change clips that are not made yet (a longer
audio track, a schedule edited for later clips) but never a finished one: the run store
refuses that and names the clip and the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from .guidance import Guidance

if TYPE_CHECKING:  # pragma: no cover
    from .loop import RunSettings


def frozen_mapping(values: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    """A read-only copy of ``values`` (plans are immutable)."""
    return MappingProxyType(dict(values or {}))


@dataclass(frozen=True)
class ClipPlan:
    """Everything that decides clip ``index`` besides the carry from the previous clip.

    Attributes:
        index: clip number k (0-based).
        seed: the clip's noise seed.
        prompt_index: index of the prompt in the run's prompt list (-1 when a condition set
            the prompt itself).
        prompt_key: a fingerprint of the prompt (what the run store records for this clip).
        positive, negative: backend-specific text conditioning (a string for the standalone
            backend, a CONDITIONING for ComfyUI).
        guidance: how the passes of a step combine (:class:`~svi_core.guidance.Guidance`).
        reference: uint8 ``[H, W, 3]``: the image this clip pads with (reference padding) or
            anchors on (SVI 2.0 Pro); the run's reference unless a condition changes it.
        keyframe: uint8 ``[H, W, 3]`` image the clip's LAST frame is conditioned on, or None.
        keyframe_slot: how much of the last latent frame the keyframe fills (``"latent"`` or
            ``"frame"``, see :data:`svi_core.conditioning.KeyframeSlot`).
        lora_strengths: LoRA name -> strength for this clip; empty = as loaded. Names are the
            backend's (the loader's file names).
        extras: model-side payloads by condition name (``"audio"``, ``"pose"``), each applied
            by the backend's hook of that name.
    """

    index: int
    seed: int
    prompt_index: int
    prompt_key: str
    positive: Any
    negative: Any
    guidance: Guidance
    reference: torch.Tensor
    keyframe: torch.Tensor | None = None
    keyframe_slot: str = "latent"
    lora_strengths: Mapping[str, float] = field(default_factory=frozen_mapping)
    extras: Mapping[str, Any] = field(default_factory=frozen_mapping)

    def replace(self, **changes: Any) -> ClipPlan:
        """A copy with ``changes`` (mappings are frozen again)."""
        for name in ("lora_strengths", "extras"):
            if name in changes:
                changes[name] = frozen_mapping(changes[name])
        return dataclasses.replace(self, **changes)

    def with_extra(self, name: str, payload: Any) -> ClipPlan:
        """A copy whose ``extras[name]`` is ``payload``."""
        return self.replace(extras={**self.extras, name: payload})

    def identity(self) -> dict[str, Any]:
        """What the run store records for a finished clip: readable values for numbers and
        short strings, fingerprints for images, prompts and payloads (JSON-able)."""
        from .run_store import fingerprint, sha256_tensor

        out: dict[str, Any] = {
            "seed": int(self.seed),
            "prompt": self.prompt_key,
            "guidance": self.guidance.describe(),
            "reference": sha256_tensor(self.reference),
            "keyframe": None if self.keyframe is None else sha256_tensor(self.keyframe),
            "lora_strengths": {k: float(v) for k, v in sorted(self.lora_strengths.items())},
        }
        if self.keyframe is not None:
            out["keyframe_slot"] = self.keyframe_slot
        for name in sorted(self.extras):
            out[f"extra.{name}"] = fingerprint(self.extras[name])
        return out


@runtime_checkable
class ClipCondition(Protocol):
    """An extra condition of a run that can differ per clip.

    Attributes:
        name: a short unique name (``"audio"``, ``"pose"``, ``"schedule"``); it keys the
            condition's identity in the run settings and its payload in ``ClipPlan.extras``.
    """

    name: str

    def identity(self) -> Mapping[str, Any]:
        """Run-level settings of the condition (JSON-able); changing them makes another run.
        Per-clip content (an audio window, a schedule line) belongs in the plan instead."""
        ...

    def validate(self, settings: RunSettings) -> None:
        """Raise ``SVIError`` for settings this condition cannot serve (before any work)."""
        ...

    def for_clip(self, plan: ClipPlan, settings: RunSettings) -> ClipPlan:
        """Clip ``plan.index``'s plan with this condition applied (pure: no model work)."""
        ...


def conditions_identity(conditions: tuple[ClipCondition, ...]) -> dict[str, Any]:
    """``{name: identity}`` of a run's conditions; names must be unique.

    A condition with no run-level settings (an empty identity, e.g. a per-clip schedule)
    adds nothing: everything it does is in the clip plans, so it may be added to a run, or
    edited, for clips that are not made yet.
    """
    out: dict[str, Any] = {}
    seen: set[str] = set()
    for c in conditions:
        if c.name in seen:
            from .errors import SVIError

            raise SVIError(f"two per-clip conditions are named {c.name!r}; give each one once")
        seen.add(c.name)
        ident = dict(c.identity())
        if ident:
            out[c.name] = ident
    return out
