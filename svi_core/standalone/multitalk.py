"""MultiTalk audio modules for diffusers' ``WanTransformer3DModel`` (SVI-Talk on the standalone side).

diffusers has no MultiTalk block. :class:`MultiTalkAudioModules` holds the official modules under the
official key names (``audio_proj.*``, ``blocks.i.audio_cross_attn.*``, ``blocks.i.norm_x.*``, see
:mod:`svi_core.talk.multitalk_file`) and :func:`attach_multitalk` wires them into a diffusers Wan DiT
with forward hooks, adding the audio attention exactly where the official block does
(``diffsynth/models/wan_video_dit.py:361-366``; ComfyUI's ``attn2_patch``)::

    x = x + cross_attn(norm_cross(x), context)
    x = x + audio_cross_attn(norm_x(x), audio_tokens)      # <- added here
    x = x + gate * ffn(...)

Hook mechanics (diffusers ``WanTransformerBlock.forward``): a pre-hook on ``block.norm2`` (called with
``hidden_states.float()`` right before the cross-attention) keeps the residual stream; a forward hook
on ``block.attn2`` returns ``attn_out + audio(norm_x(h + attn_out))``, so the block's own
``hidden_states + attn_output`` becomes ``h + attn_out + audio``. In float32 this is the official order
of additions; in bf16 the two additions round once more than the official code.

Audio per forward call: ``with handle.audio(tokens): model(...)``. ``tokens`` ``[B, T, M, D_a]`` are
the projected audio tokens (:meth:`MultiTalkAudioModules.project`) of every batch element (B = 1 is
broadcast), T latent frames, M = 32 tokens; outside the context (or with None) the DiT runs without
audio attention, like the official block when ``audio_embed is None``. Each latent frame's video tokens
attend only to that frame's M audio tokens (official ``SingleStreamAttention``, ``attention.py:318-371``,
one speaker: no RoPE, no q/k norm).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import load_state_dict
from ..errors import CheckpointError
from ..log import logger
from ..talk.multitalk_file import (
    MultiTalkConfig,
    check_multitalk_fits_dit,
    inspect_multitalk,
    strip_multitalk_prefix,
)

__all__ = [
    "MultiTalkAudio",
    "MultiTalkAudioAttention",
    "MultiTalkAudioModules",
    "MultiTalkAudioProjection",
    "MultiTalkBlock",
    "MultiTalkHandle",
    "attach_multitalk",
    "load_multitalk",
]

MULTITALK_HEADS = 40
"""Audio attention heads: the Wan 14B DiT's (official) and ComfyUI's fixed value."""


class MultiTalkAudioProjection(nn.Module):
    """wav2vec2 windows -> audio context tokens (official ``AudioProjModel``, ``wan_video_dit.py:52-113``).

    ``first [B, 1, window, L, C]`` and ``latter [B, T - 1, window + vae_scale - 1, L, C]`` are flattened
    per latent frame, ``relu(proj1 / proj1_vf)``, concatenated over frames, ``relu(proj2)``, ``proj3`` to
    ``tokens x D_a``, LayerNorm(D_a, eps 1e-5). Returns ``[B, T, tokens, D_a]``.
    """

    def __init__(self, cfg: MultiTalkConfig, eps: float = 1e-5) -> None:
        super().__init__()
        self.cfg = cfg
        self.proj1 = nn.Linear(cfg.window * cfg.feature_width, cfg.intermediate_dim)
        self.proj1_vf = nn.Linear(cfg.latter_window * cfg.feature_width, cfg.intermediate_dim)
        self.proj2 = nn.Linear(cfg.intermediate_dim, cfg.intermediate_dim)
        self.proj3 = nn.Linear(cfg.intermediate_dim, cfg.context_tokens * cfg.token_dim)
        self.norm = nn.LayerNorm(cfg.token_dim, eps=eps)

    def forward(self, first: torch.Tensor, latter: torch.Tensor) -> torch.Tensor:
        if first.ndim != 5 or latter.ndim != 5 or first.shape[0] != latter.shape[0]:
            raise ValueError(
                f"expected audio windows [B, 1, w, L, C] and [B, T-1, w', L, C]; got "
                f"{tuple(first.shape)} and {tuple(latter.shape)}"
            )
        a = torch.relu(self.proj1(first.flatten(2)))
        b = torch.relu(self.proj1_vf(latter.flatten(2)))
        h = torch.relu(self.proj2(torch.cat([a, b], dim=1)))
        tokens = self.proj3(h).unflatten(-1, (self.cfg.context_tokens, self.cfg.token_dim))
        return self.norm(tokens)


class MultiTalkAudioAttention(nn.Module):
    """Per-latent-frame cross-attention from video tokens to that frame's audio tokens.

    ``x [B, T * S, dim]`` (frame-major tokens, S per latent frame), ``audio [B or 1, T, M, D_a]`` ->
    ``[B, T * S, dim]``. ``q_linear``, ``kv_linear`` (keys = first ``dim`` outputs, values = the rest)
    and ``proj`` all have biases; softmax scale ``head_dim ** -0.5``.
    """

    def __init__(self, dim: int, token_dim: int, num_heads: int = MULTITALK_HEADS) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(token_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        t, m = audio.shape[1], audio.shape[2]
        if n % t:
            raise ValueError(f"{n} video tokens cannot be split over {t} latent frames of audio")
        if audio.shape[0] not in (1, b):
            raise ValueError(f"audio batch {audio.shape[0]} does not match the video batch {b}")
        s, h = n // t, self.num_heads
        q = self.q_linear(x).view(b * t, s, h, dim // h).transpose(1, 2)
        audio = audio.to(x.dtype).expand(b, -1, -1, -1).reshape(b * t, m, -1)
        k, v = self.kv_linear(audio).view(b * t, m, 2, h, dim // h).unbind(2)
        out = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, n, dim))


class MultiTalkBlock(nn.Module):
    """One DiT block's audio step: ``audio_cross_attn(norm_x(x), audio)``.

    ``norm_x`` is an affine LayerNorm computed in float32 (official ``WanLayerNorm``, eps 1e-6;
    ComfyUI uses eps 1e-5).
    """

    def __init__(self, cfg: MultiTalkConfig, num_heads: int, eps: float) -> None:
        super().__init__()
        self.audio_cross_attn = MultiTalkAudioAttention(cfg.dim, cfg.token_dim, num_heads)
        self.norm_x = nn.LayerNorm(cfg.dim, eps=eps)

    def forward(self, x: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        n = self.norm_x
        w = None if n.weight is None else n.weight.float()
        bias = None if n.bias is None else n.bias.float()
        normed = F.layer_norm(x.float(), n.normalized_shape, w, bias, n.eps).to(x.dtype)
        return self.audio_cross_attn(normed, audio)


class MultiTalkAudioModules(nn.Module):
    """The MultiTalk audio projection + one :class:`MultiTalkBlock` per DiT block (official key names)."""

    def __init__(
        self, cfg: MultiTalkConfig, num_heads: int = MULTITALK_HEADS, norm_eps: float = 1e-6
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.audio_proj = MultiTalkAudioProjection(cfg)
        self.blocks = nn.ModuleList(
            MultiTalkBlock(cfg, num_heads, norm_eps) for _ in range(cfg.num_layers)
        )

    def project(self, first: torch.Tensor, latter: torch.Tensor) -> torch.Tensor:
        """Audio windows (:func:`svi_core.talk.clip_audio_windows`) -> tokens ``[B, T, M, D_a]``."""
        p = next(self.audio_proj.parameters())
        return self.audio_proj(first.to(p.device, p.dtype), latter.to(p.device, p.dtype))


@dataclass
class MultiTalkHandle:
    """Hooks of :func:`attach_multitalk`; ``audio(tokens)`` sets the audio for the forward calls inside."""

    modules: MultiTalkAudioModules
    hooks: list[Any] = field(default_factory=list)
    tokens: torch.Tensor | None = None
    _residual: dict[int, torch.Tensor] = field(default_factory=dict)

    @contextlib.contextmanager
    def audio(self, tokens: torch.Tensor | None) -> Iterator[None]:
        """Audio tokens ``[B, T, M, D_a]`` (or None: no audio attention) for the calls in the block."""
        previous, self.tokens = self.tokens, tokens
        try:
            yield
        finally:
            self.tokens = previous
            self._residual.clear()

    def remove(self) -> None:
        """Detach the audio modules (the DiT is plain Wan again)."""
        for h in self.hooks:
            h.remove()
        self.hooks.clear()


def attach_multitalk(transformer: nn.Module, modules: MultiTalkAudioModules) -> MultiTalkHandle:
    """Wire MultiTalk into a diffusers ``WanTransformer3DModel`` (moved to its device and dtype).

    Raises:
        CheckpointError: the audio modules are for another width or fewer blocks.
    """
    blocks = getattr(transformer, "blocks", None)
    if blocks is None or not all(hasattr(b, "attn2") and hasattr(b, "norm2") for b in blocks):
        raise CheckpointError("attach_multitalk needs a diffusers WanTransformer3DModel")
    cfg = transformer.config
    dim = int(cfg.num_attention_heads) * int(cfg.attention_head_dim)
    check_multitalk_fits_dit(modules.cfg, dim, len(blocks), "the MultiTalk modules")
    p = next(transformer.parameters())
    modules.to(device=p.device, dtype=p.dtype)
    handle = MultiTalkHandle(modules)

    for i, block in enumerate(blocks):

        def keep_residual(_mod, args, _i=i):
            if handle.tokens is not None:
                handle._residual[_i] = args[0]

        def add_audio(_mod, _args, output, _i=i):
            if handle.tokens is None:
                return None
            h = handle._residual.pop(_i).to(output.dtype)
            return output + modules.blocks[_i](h + output, handle.tokens)

        handle.hooks.append(block.norm2.register_forward_pre_hook(keep_residual))
        handle.hooks.append(block.attn2.register_forward_hook(add_audio))
    return handle


class MultiTalkAudio:
    """The ``"audio"`` hook of :class:`~svi_core.standalone.backend.DiffusersBackend` (a
    ``DiffusersExtra``): applies a clip's :class:`~svi_core.talk.condition.AudioWindow`.

    :meth:`prepare` (once per clip) projects the clip's windows and the null (zero) windows with
    ``audio_proj`` (official: each pass's audio projected on its own, ``svi_video_talk.py:448-458``,
    the null from ``zeros_like``, ``:550``); :meth:`apply` (around each DiT forward) gives every
    batch row its tokens: the clip's audio where ``active``, the null audio elsewhere (SVI-Talk's
    unconditional pass), so the three guidance passes can run as one batch.

    Args:
        transformer: the diffusers ``WanTransformer3DModel`` the modules are wired into
            (:func:`attach_multitalk`; moved to its device and dtype).
        modules: the loaded :class:`MultiTalkAudioModules`.
    """

    def __init__(self, transformer: nn.Module, modules: MultiTalkAudioModules) -> None:
        self.transformer = transformer
        self.handle = attach_multitalk(transformer, modules)
        self.modules = modules

    @torch.no_grad()
    def prepare(
        self, payload: Any, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(active [1, T, M, D_a], null [1, T, M, D_a])`` tokens of one clip (official: the
        windows are cast to the model dtype before the projection, ``svi_video_talk.py:444``)."""
        first, latter = payload.windows()
        null_first, null_latter = payload.null_windows()
        active = self.modules.project(first, latter)
        null = self.modules.project(null_first, null_latter)
        return active, null

    def apply(
        self, prepared: tuple[torch.Tensor, torch.Tensor], model: nn.Module, active: Any
    ) -> contextlib.AbstractContextManager[None]:
        """Audio for the forward calls inside: row i gets the clip's tokens when ``active[i]``."""
        if model is not self.transformer:
            raise CheckpointError(
                "the MultiTalk audio modules are attached to another DiT than the one sampling"
            )
        tokens = torch.cat([prepared[0] if a else prepared[1] for a in active])
        return self.handle.audio(tokens)


