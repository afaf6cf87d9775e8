"""Test doubles for the clip loop: a fake Backend whose outputs reveal what went in.

encode: latent frame 0 <- pixel frame 0, latent frame j >= 1 <- mean of pixel frames 4j-3..4j
(causal, like the Wan VAE), 8x8 average pooling, channel c <- RGB channel c % 3. So a
constant-colour frame gives a constant latent frame with that value.
decode: the inverse layout (nearest upsampling, tanh to stay in [-1, 1]).
denoise: Euler flow sampling (svi_core.sampler) with a toy velocity that depends on the noise,
the conditioning latent, the mask, the prompt and every extra per-clip condition (in the
passes that do not null it), and records every request it saw.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from svi_core.backend import ClipRequest
from svi_core.sampler import sample_flow


def _prompt_value(prompt) -> float:
    h = hashlib.sha256(str(prompt).encode()).digest()
    return (h[0] / 255.0) - 0.5


def _extra_value(payload) -> float:
    if isinstance(payload, torch.Tensor):
        return float(payload.float().mean())
    if callable(getattr(payload, "fingerprint", None)):  # e.g. a pose window
        return _prompt_value(payload.fingerprint())
    return _prompt_value(payload)


class FakeBackend:
    def __init__(self, clip_vision: bool = True) -> None:
        self.has_clip_vision = clip_vision
        self.encoded: list[torch.Tensor] = []
        self.requests: list[ClipRequest] = []
        self.clip_frames: list[torch.Tensor] = []
        self.denoise_calls = 0

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        assert pixels.ndim == 5 and pixels.shape[:2] == (1, 3)
        frames = pixels.shape[2]
        assert (frames - 1) % 4 == 0
        self.encoded.append(pixels.clone())
        groups = [pixels[:, :, :1]] + [
            pixels[:, :, 1 + 4 * j : 5 + 4 * j] for j in range((frames - 1) // 4)
        ]
        lat = torch.cat([g.mean(dim=2, keepdim=True) for g in groups], dim=2)  # [1,3,T,H,W]
        lat = F.avg_pool3d(lat, kernel_size=(1, 8, 8))
        return lat[:, [c % 3 for c in range(16)]].float()

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(latent[:, :3].float())
        x = x.repeat_interleave(8, dim=3).repeat_interleave(8, dim=4)
        first, rest = x[:, :, :1], x[:, :, 1:].repeat_interleave(4, dim=2)
        return torch.cat([first, rest], dim=2).clamp(-1, 1)

    def encode_clip_vision(self, image: torch.Tensor):
        if not self.has_clip_vision:
            return None
        self.clip_frames.append(image.clone())
        return image.mean()

    def denoise(self, request: ClipRequest, on_step=None) -> torch.Tensor:
        self.denoise_calls += 1
        self.requests.append(request)
        pv = _prompt_value(request.positive)
        nv = _prompt_value(request.negative)
        cv = 0.0 if request.clip_vision is None else float(request.clip_vision)
        cond = request.cond_latent * request.mask[:, :1].mean() + request.cond_latent

        def velocity(x, t, expert, passes):
            base = x - 0.5 * cond - 0.05 * cv + 0.01 * expert
            out = []
            for p in passes:
                v = base - 0.1 * (nv if p.negative_text else pv)
                for name, payload in request.extras.items():
                    if name not in p.null:
                        v = v + 0.01 * _extra_value(payload)
                out.append(v)
            return out

        return sample_flow(
            velocity,
            request.noise,
            steps=request.steps,
            guidance=request.guidance,
            shift=request.shift,
            boundary=request.boundary,
            on_step=on_step,
            timestep_dtype=request.timestep_dtype,
        )
