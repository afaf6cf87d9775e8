"""SVI Toy Models: the tiny toy Wan models shipped in ``svi_core/assets`` as ComfyUI objects.

For trying the pack on a CPU in about a minute, without downloading anything: a Wan2.1 I2V DiT
of width 128 (MODEL, loaded by ComfyUI's own diffusion-model loader), a Wan2.1 VAE of base
width 16 (VAE: ComfyUI's own ``comfy.sd.VAE`` around its own ``WanVAE`` class, built at the toy
width), and the fixed conditioning the toy DiT was trained with in place of UMT5 and CLIP
vision H (every prompt -> zeros ``[1, 512, 4096]``, every image -> zeros ``[B, 257, 1280]``).
The pictures are blocky (8x8-pixel cells); the toy exists to show the pipeline working.
"""

from __future__ import annotations

import threading
from typing import Any

import comfy.clip_vision
import comfy.ldm.wan.vae
import comfy.sd
import comfy.utils
import torch
from comfy_api.latest import io

from ..svi_core.toy.models import (
    IMAGE_SHAPE,
    TEXT_SHAPE,
    TOY_DIT,
    TOY_HEIGHT,
    TOY_VAE,
    TOY_WIDTH,
)
from ..svi_core.toy.world import WorldConfig, toy_first_frame

_BUILD_LOCK = threading.Lock()


class ToyTextEncoder:
    """Stands in for ComfyUI's CLIP (UMT5) in SVI Prompt Stream: every prompt -> zeros
    ``[1, 512, 4096]``, the text context the toy DiT was trained with."""

    def tokenize(self, text: str) -> str:
        return text

    def encode_from_tokens_scheduled(self, tokens: str) -> list:
        return [[torch.zeros(TEXT_SHAPE), {"pooled_output": None}]]


class ToyClipVision:
    """Stands in for ComfyUI's CLIP_VISION: every image ``[B, H, W, 3]`` -> penultimate hidden
    states of zeros ``[B, 257, 1280]``, the image feature the toy DiT was trained with."""

    def encode_image(self, image: torch.Tensor, crop: bool = True):
        feats = torch.zeros(image.shape[0], *IMAGE_SHAPE[1:])
        out = comfy.clip_vision.Output()
        out["penultimate_hidden_states"] = feats
        out["last_hidden_state"] = feats
        out["image_embeds"] = feats[:, 0]
        return out


def toy_vae(sd: dict[str, torch.Tensor]) -> comfy.sd.VAE:
    """A ``comfy.sd.VAE`` holding ComfyUI's Wan2.1 ``WanVAE`` at the width of ``sd``
    (``decoder.head.0.gamma`` has one entry per base channel).

    Newer ComfyUI reads the width from the weights; older releases (0.3.x) build width 96
    whatever the file says, so while the VAE is built, ``comfy.ldm.wan.vae.WanVAE`` is wrapped
    to take the file's width (under a lock, restored right after).
    """
    width = int(sd["decoder.head.0.gamma"].shape[0])
    original = comfy.ldm.wan.vae.WanVAE

    def build(**config: Any):
        return original(**(config | {"dim": width}))

    with _BUILD_LOCK:
        comfy.ldm.wan.vae.WanVAE = build
        try:
            vae = comfy.sd.VAE(sd=sd)
        finally:
            comfy.ldm.wan.vae.WanVAE = original
    return vae


class SVIToyModels(io.ComfyNode):
    """The shipped toy Wan2.1 I2V models: MODEL, VAE and stand-ins for UMT5 / CLIP vision."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SVIToyModels",
            display_name="SVI Toy Models",
            category="SVI/loaders",
            description=(
                "Loads the tiny toy Wan2.1 I2V models shipped with the pack (no download, runs "
                "on a CPU): use mode tom, 64x48, 13 frames, 10 steps, CFG 1. Blocky pictures; "
                "for trying the pipeline and the drift report, not for real videos."
            ),
            inputs=[
                io.Int.Input(
                    "scene",
                    default=3,
                    min=0,
                    max=100000,
                    tooltip="Toy world scene whose first frame is the start_image (3 = a "
                    "scene held out of the toy's training).",
                ),
            ],
            outputs=[
                io.Model.Output(
                    "model", display_name="model", tooltip="Toy Wan2.1 I2V DiT (width 128)."
                ),
                io.Vae.Output("vae", display_name="vae", tooltip="Toy Wan2.1 VAE (width 16)."),
                io.Clip.Output(
                    "clip",
                    display_name="clip",
                    tooltip="Toy text encoder for SVI Prompt Stream (any prompt -> the fixed "
                    "context the toy was trained with).",
                ),
                io.ClipVision.Output(
                    "clip_vision",
                    display_name="clip_vision",
                    tooltip="Toy CLIP vision for the sampler (any image -> the fixed feature "
                    "the toy was trained with).",
                ),
                io.Image.Output(
                    "start_image",
                    display_name="start_image",
                    tooltip="Frame 0 of the toy scene (64x48), the reference image to start from.",
                ),
            ],
        )

    @classmethod
    def execute(cls, scene: int) -> io.NodeOutput:
        model = comfy.sd.load_diffusion_model(str(TOY_DIT))
        vae = toy_vae(comfy.utils.load_torch_file(str(TOY_VAE), safe_load=True))
        frame = toy_first_frame(int(scene), WorldConfig(height=TOY_HEIGHT, width=TOY_WIDTH))
        image = torch.from_numpy(frame.copy()).float()[None] / 255.0  # [1, H, W, 3] in [0, 1]
        return io.NodeOutput(model, vae, ToyTextEncoder(), ToyClipVision(), image)