def load_multitalk(
    path: str | os.PathLike[str],
    *,
    num_heads: int = MULTITALK_HEADS,
    norm_eps: float = 1e-6,
    dtype: torch.dtype = torch.float32,
) -> MultiTalkAudioModules:
    """Load MeiGen-MultiTalk's ``multitalk.safetensors`` (bare or ``diffusion_model.``-prefixed keys).

    Raises:
        CheckpointError: missing file, not a MultiTalk file, incomplete or inconsistent tensors.
    """
    sd = strip_multitalk_prefix(load_state_dict(path, dtype=dtype))
    cfg = inspect_multitalk(sd, str(path))
    if cfg.dim % num_heads:
        raise CheckpointError(
            f"'{path}': width {cfg.dim} is not divisible by {num_heads} attention heads"
        )
    modules = MultiTalkAudioModules(cfg, num_heads=num_heads, norm_eps=norm_eps)
    expected = set(modules.state_dict())
    extra = sorted(set(sd) - expected)
    if extra:
        raise CheckpointError(f"'{path}': unexpected MultiTalk tensor '{extra[0]}'")
    modules.load_state_dict(sd, strict=True)
    logger.info("loaded MultiTalk '%s': %s", path, cfg)
    return modules.to(dtype).train(False).requires_grad_(False)
