"""SVI Toy Models: the tiny toy Wan models shipped in ``svi_core/assets`` as ComfyUI objects.

For trying the pack on a CPU without downloading anything: a Wan2.1 I2V DiT
of width 128 (MODEL, loaded by ComfyUI's own diffusion-model loader), a Wan2.1 VAE of base
width 16 (VAE: ComfyUI's own ``comfy.sd.VAE`` around its own ``WanVAE`` class, built at the toy
width), and the fixed conditioning the toy DiT was trained with in place of UMT5 and CLIP
vision H (every prompt -> zeros ``[1, 512, 4096]``, every image -> zeros ``[B, 257, 1280]``).
The pictures are blocky (8x8-pixel cells); the toy exists to show the pipeline working.
"""

from __future__ import annotations

import math

import comfy.clip_vision
import comfy.ldm.wan.vae
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.utils
import torch
from comfy_api.latest import io

from ..svi_core.errors import SVIError
from ..svi_core.toy.models import (
    IMAGE_SHAPE,
    TEXT_SHAPE,
    TOY_DIT,
    TOY_HEIGHT,
    TOY_VAE,
    TOY_WIDTH,
)
from ..svi_core.toy.world import WorldConfig, toy_first_frame


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


WAN21_VAE_CONFIG = {
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
}
# ComfyUI reads the Wan2.1 VAE width from the weights since 0.3.76 (comfy/sd.py, "Wan 2.1 VAE"
# branch: dim = sd["decoder.head.0.gamma"].shape[0]); older releases always build width 96.
READS_WAN_VAE_WIDTH = (0, 3, 76)


def comfy_version() -> tuple[int, ...] | None:
    """The running ComfyUI's version as a tuple of ints (None when it cannot be read)."""
    try:
        from comfyui_version import __version__
    except ImportError:
        return None
    try:
        return tuple(int(part) for part in str(__version__).split(".")[:3])
    except ValueError:
        return None


class NarrowWanVAE(comfy.sd.VAE):
    """A ``comfy.sd.VAE`` around ComfyUI's own Wan2.1 ``WanVAE`` built at the width of ``sd``,
    for ComfyUI releases whose VAE loader always builds width 96 (before 0.3.76).

    ``comfy.sd.VAE.__init__`` is not called (it would build and fill a width-96 model); the
    attributes its Wan2.1 branch sets are set here instead, as in ComfyUI 0.3.64
    (comfy/sd.py:275-295 defaults, 489-500 Wan2.1 VAE, 581-591 device and patcher). Nothing in
    ComfyUI is replaced, so every other VAE in the process loads as usual.
    """

    def __init__(self, sd: dict[str, torch.Tensor], width: int) -> None:
        mm = comfy.model_management
        self.latent_channels, self.latent_dim, self.output_channels = 16, 3, 3
        self.downscale_ratio = (lambda a: max(0, math.floor((a + 3) / 4)), 8, 8)
        self.upscale_ratio = (lambda a: max(0, a * 4 - 3), 8, 8)
        self.downscale_index_formula = self.upscale_index_formula = (4, 8, 8)
        self.memory_used_encode = lambda shape, dtype: (
            6000 * shape[3] * shape[4] * mm.dtype_size(dtype)
        )
        self.memory_used_decode = lambda shape, dtype: (
            7000 * shape[3] * shape[4] * 64 * mm.dtype_size(dtype)
        )
        self.process_input = lambda image: image * 2.0 - 1.0
        self.process_output = lambda image: torch.clamp((image + 1.0) / 2.0, 0.0, 1.0)
        self.working_dtypes = [torch.bfloat16, torch.float16, torch.float32]
        self.disable_offload = self.not_video = False
        self.extra_1d_channel = None
        self.crop_input = True
        model = comfy.ldm.wan.vae.WanVAE(dim=width, **WAN21_VAE_CONFIG)
        model.load_state_dict(sd, strict=True)
        self.first_stage_model = model.train(False)
        self.device = mm.vae_device()
        self.vae_dtype = mm.vae_dtype(self.device, self.working_dtypes)
        self.first_stage_model.to(self.vae_dtype)
        self.output_device = mm.intermediate_device()
        self.patcher = comfy.model_patcher.ModelPatcher(
            self.first_stage_model, load_device=self.device, offload_device=mm.vae_offload_device()
        )


def toy_vae(sd: dict[str, torch.Tensor]) -> comfy.sd.VAE:
    """A ``comfy.sd.VAE`` holding ComfyUI's Wan2.1 ``WanVAE`` at the width of ``sd``
    (``decoder.head.0.gamma`` has one entry per base channel): ComfyUI's own loader where it
    reads the width from the weights, else :class:`NarrowWanVAE`. Never patches ComfyUI."""
    width = int(sd["decoder.head.0.gamma"].shape[0])
    version = comfy_version()
    if version is None or version >= READS_WAN_VAE_WIDTH:
        vae = comfy.sd.VAE(sd=sd)
    else:
        vae = NarrowWanVAE(sd, width)
    built = int(vae.first_stage_model.decoder.head[0].gamma.shape[0])
    if built != width:
        raise SVIError(
            f"SVI Toy Models: ComfyUI built its Wan VAE at width {built}, the toy VAE file has "
            f"width {width}; this ComfyUI release is not supported by the toy demo (tested with "
            "0.3.64 and 0.33)"
        )
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
