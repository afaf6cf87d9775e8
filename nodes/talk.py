"""SVI Talk Audio: the speech of a talking video (SVI-Talk) for the SVI Infinite Sampler.

Built on what ComfyUI core ships for MultiTalk / InfiniteTalk (0.11.0 and newer): the MultiTalk
patch from core's **Load Model Patch** (MODEL_PATCH, ``multitalk.safetensors`` in
``models/model_patches/``), wav2vec2 from core's **Load Audio Encoder** (AUDIO_ENCODER,
``models/audio_encoders/``), the speech from **Load Audio** (AUDIO). Per clip the sampler gives the
DiT the clip's audio window through core's ``MultiTalkCrossAttnPatch`` (one per-chunk wrapper:
``nodes.talk_parts.PassAudioPatch``) and runs the three-pass text/audio guidance
(``nodes.guider``). Core's InfiniteTalk conditioning and latent replacement
(``WanInfiniteTalkToVideo``) are NOT used: SVI-Talk conditions every clip like SVI-Shot.

Features: by default the pack runs core's wav2vec2 modules in the official order (CNN features
interpolated to 25 fps before the transformer, ``nodes.talk_parts.official_features``), because
core's own Audio Encoder Encode runs the transformer at 50 Hz and interpolates after, which gives
other features than the ones MultiTalk and SVI-Talk were trained on. An AUDIO_ENCODER_OUTPUT may be
connected instead (used as core builds it for InfiniteTalk, with a warning).

ComfyUI 0.3.64 has no MultiTalk support (no ``comfy/ldm/wan/model_multitalk.py``, no MultiTalk
branch in Load Model Patch): this node and the sampler in mode ``talk`` refuse with that message.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import numpy as np
import torch
from comfy_api.latest import io

from ..svi_core.errors import SVIError
from ..svi_core.log import logger
from ..svi_core.run_store import sha256_json
from ..svi_core.talk import check_features_fit_multitalk, prepare_waveform
from ..svi_core.talk.condition import AudioCondition, AudioFeatureSettings, AudioWindow
from .talk_parts import (
    NodeCondition,
    PassAudioPatch,
    check_patch_fits_model,
    core_output_features,
    encoder_shape,
    official_features,
    patch_config,
)

MULTITALK_MODULE = "comfy.ldm.wan.model_multitalk"
MIN_COMFYUI = "0.11.0"
SVICondition = io.Custom("SVI_CONDITION")
ModelPatch = io.Custom("MODEL_PATCH")


def comfyui_version() -> str:
    try:
        return str(importlib.import_module("comfyui_version").__version__)
    except (ImportError, AttributeError):
        return "unknown"


def require_multitalk() -> Any:
    """Core's MultiTalk module, or SVIError saying which ComfyUI is needed."""
    if importlib.util.find_spec(MULTITALK_MODULE) is None:
        raise SVIError(
            f"SVI-Talk needs ComfyUI {MIN_COMFYUI} or newer: it builds on core's MultiTalk support "
            "(comfy/ldm/wan/model_multitalk.py, the MultiTalk branch of Load Model Patch, Load "
            f"Audio Encoder), which this ComfyUI ({comfyui_version()}) does not have. Update "
            "ComfyUI to use mode talk; the other SVI modes work on this version"
        )
    return importlib.import_module(MULTITALK_MODULE)


def check_talk_inputs(mode: Any, condition: NodeCondition | None, model: Any) -> None:
    """The sampler's Talk checks, before any work: ComfyUI new enough, the speech connected, the
    MultiTalk patch made for this MODEL."""
    if "audio" in mode.conditions:
        require_multitalk()
        if condition is None:
            raise SVIError(
                f"mode {mode.name!r} needs the speech: connect SVI Talk Audio (Load Audio + Load "
                "Model Patch multitalk.safetensors + Load Audio Encoder wav2vec2) to the "
                "sampler's condition input"
            )
    if condition is not None and condition.check_model is not None:
        condition.check_model(model)


