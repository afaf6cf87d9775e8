"""Guidance: how the model passes of one sampling step are combined into one velocity.

Every SVI mode but Talk uses classifier-free guidance with one scale ``g``:
``v = v_uncond + g * (v_cond - v_uncond)`` (``g = 1``: one conditional pass only).
SVI-Talk uses two scales, text ``t`` and audio ``a``, over three passes (official
``diffsynth/pipelines/svi_video_talk.py:455-462``)::

    v = v_uncond + t * (v_cond - v_drop_text) + a * (v_drop_text - v_uncond)

with ``v_cond`` = positive text + the clip's audio, ``v_drop_text`` = negative text + the
clip's audio, ``v_uncond`` = negative text + the NULL audio; all three passes run unless both
scales are 1 (``svi_video_talk.py:456``).

A :class:`Guidance` names the passes a backend must run (:attr:`Guidance.passes`: which text
and which extra per-clip conditions are replaced by their null in each pass) and combines their
velocities in exactly the official order of operations (:meth:`Guidance.combine`). Backends
run the passes however they like (batched or one by one); the sampler only combines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from .errors import SVIError
from .limits import MAX_GUIDANCE  # noqa: F401 - re-exported

GuidanceKind = Literal["cfg", "text_audio"]
"""``cfg``: one scale (every SVI mode but Talk). ``text_audio``: SVI-Talk's text and audio
scales over three passes."""

GUIDANCE_KINDS: tuple[str, ...] = ("cfg", "text_audio")

# MAX_GUIDANCE (imported above): the largest accepted scale; its one place is svi_core.limits.


def scale_problems(name: str, value: object) -> list[str]:
    """Why ``value`` is not a usable guidance scale named ``name`` (empty when it is)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return [f"{name}={value!r} must be a finite number"]
    if not 0.0 < value <= MAX_GUIDANCE:
        return [f"{name}={value} must be in (0, {MAX_GUIDANCE:g}] (1 = no guidance)"]
    return []


@dataclass(frozen=True)
class GuidancePass:
    """One model pass of a sampling step.

    Attributes:
        negative_text: the pass uses the negative prompt (else the clip's positive prompt).
        null: names of the per-clip extra conditions (``ClipRequest.extras`` keys, e.g.
            ``"audio"``, ``"pose"``) that this pass replaces by their null (what "null" means
            is the condition's own rule: projected silence for audio, no pose tokens for pose).
    """

    negative_text: bool = False
    null: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Guidance:
    """How one step's passes are combined.

    Attributes:
        kind: see :data:`GuidanceKind`.
        scale: ``cfg``: the guidance scale g. ``text_audio``: the text scale.
        audio_scale: ``text_audio`` only: the audio scale (official 5.0).
        uncond_null: ``cfg`` only: extra conditions the unconditional pass drops. (The Dance
            pipeline can run its unconditional pass without the pose,
            ``svi_video_dance.py:426-429``, but the official script passes
            ``cond_wo_pose=True``, ``test_svi_dance.py:259``, so SVI-Dance keeps the pose in
            both passes and this stays empty.)
    """

    kind: GuidanceKind = "cfg"
    scale: float = 5.0
    audio_scale: float = 1.0
    uncond_null: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise SVIError("guidance: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """What is wrong with these values (empty when they are usable)."""
        p = []
        if self.kind not in GUIDANCE_KINDS:
            p.append(f"kind={self.kind!r} must be one of {', '.join(GUIDANCE_KINDS)}")
        p += scale_problems("scale", self.scale) + scale_problems("audio_scale", self.audio_scale)
        return p

    @property
    def passes(self) -> tuple[GuidancePass, ...]:
        """The passes to run, in the order :meth:`combine` expects their velocities."""
        if self.kind == "cfg":
            if self.scale == 1.0:
                return (GuidancePass(),)
            return (GuidancePass(), GuidancePass(negative_text=True, null=self.uncond_null))
        if self.scale == 1.0 and self.audio_scale == 1.0:
            return (GuidancePass(),)
        return (
            GuidancePass(),
            GuidancePass(negative_text=True),
            GuidancePass(negative_text=True, null=frozenset({"audio"})),
        )

    def combine(self, velocities: Sequence[torch.Tensor]) -> torch.Tensor:
        """One velocity from the passes' velocities (float32, in :attr:`passes` order)."""
        vs = [v.float() for v in velocities]
        if len(vs) != len(self.passes):
            raise RuntimeError(
                f"guidance {self.kind} expects {len(self.passes)} velocities; got {len(vs)}"
            )
        if len(vs) == 1:
            return vs[0]
        if self.kind == "cfg":
            cond, uncond = vs
            return uncond + self.scale * (cond - uncond)
        cond, drop_text, uncond = vs
        return uncond + self.scale * (cond - drop_text) + self.audio_scale * (drop_text - uncond)

    def describe(self) -> str:
        if self.kind == "cfg":
            return f"cfg {self.scale:g}"
        return f"text {self.scale:g} / audio {self.audio_scale:g}"
