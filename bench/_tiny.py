"""Tiny random diffusers Wan models for the CPU benchmarks (not shipped; see .comfyignore)."""

from __future__ import annotations

import torch


def tiny_backend(dim_heads: int = 2, head_dim: int = 16, layers: int = 2, vae_dim: int = 4):
    """A DiffusersBackend over a random Wan2.1-I2V-shaped DiT and a random Wan VAE."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from svi_core.standalone.backend import DiffusersBackend

    torch.manual_seed(0)
    dit = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=dim_heads,
        attention_head_dim=head_dim,
        in_channels=36,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=4 * dim_heads * head_dim,
        num_layers=layers,
        image_dim=32,
        added_kv_proj_dim=dim_heads * head_dim,
    ).eval()
    vae = AutoencoderKLWan(base_dim=vae_dim, z_dim=16, num_res_blocks=1).eval()
    proj = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))

    def image_encoder(frame: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(frame.float(), 16)  # [1, 3, 16, 16]
        tokens = pooled.flatten(2).transpose(1, 2)  # [1, 256, 3]
        tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)  # [1, 257, 3]
        return tokens @ proj

    return DiffusersBackend(dit, vae, image_encoder=image_encoder)


def text_context(seed: int) -> torch.Tensor:
    ctx = torch.zeros(1, 512, 32)
    ctx[:, :8] = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(seed))
    return ctx


def reference(height: int, width: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8)


class CheapCodecBackend:
    """A DiffusersBackend whose VAE is replaced by a cheap stand-in codec.

    encode: latent frame 0 <- pixel frame 0, frame j <- mean of pixel frames 4j-3..4j, 8x8
    average pooling, 16 channels from the 3 colours; decode: the inverse layout (nearest
    upsampling, tanh). The tiny diffusers VAE costs seconds per clip on a small CPU; for
    measuring the loop's own memory and time the codec only has to produce the right shapes.
    """

    def __init__(self, inner) -> None:
        self.inner = inner

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        f = pixels.shape[2]
        groups = [pixels[:, :, :1]] + [
            pixels[:, :, 1 + 4 * j : 5 + 4 * j] for j in range((f - 1) // 4)
        ]
        lat = torch.cat([g.mean(dim=2, keepdim=True) for g in groups], dim=2)
        lat = torch.nn.functional.avg_pool3d(lat, kernel_size=(1, 8, 8))
        return lat[:, [c % 3 for c in range(16)]].float()

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(latent[:, :3].float())
        x = x.repeat_interleave(8, dim=3).repeat_interleave(8, dim=4)
        return torch.cat([x[:, :, :1], x[:, :, 1:].repeat_interleave(4, dim=2)], dim=2)

    def encode_clip_vision(self, image: torch.Tensor):
        return self.inner.encode_clip_vision(image)

    def denoise(self, request, on_step=None) -> torch.Tensor:
        return self.inner.denoise(request, on_step)