class ComfyTalkAudio:
    """The ComfyBackend's ``"audio"`` hook (a ComfyExtra): projects a clip's
    :class:`~svi_core.talk.condition.AudioWindow` with the patch's own ``audio_proj`` and patches a
    clone of the MODEL with core's MultiTalk attention, per guidance pass."""

    def __init__(self, model_patch: Any) -> None:
        self.model_patch = model_patch
        self.config = patch_config(model_patch)

    def check_model(self, model: Any) -> None:
        check_patch_fits_model(self.config, model)

    @torch.no_grad()
    def _project(self, windows: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        first, latter = windows
        return self.model_patch.model.audio_proj(first.float(), latter.float()).float().cpu()

    def patch(self, model: Any, payload: AudioWindow, null_passes: frozenset[int]) -> Any:
        core = require_multitalk()
        active = self._project(payload.windows())
        null = self._project(payload.null_windows())
        inner = core.MultiTalkCrossAttnPatch(self.model_patch, 1.0)
        patched = model.clone()
        patched.set_model_patch(
            PassAudioPatch(inner, active, null, null_passes, models=[self.model_patch]),
            "attn2_patch",
        )
        return patched


def _fingerprint(obj: Any) -> str:
    """A cheap identity of a loaded ComfyUI model object (its class and a few weight sums)."""
    model = getattr(obj, "model", obj)
    sums = []
    for name, p in list(model.state_dict().items())[:8]:
        sums.append([name, list(p.shape), round(float(p.detach().float().sum()), 4)])
    return sha256_json([type(model).__name__, sums])


class SVITalkAudio(io.ComfyNode):
    """The speech of a talking video (SVI-Talk) for the SVI Infinite Sampler."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SVITalkAudio",
            display_name="SVI Talk Audio",
            category="SVI/talk",
            description=(
                "The speech of an SVI-Talk video: connect its output to the SVI Infinite "
                "Sampler's condition input and set the sampler's mode to talk. Needs ComfyUI "
                f"{MIN_COMFYUI}+ (core MultiTalk support)."
            ),
            inputs=[
                ModelPatch.Input(
                    "model_patch",
                    tooltip="MeiGen-MultiTalk's multitalk.safetensors from Load Model Patch "
                    "(models/model_patches/): the audio layers SVI-Talk was trained with.",
                ),
                io.Audio.Input("audio", tooltip="The speech (Load Audio); any length."),
                io.AudioEncoder.Input(
                    "audio_encoder",
                    optional=True,
                    tooltip="chinese-wav2vec2-base from Load Audio Encoder "
                    "(models/audio_encoders/); features are computed the official way.",
                ),
                io.Float.Input(
                    "audio_scale",
                    default=5.0,
                    min=0.1,
                    max=20.0,
                    step=0.1,
                    tooltip="Audio guidance scale (official 5); the sampler's cfg is the text "
                    "scale (official 2).",
                ),
                io.Combo.Input(
                    "audio_align",
                    options=["official", "frames"],
                    default="official",
                    tooltip="Speech track of the mp4: official = the speech from 0 s; frames = "
                    "the audio each frame was made from (exact lip sync, 40 ms repeat at 3.2 s).",
                ),
                io.AudioEncoderOutput.Input(
                    "audio_encoder_output",
                    optional=True,
                    tooltip="Optional: core's Audio Encoder Encode output instead of audio_encoder "
                    "(50 Hz features, not what SVI-Talk was trained on).",
                ),
            ],
            outputs=[
                SVICondition.Output(
                    "condition",
                    display_name="condition",
                    tooltip="Connect to the SVI Infinite Sampler's condition input (mode talk).",
                )
            ],
        )

    @classmethod
    def execute(
        cls,
        model_patch: Any,
        audio: dict,
        audio_scale: float,
        audio_align: str,
        audio_encoder: Any = None,
        audio_encoder_output: Any = None,
    ) -> io.NodeOutput:
        require_multitalk()
        hook = ComfyTalkAudio(model_patch)
        waveform = audio["waveform"][0].detach().float().cpu().numpy()
        rate = int(audio["sample_rate"])
        kw = dict(waveform=(np.ascontiguousarray(waveform), rate), align=audio_align)
        if audio_encoder_output is not None:
            cond, enc = _from_core_output(audio_encoder_output, hook, kw)
        elif audio_encoder is not None:
            cond, enc = _from_encoder(audio_encoder, audio, hook, kw)
        else:
            raise SVIError(
                "SVI Talk Audio needs audio_encoder (Load Audio Encoder with "
                "wav2vec2-chinese-base) or an audio_encoder_output"
            )
        fingerprints = {"multitalk": _fingerprint(model_patch), "audio_encoder": enc}
        return io.NodeOutput(
            NodeCondition(
                condition=cond,
                extras={"audio": hook},
                mode_overrides={"cfg_audio": float(audio_scale)},
                fingerprints=fingerprints,
                check_model=hook.check_model,
                feature_frames=cond.feature_frames,
            )
        )


def _from_encoder(audio_encoder: Any, audio: dict, hook: ComfyTalkAudio, kw: dict):
    import comfy.model_management

    layers, channels = encoder_shape(audio_encoder)
    check_features_fit_multitalk(
        hook.config, layers, channels, "the model_patch input", "the audio_encoder input"
    )
    track = prepare_waveform(audio["waveform"], int(audio["sample_rate"]), source="the audio input")
    normalize = bool(getattr(audio_encoder.model, "do_normalize", False))

    def encode(samples: np.ndarray) -> torch.Tensor:
        comfy.model_management.load_model_gpu(audio_encoder.patcher)
        return official_features(audio_encoder.model, samples, device=audio_encoder.load_device)

    settings = AudioFeatureSettings(
        encoder=f"wav2vec2 {layers}x{channels} do_normalize={normalize}",
        layers=layers,
        channels=channels,
    )
    return AudioCondition.from_track(track, encode, settings, **kw), _fingerprint(audio_encoder)


def _from_core_output(output: Any, hook: ComfyTalkAudio, kw: dict):
    feats = core_output_features(output)
    layers, channels = int(feats.shape[1]), int(feats.shape[2])
    check_features_fit_multitalk(
        hook.config, layers, channels, "the model_patch input", "the audio_encoder_output input"
    )
    logger.warning(
        "SVI Talk Audio: using core's AUDIO_ENCODER_OUTPUT (transformer at 50 Hz, interpolated "
        "after); MultiTalk and SVI-Talk were trained on features interpolated before the "
        "transformer. Connect audio_encoder instead for the official features"
    )
    settings = AudioFeatureSettings(
        encoder=f"core audio encoder output {layers}x{channels}",
        layers=layers,
        channels=channels,
        order="core",
        loudness_target=None,
    )
    cond = AudioCondition.from_features(
        feats, settings, source="the audio_encoder_output input", **kw
    )
    return cond, sha256_json(["core output", list(feats.shape)])
