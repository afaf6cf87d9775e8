"""The small backend protocol the clip loop runs over.

Two implementations exist: the standalone diffusers / transformers models
(``svi_core.standalone``) and ComfyUI's own models (``nodes/``). The clip loop, the
conditioning and the stitching exist once, in ``svi_core``; a backend only encodes, decodes
and denoises one clip.

Spaces (always): pixels are ``[1, 3, F, H, W]`` float32 in [-1, 1]; latents handed across this
protocol are NORMALISED Wan2.1 latents ``[1, 16, T, H/8, W/8]`` (see ``svi_core.latents``).
A backend whose models work in raw space (ComfyUI) converts at its border.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from .errors import SVIError
from .guidance import Guidance

StepCallback = Callable[[int, int], None]
"""``on_step(step_done, total_steps)``; may raise ``svi_core.errors.Cancelled``."""


@dataclass(frozen=True)
class ClipRequest:
    """Everything one clip's denoising needs.

    Attributes:
        index: clip number k (0-based).
        seed: the clip's seed (``base + k * stride`` unless a per-clip condition set it).
        noise: ``[1, 16, T, h, w]`` float32 unit Gaussian from a CPU generator seeded with
            ``seed`` (normalised latent space, like the official scripts).
        cond_latent: ``[1, 16, T, h, w]`` NORMALISED conditioning latent (reference / motion /
            padding content, per mode).
        mask: ``[1, 4, T, h, w]`` float32, official convention: 1 = frame given (latent
            frame 0 only in every SVI mode, plus the last one for a keyframe), 0 elsewhere.
            ComfyUI's ``concat_mask`` is the inverse; the ComfyUI backend converts.
        positive: backend-specific text conditioning of this clip's prompt (a string for the
            standalone backend, a CONDITIONING for ComfyUI).
        negative: backend-specific negative text conditioning.
        clip_vision: backend-specific CLIP-vision feature (``encode_clip_vision`` result) or
            None (Wan2.2 experts have no image embedding).
        steps, shift: sampling settings (official: 50, 5.0).
        guidance: how the passes of a step combine (:class:`~svi_core.guidance.Guidance`:
            classifier-free guidance with one scale, or SVI-Talk's text + audio scales).
        boundary: two-expert switch, as a fraction of the 1000 timestep scale (0.875 for
            Wan2.2 A14B I2V); the high-noise expert runs while ``t >= boundary * 1000``.
            None means one model.
        timestep_dtype: ``"float32"`` or ``"bfloat16"``: the dtype the DiT timestep is
            rounded to before the model sees it (the official Wan2.2 pipelines use bfloat16);
            the schedule itself stays exact.
        extras: model-side payloads of the run's per-clip conditions, by condition name
            (``"audio"``: SVI-Talk's audio window, ``"pose"``: SVI-Dance's pose frames). A
            backend applies each through its hook of that name and refuses a name it has no
            hook for (see :mod:`svi_core.conditions`).
        lora_strengths: LoRA name -> strength for this clip (a per-clip schedule); empty =
            the strengths the models were loaded with.
    """

    index: int
    seed: int
    noise: torch.Tensor
    cond_latent: torch.Tensor
    mask: torch.Tensor
    positive: Any
    negative: Any
    clip_vision: Any
    steps: int
    shift: float
    guidance: Guidance = field(default_factory=Guidance)
    boundary: float | None = None
    timestep_dtype: str = "float32"
    extras: Mapping[str, Any] = field(default_factory=dict)
    lora_strengths: Mapping[str, float] = field(default_factory=dict)

    @property
    def cfg(self) -> float:
        """The classifier-free guidance scale (the text scale for SVI-Talk's guidance)."""
        return self.guidance.scale


def unknown_extras(request: ClipRequest, known: Iterable[str], backend: str) -> None:
    """Raise SVIError when ``request`` carries an extra condition ``backend`` cannot apply."""
    missing = sorted(set(request.extras) - set(known))
    if missing:
        raise SVIError(
            f"the {backend} backend cannot apply the per-clip condition(s) "
            f"{', '.join(missing)} of clip {request.index}; load the model parts they need "
            "(e.g. the MultiTalk patch for audio, the pose embedding for pose) with this backend"
        )


@runtime_checkable
class Backend(Protocol):
    """What the clip loop needs from a model stack."""

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[1, 3, F, H, W]`` in [-1, 1] -> NORMALISED latent ``[1, 16, T, H/8, W/8]``.

        ONE causal encode of all F frames (float32, not tiled), F = 4k + 1.
        """
        ...

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """NORMALISED latent ``[1, 16, T, h, w]`` -> pixels ``[1, 3, 4(T-1)+1, 8h, 8w]`` in [-1, 1] (clamped)."""
        ...

    def encode_clip_vision(self, image: torch.Tensor) -> Any:
        """One frame ``[1, 3, H, W]`` in [-1, 1] -> the backend's CLIP-vision feature, or None
        when the model has no image embedding (Wan2.2)."""
        ...

    def denoise(self, request: ClipRequest, on_step: StepCallback | None = None) -> torch.Tensor:
        """Sample one clip; returns the denoised NORMALISED latent ``[1, 16, T, h, w]`` float32."""
        ...
