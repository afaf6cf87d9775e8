"""Wan2.1 VAE latent statistics, in one place.

Wan2.1 latents have 16 channels. The VAE returns RAW latents (the posterior mean). The official
pipeline and this project's clip loop work in NORMALISED space: ``(raw - mean) / std`` per
channel. ComfyUI's model wrapper takes RAW latents and normalises them itself.
"""

from __future__ import annotations

import torch

LATENT_CHANNELS = 16

WAN21_LATENT_MEAN: tuple[float, ...] = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENT_STD: tuple[float, ...] = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


def _stats(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if like.ndim < 2 or like.shape[1] != LATENT_CHANNELS:
        raise ValueError(
            f"expected a Wan2.1 latent [B, 16, T, H, W]; got shape {tuple(like.shape)}"
        )
    shape = (1, LATENT_CHANNELS) + (1,) * (like.ndim - 2)
    mean = torch.tensor(WAN21_LATENT_MEAN, dtype=torch.float32, device=like.device)
    std = torch.tensor(WAN21_LATENT_STD, dtype=torch.float32, device=like.device)
    return mean.view(shape), std.view(shape)


def normalise(raw: torch.Tensor) -> torch.Tensor:
    """RAW latent ``[B, 16, ...]`` -> NORMALISED latent ``(raw - mean) / std`` (same shape, float32 math)."""
    mean, std = _stats(raw)
    return ((raw.float() - mean) / std).to(raw.dtype)


def denormalise(norm: torch.Tensor) -> torch.Tensor:
    """NORMALISED latent ``[B, 16, ...]`` -> RAW latent ``norm * std + mean``."""
    mean, std = _stats(norm)
    return (norm.float() * std + mean).to(norm.dtype)
