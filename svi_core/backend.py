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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

StepCallback = Callable[[int, int], None]
"""``on_step(step_done, total_steps)``; may raise ``svi_core.errors.Cancelled``."""


@dataclass(frozen=True)
class ClipRequest:
    """Everything one clip's denoising needs.

    Attributes:
        index: clip number k (0-based).
        seed: the clip's seed (``base + k * stride``).
        noise: ``[1, 16, T, h, w]`` float32 unit Gaussian from a CPU generator seeded with
            ``seed`` (normalised latent space, like the official scripts).
        cond_latent: ``[1, 16, T, h, w]`` NORMALISED conditioning latent (reference / motion /
            padding content, per mode).
        mask: ``[1, 4, T, h, w]`` float32, official convention: 1 = frame given (latent
            frame 0 only in every SVI mode), 0 elsewhere. ComfyUI's ``concat_mask`` is the
            inverse; the ComfyUI backend converts.
        positive: backend-specific text conditioning of this clip's prompt (a string for the
            standalone backend, a CONDITIONING for ComfyUI).
        negative: backend-specific negative text conditioning.
        clip_vision: backend-specific CLIP-vision feature (``encode_clip_vision`` result) or
            None (Wan2.2 experts have no image embedding).
        steps, cfg, shift: sampling settings (official: 50, 5.0, 5.0).
        boundary: two-expert switch, as a fraction of the 1000 timestep scale (0.875 for
            Wan2.2 A14B I2V); the high-noise expert runs while ``t >= boundary * 1000``.
            None means one model.
        extra: per-clip extra conditioning for later modes (Talk audio, Dance pose).
        timestep_dtype: ``"float32"`` or ``"bfloat16"``: the dtype the DiT timestep is
            rounded to before the model sees it (the official Wan2.2 pipelines use bfloat16);
            the schedule itself stays exact.
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
    cfg: float
    shift: float
    boundary: float | None = None
    extra: Any = None
    timestep_dtype: str = "float32"


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
