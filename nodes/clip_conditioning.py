"""SVI Clip Conditioning: one clip's SVI conditioning for hand-built KSampler graphs.

Uses the same ``svi_core.conditioning.build_conditioning`` as the Infinite Sampler, through
the same ComfyBackend conversions, so a manual graph conditions clip k exactly as the loop
does: clip 0 from the reference image; later clips from the previous clip's decoded frames
(pixel-carry modes) or its denoised latent (SVI 2.0 Pro).
"""

from __future__ import annotations

from typing import Any

import torch
from comfy_api.latest import io

from ..svi_core import limits as L
from ..svi_core.conditioning import (
    Carry,
    build_conditioning,
    check_frames,
    check_size,
    quantise_frames,
)
from ..svi_core.errors import SVIError
from ..svi_core.latents import normalise
from ..svi_core.modes import clip_vision_problem, get_mode, mode_names
from .backend import ComfyBackend, image_condition
from .convert import image_to_pixels, reference_from_image


def carry_from_inputs(mode, previous_images: Any, previous_latent: Any) -> Carry | None:
    """The carry of a previous clip given as ComfyUI data, or None for clip 0.

    ``previous_images``: IMAGE ``[F, H, W, 3]`` in [0, 1] (decoded previous clip; its last m
    frames are used, quantised to uint8 like stored frames). ``previous_latent``: LATENT with
    RAW ``samples`` ``[1, 16, T, h, w]`` (the previous clip's denoised latent, Pro modes).
    """
    if mode.carry == "latent":
        if previous_latent is None:
            return None
        return Carry(latent=normalise(previous_latent["samples"].float().cpu()))
    if previous_images is None:
        return None
    if previous_images.shape[0] < mode.motion_frames:
        raise SVIError(
            f"previous_images holds {previous_images.shape[0]} frames; mode {mode.name!r} "
            f"carries {mode.motion_frames}; connect the whole decoded previous clip"
        )
    frames = quantise_frames(image_to_pixels(previous_images[-mode.motion_frames :]))
    return Carry(motion_frames=frames)


class SVIClipConditioning(io.ComfyNode):
    """Positive / negative / empty latent of one SVI clip, for KSampler graphs."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SVIClipConditioning",
            display_name="SVI Clip Conditioning",
            category="SVI/conditioning",
            description=(
                "One clip's SVI conditioning in any mode, for a KSampler (set shift 5 with "
                "ModelSamplingSD3). Leave the previous inputs empty for clip 0."
            ),
            inputs=[
                io.Conditioning.Input(
                    "positive", tooltip="Text conditioning of this clip's prompt."
                ),
                io.Conditioning.Input("negative", tooltip="Negative text conditioning."),
                io.Vae.Input("vae", tooltip="The Wan2.1 VAE."),
                io.Image.Input("reference_image", tooltip="The start image of the video."),
                io.Combo.Input(
                    "mode",
                    options=mode_names(),
                    default="film",
                    tooltip="SVI mode; must match the LoRA.",
                ),
                io.Int.Input(
                    "width",
                    default=832,
                    min=L.MIN_SIDE,
                    max=L.MAX_SIDE,
                    step=16,
                    tooltip="Video width (multiple of 16).",
                ),
                io.Int.Input(
                    "height",
                    default=480,
                    min=L.MIN_SIDE,
                    max=L.MAX_SIDE,
                    step=16,
                    tooltip="Video height (multiple of 16).",
                ),
                io.Int.Input(
                    "frames",
                    default=81,
                    min=L.MIN_FRAMES,
                    max=L.MAX_FRAMES,
                    step=4,
                    tooltip="Frames of the clip, 4k + 1.",
                ),
                io.Image.Input(
                    "previous_images",
                    optional=True,
                    tooltip="Pixel-carry modes: the previous clip's decoded frames (empty for clip 0).",
                ),
                io.Latent.Input(
                    "previous_latent",
                    optional=True,
                    tooltip="SVI 2.0 Pro: the previous clip's denoised latent (empty for clip 0).",
                ),
                io.ClipVision.Input(
                    "clip_vision",
                    optional=True,
                    tooltip="Wan2.1 modes: CLIP vision H; encodes the first motion frame.",
                ),
            ],
            outputs=[
                io.Conditioning.Output(
                    "positive_out",
                    display_name="positive",
                    tooltip="Positive with the clip's image condition.",
                ),
                io.Conditioning.Output(
                    "negative_out",
                    display_name="negative",
                    tooltip="Negative with the same image condition.",
                ),
                io.Latent.Output(
                    "latent",
                    display_name="latent",
                    tooltip="Empty latent of the clip's size for the KSampler.",
                ),
            ],
        )

    @classmethod
    def execute(
        cls,
        positive: list,
        negative: list,
        vae: Any,
        reference_image: torch.Tensor,
        mode: str,
        width: int,
        height: int,
        frames: int,
        previous_images: Any = None,
        previous_latent: Any = None,
        clip_vision: Any = None,
    ) -> io.NodeOutput:
        cfg = get_mode(mode, frames=frames)
        if cfg.conditions:  # e.g. dance: the pose goes into the model, not the conditioning
            raise SVIError(
                f"mode {mode!r} needs the per-clip condition(s) {', '.join(cfg.conditions)}, "
                "which this node cannot give a KSampler; use the SVI Infinite Sampler"
            )
        check_frames(frames)
        check_size(width, height)
        no_clip = clip_vision_problem(
            cfg, clip_vision is not None, "connect Load CLIP Vision to the clip_vision input"
        )
        if no_clip:
            raise SVIError(no_clip)
        reference = reference_from_image(reference_image, width, height)
        carry = carry_from_inputs(cfg, previous_images, previous_latent)
        backend = ComfyBackend(None, vae, clip_vision=clip_vision if cfg.clip_vision else None)
        cond = build_conditioning(backend, cfg, reference, carry)
        clip_fea = None
        if cfg.clip_vision and cond.clip_frame is not None:
            clip_fea = backend.encode_clip_vision(cond.clip_frame)
        pos = image_condition(positive, cond.cond_latent, cond.mask, clip_fea)
        neg = image_condition(negative, cond.cond_latent, cond.mask, clip_fea)
        latent = {"samples": torch.zeros(1, 16, cfg.latent_frames, height // 8, width // 8)}
        return io.NodeOutput(pos, neg, latent)
