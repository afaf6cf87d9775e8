"""SVI-Talk on ComfyUI: the parts that need no ComfyUI import (tier-1 tests use stand-ins).

* :class:`NodeCondition`: what a condition node (SVI Talk Audio) hands the SVI Infinite Sampler:
  the svi_core per-clip condition, its ComfyUI hook(s), the mode settings it sets and what it loads.
* :class:`PassAudioPatch`: an ``attn2_patch`` around ComfyUI core's ``MultiTalkCrossAttnPatch``
  that gives every chunk of the batch its own audio. Core's patch reads ONE
  ``transformer_options["audio_embeds"]`` for the whole batch; SVI-Talk's three guidance passes
  (``svi_video_talk.py:455-458``) need the clip's audio in two of them and the null audio in the
  third. ComfyUI puts the pass index of every chunk in ``transformer_options["cond_or_uncond"]``
  (``comfy/samplers.py``, ``_calc_cond_batch``), so the patch stacks the right tokens per chunk,
  batch-major ``[B * T, M, D]`` (core's attention then views them as ``B * N_t`` rows), and calls
  core's patch with that. The attention itself is core's.
* :func:`official_features`: wav2vec2 features the official way (CNN features interpolated to 25 fps
  BEFORE the transformer, ``utils/src/audio_analysis/wav2vec2.py:13-64``) computed with the modules
  of core's AUDIO_ENCODER (``comfy/audio_encoders/wav2vec2.py``), instead of core's encode, which
  runs the transformer at 50 Hz and interpolates afterwards (other features: TALK_RULES §5).
* :func:`core_output_features`: an AUDIO_ENCODER_OUTPUT turned into 25 fps features the way core's
  ``WanInfiniteTalkToVideo`` does (accepted with a warning: not what SVI-Talk was trained on).
* size checks of the MultiTalk patch against the DiT and the encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..svi_core.errors import SVIError
from ..svi_core.talk.multitalk_file import MultiTalkConfig
from ..svi_core.talk.windows import AUDIO_FPS, feature_frame_count

CORE_MULTITALK_HEADS = 40
"""ComfyUI core builds the MultiTalk audio attention with 40 heads whatever the width
(``comfy/ldm/wan/model_multitalk.py``, ``WanMultiTalkAttentionBlock``)."""


@dataclass(frozen=True)
class NodeCondition:
    """A per-clip condition as a ComfyUI value (type ``SVI_CONDITION``).

    Attributes:
        condition: the svi_core :class:`~svi_core.conditions.ClipCondition` (e.g. the speech).
        extras: its ComfyUI hooks by extra name (``{"audio": ...}``), given to the ComfyBackend.
        mode_overrides: mode settings it sets (``{"cfg_audio": 5.0}``).
        fingerprints: what it loaded (the MultiTalk patch, the encoder) for the run identity.
        check_model: refuses a MODEL it cannot serve (before any work); None: no check.
        feature_frames: speech feature frames (the ``clips = 0`` rule of mode talk), or None.
    """

    condition: Any
    extras: Mapping[str, Any] = field(default_factory=dict)
    mode_overrides: Mapping[str, Any] = field(default_factory=dict)
    fingerprints: Mapping[str, str] = field(default_factory=dict)
    check_model: Callable[[Any], None] | None = None
    feature_frames: int | None = None


class PassAudioPatch:
    """``attn2_patch`` giving each chunk of the batch the audio of its guidance pass.

    Args:
        inner: core's ``MultiTalkCrossAttnPatch`` (called with ``{"x", "transformer_options"}``).
        active, null: the clip's projected audio tokens and the null audio's, ``[1, T, M, D]``.
        null_passes: pass indices (``cond_or_uncond`` values) that get ``null``.
        models: the ComfyUI models the patch needs loaded (core's MODEL_PATCH).
    """

    def __init__(
        self,
        inner: Callable[[dict[str, Any]], torch.Tensor],
        active: torch.Tensor,
        null: torch.Tensor,
        null_passes: frozenset[int],
        models: Sequence[Any] = (),
    ) -> None:
        self.inner = inner
        self.active = active
        self.null = null
        self.null_passes = frozenset(null_passes)
        self._models = list(models)
        self._cache: dict[tuple[Any, ...], torch.Tensor] = {}

    def tokens(self, order: Sequence[int], batch: int, device: torch.device) -> torch.Tensor:
        """Batch-major audio ``[batch * T, M, D]`` for chunks with pass indices ``order``."""
        order = [int(i) for i in order] or [0]
        if batch % len(order):
            raise SVIError(
                f"a batch of {batch} cannot be split into {len(order)} guidance chunks for the audio"
            )
        key = (tuple(order), batch, str(device))
        if key not in self._cache:
            per = batch // len(order)
            rows = [self.null if i in self.null_passes else self.active for i in order]
            audio = torch.cat(rows).repeat_interleave(per, dim=0)  # [batch, T, M, D]
            self._cache = {key: audio.flatten(0, 1).to(device)}
        return self._cache[key]

    def __call__(self, kwargs: dict[str, Any]) -> torch.Tensor:
        x = kwargs["x"]
        options = kwargs.get("transformer_options", {})
        audio = self.tokens(options.get("cond_or_uncond") or [0], int(x.shape[0]), x.device)
        inner_options = dict(options)
        inner_options["audio_embeds"] = audio
        return self.inner({**kwargs, "transformer_options": inner_options})

    def models(self) -> list[Any]:
        return list(self._models)


def patch_config(model_patch: Any, source: str = "the model_patch input") -> MultiTalkConfig:
    """Sizes of core's MultiTalk MODEL_PATCH (``MultiTalkModelPatch``), or SVIError when the patch
    is another kind (e.g. a Qwen ControlNet or Uni3C patch)."""
    mt = getattr(model_patch, "model", None)
    proj = getattr(mt, "audio_proj", None)
    blocks = getattr(mt, "blocks", None)
    if proj is None or not blocks or not hasattr(blocks[0], "audio_cross_attn"):
        raise SVIError(
            f"{source} is not a MultiTalk patch ({type(mt).__name__}); load MeiGen-MultiTalk's "
            "multitalk.safetensors with Load Model Patch (models/model_patches/)"
        )
    attn = blocks[0].audio_cross_attn
    window = int(getattr(proj, "seq_len", 5))
    width = int(proj.proj1.weight.shape[1]) // window  # wav2vec2 layers x channels
    return MultiTalkConfig(
        dim=int(attn.q_linear.weight.shape[1]),
        num_layers=len(blocks),
        intermediate_dim=int(proj.proj1.weight.shape[0]),
        token_dim=int(proj.norm.weight.shape[0]),
        context_tokens=int(getattr(proj, "context_tokens", 32)),
        window=window,
        vae_scale=int(proj.proj1_vf.weight.shape[1]) // width - window + 1,
        feature_width=width,
    )


def check_patch_fits_model(cfg: MultiTalkConfig, model: Any) -> None:
    """Refuse a MultiTalk patch made for another DiT (width or block count), naming the inputs."""
    dm = getattr(getattr(model, "model", None), "diffusion_model", None)
    conv = getattr(dm, "patch_embedding", None)
    blocks = getattr(dm, "blocks", None)
    if conv is None or blocks is None:
        raise SVIError("mode talk needs a Wan2.1 I2V DiT MODEL; this MODEL is not a Wan DiT")
    width = int(conv.weight.shape[0])
    if cfg.dim != width:
        raise SVIError(
            f"the MultiTalk patch (model_patch input of SVI Talk Audio) is for a DiT of width "
            f"{cfg.dim}, but the MODEL is {width} wide. SVI-Talk needs Wan2.1-I2V-14B (5120) with "
            "MeiGen-MultiTalk's multitalk.safetensors"
        )
    if cfg.num_layers < len(blocks):
        raise SVIError(
            f"the MultiTalk patch has audio attention for {cfg.num_layers} blocks but the MODEL "
            f"has {len(blocks)}; use the multitalk.safetensors made for this DiT"
        )
    if cfg.dim % CORE_MULTITALK_HEADS:
        raise SVIError(
            f"the MultiTalk patch is {cfg.dim} wide, not a multiple of the {CORE_MULTITALK_HEADS} "
            "heads ComfyUI's MultiTalk attention uses"
        )


def encoder_shape(audio_encoder: Any, source: str = "the audio_encoder input") -> tuple[int, int]:
    """``(layers, channels)`` of core's wav2vec2 AUDIO_ENCODER; SVIError for another kind (whisper,
    or a stable-layer-norm "large" wav2vec2)."""
    model = getattr(audio_encoder, "model", None)
    kind = type(model).__name__
    encoder = getattr(model, "encoder", None)
    parts = ("feature_extractor", "feature_projection")
    if kind != "Wav2Vec2Model" or encoder is None or not all(hasattr(model, p) for p in parts):
        raise SVIError(
            f"{source} is a {kind} audio encoder; SVI-Talk needs wav2vec2 "
            "(TencentGameMate/chinese-wav2vec2-base, e.g. wav2vec2-chinese-base_fp16.safetensors "
            "in models/audio_encoders/)"
        )
    if getattr(encoder, "do_stable_layer_norm", False):
        raise SVIError(
            f"{source} is a large-style wav2vec2 (stable layer norm); MultiTalk reads the 12 x 768 "
            "features of chinese-wav2vec2-base"
        )
    return len(encoder.layers), int(encoder.layer_norm.weight.shape[0])


@torch.no_grad()
def official_features(
    model: Any,
    samples: np.ndarray,
    *,
    device: torch.device | str = "cpu",
    sample_rate: int = 16000,
    fps: float = AUDIO_FPS,
) -> torch.Tensor:
    """``[T_a, layers, channels]`` float32 features of a whole recording, the official way, with
    the modules of core's wav2vec2 (``model``: ``comfy.audio_encoders.wav2vec2.Wav2Vec2Model``).

    ``samples``: ``[N]`` float32 mono 16 kHz, loudness-normalised (``svi_core.talk.prepare_waveform``).
    ``T_a = int(N / 16000 * 25)``. Compute runs in float32 (core's ops cast their weights to the
    input dtype), like the official float32 CPU encoder.
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise SVIError(f"expected mono samples [N]; got shape {x.shape}")
    t_a = feature_frame_count(len(x), sample_rate, fps)
    if t_a < 2:
        raise SVIError(f"audio of {len(x) / sample_rate:.2f} s is too short for features")
    if getattr(model, "do_normalize", False):  # as transformers' zero_mean_unit_var_norm
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    wave = torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=torch.float32)[None]
    cnn = model.feature_extractor(wave)  # [1, N50, 512] (core layout: time first)
    cnn = F.interpolate(cnn.transpose(1, 2), size=t_a, mode="linear", align_corners=True)
    hidden = model.feature_projection(cnn.transpose(1, 2))
    _, all_layers = model.encoder(hidden)
    feats = torch.stack(list(all_layers[1:]), dim=0)[:, 0]  # [layers, T_a, channels]
    return feats.permute(1, 0, 2).float().cpu().contiguous()


