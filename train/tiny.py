"""Tiny random models and synthetic videos for tests, benchmarks and toy experiments.

Not for real training: these build a 2-layer Wan I2V DiT (dim 32) and a narrow Wan VAE with
random weights, and write small moving-pattern videos with imageio-ffmpeg, so the whole ERFT
path (data -> cache -> loop -> export) runs in seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

TINY_TEXT_DIM = 32
TINY_CLIP_DIM = 32
TEXT_TOKENS = 512  # diffusers' I2V attention needs exactly 512 text tokens


def tiny_transformer(seed: int = 0, num_layers: int = 2, i2v: bool = True) -> torch.nn.Module:
    """A random diffusers ``WanTransformer3DModel``: 2 heads x 16, ffn 64, text/CLIP width 32,
    in 36 / out 16 channels (I2V: concat(x_t[16], y[20]))."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=36,
        out_channels=16,
        text_dim=TINY_TEXT_DIM,
        freq_dim=32,
        ffn_dim=64,
        num_layers=num_layers,
        image_dim=TINY_CLIP_DIM if i2v else None,
        added_kv_proj_dim=TINY_CLIP_DIM if i2v else None,
    ).train(False)


def tiny_vae(seed: int = 0) -> torch.nn.Module:
    """A random diffusers ``AutoencoderKLWan`` (base_dim 4, z_dim 16, 1 res block per level)."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1).train(
        False
    )


def tiny_text_encoder(seed: int = 0):
    """A deterministic caption -> context ``[512, 32]`` function (hash-seeded; rows after the
    caption's word count are zero, like UMT5 padding)."""
    import hashlib

    def encode(caption: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(
            seed + int.from_bytes(hashlib.sha256(caption.encode()).digest()[:4], "little")
        )
        ctx = torch.zeros(TEXT_TOKENS, TINY_TEXT_DIM)
        n = max(1, min(len(caption.split()), TEXT_TOKENS))
        ctx[:n] = torch.randn(n, TINY_TEXT_DIM, generator=g)
        return ctx

    return encode


def tiny_clip_encoder(seed: int = 0):
    """A deterministic frame ``[1, 3, H, W]`` -> ``[257, 32]`` feature (a fixed random
    projection of a 16x16 pooled frame)."""
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(3 * 16 * 16, 257 * TINY_CLIP_DIM, generator=g) / 28.0

    def encode(frame: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(frame.float(), 16).flatten()
        return (pooled @ proj).view(257, TINY_CLIP_DIM)

    return encode


def moving_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 ``[F, H, W, 3]``: a smooth random colour field drifting right by 1 px per frame."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(height // 8 + 1, (width + num_frames) // 8 + 2, 3))
    big = np.kron(base, np.ones((8, 8, 1))).astype(np.float32)
    frames = np.stack([big[:height, t : t + width] for t in range(num_frames)])
    return frames.clip(0, 255).astype(np.uint8)


def write_video(path: str | Path, frames: np.ndarray, fps: int = 16) -> Path:
    """Write uint8 ``[F, H, W, 3]`` frames to ``path`` (H, W even) as H.264 through
    :func:`svi_core.video_io.write_segment`, creating the parent folder."""
    from svi_core.video_io import write_segment

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return write_segment(p, frames, fps)