def core_output_features(output: Mapping[str, Any], fps: float = AUDIO_FPS) -> torch.Tensor:
    """``[T, layers, channels]`` from core's AUDIO_ENCODER_OUTPUT, as ``WanInfiniteTalkToVideo``
    builds it (``comfy_extras/nodes_wan.py``): the layer outputs (not the embedding) at 50 Hz,
    linearly interpolated to ``int(N50 / 50 * 25)`` frames (align_corners)."""
    layers = output.get("encoded_audio_all_layers") if isinstance(output, Mapping) else None
    if not layers:
        raise SVIError(
            "the audio_encoder_output input has no encoded_audio_all_layers; connect Audio "
            "Encoder Encode"
        )
    stacked = torch.stack([t.float() for t in layers], dim=0)
    if stacked.ndim != 4 or stacked.shape[1] != 1:
        raise SVIError(f"unexpected audio encoder output layout {tuple(stacked.shape)}")
    per_layer = stacked[1:, 0]  # [layers, N50, channels]
    n50 = per_layer.shape[1]
    frames = int(n50 / 50.0 * fps)
    out = F.interpolate(per_layer.transpose(1, 2), size=frames, mode="linear", align_corners=True)
    return out.transpose(1, 2).permute(1, 0, 2).cpu().contiguous()
