"""ComfyBackend: the ``svi_core.backend.Backend`` protocol over ComfyUI's own models.

The clip loop (``svi_core.loop``) hands this backend NORMALISED latents and pixels in [-1, 1];
ComfyUI's VAE works on RAW latents and IMAGE ``[F, H, W, 3]`` in [0, 1], and its Wan model
normalises ``concat_latent_image`` itself and reads ``concat_mask`` inverted. All of those
conversions happen here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

import comfy.model_management
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import node_helpers
import torch
from comfy_extras.nodes_model_advanced import ModelSamplingSD3

from ..svi_core.backend import ClipRequest, StepCallback, unknown_extras
from ..svi_core.errors import Cancelled, SVIError
from ..svi_core.latents import denormalise, normalise
from .checks import expert_switch
from .convert import frame_to_image, image_to_pixels, official_mask_to_comfy, pixels_to_image


@contextmanager
def interruptible() -> Iterator[None]:
    """Turn ComfyUI's interrupt into ``Cancelled``, so the clip loop keeps finished clips.

    ComfyUI 0.33 checks for an interrupt in every op (VAE and CLIP vision included), not only
    between sampling steps, so every backend call goes through this.
    """
    try:
        yield
    except comfy.model_management.InterruptProcessingException:
        raise Cancelled("interrupted by the user") from None


def with_shift(model: Any, shift: float, timestep_dtype: str = "float32") -> Any:
    """A clone of ``model`` sampling with flow shift ``shift`` (what ModelSamplingSD3 does).

    ``timestep_dtype="bfloat16"``: the DiT sees its timestep rounded to bfloat16, as in the
    official Wan2.2 pipelines; the sigmas of the sampler (and the Euler steps) stay exact.
    """
    patched = ModelSamplingSD3().patch(model, shift)[0]
    if timestep_dtype == "bfloat16":
        patched.add_wrapper_with_key(
            comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "svi_bf16_timestep", _bf16_timestep
        )
    elif timestep_dtype != "float32":
        raise SVIError(f"timestep_dtype {timestep_dtype!r} must be 'float32' or 'bfloat16'")
    return patched


def _bf16_timestep(executor: Any, x: torch.Tensor, timestep: torch.Tensor, *args, **kwargs):
    """DIFFUSION_MODEL wrapper: round the DiT timestep (t = 1000 * sigma) to bfloat16."""
    return executor(x, timestep.to(torch.bfloat16).to(timestep.dtype), *args, **kwargs)


def image_condition(
    conditioning: list, cond_latent: torch.Tensor, mask: torch.Tensor, clip_vision: Any
) -> list:
    """``conditioning`` with one clip's image condition in ComfyUI's convention.

    ``cond_latent``: NORMALISED ``[1, 16, T, h, w]``; ``mask``: official ``[1, 4, T, h, w]``
    (1 = given). Sets ``concat_latent_image``: the RAW latent (the model normalises it);
    ``concat_mask``: ``1 - mask`` (0 marks a given frame); ``clip_vision_output`` when the
    clip has a CLIP-vision feature.
    """
    values: dict[str, Any] = {
        "concat_latent_image": denormalise(cond_latent.float()),
        "concat_mask": official_mask_to_comfy(mask),
    }
    if clip_vision is not None:
        values["clip_vision_output"] = clip_vision
    return node_helpers.conditioning_set_values(conditioning, values)


class ComfyExtra(Protocol):
    """The ComfyUI-side hook of one per-clip condition (``ClipRequest.extras[name]``).

    ``patch`` returns a clone of ``model`` that applies the clip's ``payload`` through
    ComfyUI's own mechanisms (model patches, wrappers, transformer options). ``null_passes``
    are the indices (ComfyUI's ``cond_or_uncond``: 0 = positive, 1 = negative, ...) of the
    guidance passes that must get the condition's null instead.
    """

    def patch(self, model: Any, payload: Any, null_passes: frozenset[int]) -> Any: ...


class ComfyBackend:
    """Encode, decode and denoise one clip with ComfyUI models.

    Args:
        model: MODEL (the only model, or the high-noise Wan2.2 expert).
        vae: ComfyUI VAE (Wan2.1 VAE).
        clip_vision: CLIP_VISION or None (Wan2.2 experts take no CLIP-vision feature).
        low_noise_model: the Wan2.2 low-noise expert, or None.
        sampler_name, scheduler: ComfyUI sampler and scheduler names (official: euler, simple).
        extras: hooks of the per-clip conditions this backend can apply, by name; a clip
            carrying another extra is refused.
    """

    def __init__(
        self,
        model: Any,
        vae: Any,
        clip_vision: Any = None,
        low_noise_model: Any = None,
        sampler_name: str = "euler",
        scheduler: str = "simple",
        extras: Mapping[str, ComfyExtra] | None = None,
    ) -> None:
        self.extras = dict(extras or {})
        self.model = model
        self.vae = vae
        self.clip_vision = clip_vision
        self.low_noise_model = low_noise_model
        self.sampler_name = sampler_name
        self.scheduler = scheduler
        self._shifted: dict[tuple[int, float, str], Any] = {}

    # ----- VAE -------------------------------------------------------------------------

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[1, 3, F, H, W]`` in [-1, 1] -> NORMALISED latent ``[1, 16, T, H/8, W/8]``."""
        with interruptible():
            raw = self.vae.encode(pixels_to_image(pixels))
        return normalise(raw.float().cpu())

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """NORMALISED latent ``[1, 16, T, h, w]`` -> pixels ``[1, 3, F, 8h, 8w]`` in [-1, 1]."""
        with interruptible():
            images = self.vae.decode(denormalise(latent.float()))
        images = images.reshape(-1, *images.shape[-3:]).float().cpu()
        return image_to_pixels(images).clamp(-1.0, 1.0)

    def encode_clip_vision(self, image: torch.Tensor) -> Any:
        """Frame ``[1, 3, H, W]`` in [-1, 1] -> ComfyUI CLIP_VISION_OUTPUT (whole frame resized
        to the encoder size, no crop), or None without a CLIP-vision model."""
        if self.clip_vision is None:
            return None
        with interruptible():
            return self.clip_vision.encode_image(frame_to_image(image), crop=False)

    # ----- sampling ----------------------------------------------------------------------

    def _shift(self, model: Any, shift: float, timestep_dtype: str) -> Any:
        key = (id(model), float(shift), timestep_dtype)
        if key not in self._shifted:
            self._shifted[key] = with_shift(model, shift, timestep_dtype)
        return self._shifted[key]

    def _patch_extras(self, model: Any, request: ClipRequest) -> Any:
        """``model`` with every extra condition of ``request`` applied (a clone if any)."""
        passes = request.guidance.passes
        for name, payload in request.extras.items():
            nulls = frozenset(i for i, p in enumerate(passes) if name in p.null)
            model = self.extras[name].patch(model, payload, nulls)
        return model

    def denoise(self, request: ClipRequest, on_step: StepCallback | None = None) -> torch.Tensor:
        """Sample one clip; returns its denoised NORMALISED latent ``[1, 16, T, h, w]``.

        Two experts are split at ``request.boundary`` like KSamplerAdvanced: the high-noise
        model runs steps ``[0, switch)`` and returns with leftover noise, the low-noise model
        continues from step ``switch`` without adding noise.
        """
        unknown_extras(request, self.extras, "ComfyUI")
        if request.lora_strengths:
            raise SVIError(
                f"clip {request.index}: per-clip LoRA strengths need the schedule's model "
                "patcher; this sampler applies the LoRAs as loaded"
            )
        if request.guidance.kind != "cfg":  # SVI-Talk's text/audio passes: nodes.guider
            from .guider import denoise_guided

            return denoise_guided(self, request, on_step)
        ts = getattr(request, "timestep_dtype", "float32")
        high = self._patch_extras(self._shift(self.model, request.shift, ts), request)
        low = None
        if self.low_noise_model is not None and request.boundary is not None:
            low = self._shift(self.low_noise_model, request.shift, ts)
            low = self._patch_extras(low, request)
        image = (request.cond_latent, request.mask, request.clip_vision)
        positive = image_condition(request.positive, *image)
        negative = image_condition(request.negative, *image)
        noise = request.noise.float()
        empty = torch.zeros_like(noise)
        steps = request.steps
        switch = steps
        if low is not None:
            sigmas = comfy.samplers.calculate_sigmas(
                high.get_model_object("model_sampling"), self.scheduler, steps
            )
            switch = expert_switch(sigmas.cpu(), request.boundary)

        def callback(offset: int) -> Callable[..., None]:
            def cb(step: int, _x0: Any, _x: Any, _total: int) -> None:
                comfy.model_management.throw_exception_if_processing_interrupted()
                if on_step is not None:
                    on_step(offset + step + 1, steps)

            return cb

        common = dict(
            steps=steps,
            cfg=request.cfg,
            sampler_name=self.sampler_name,
            scheduler=self.scheduler,
            positive=positive,
            negative=negative,
            disable_pbar=True,
            seed=request.seed,
        )
        with interruptible():
            if switch >= steps or low is None:
                out = comfy.sample.sample(
                    high, noise, latent_image=empty, callback=callback(0), **common
                )
            elif switch == 0:
                out = comfy.sample.sample(
                    low, noise, latent_image=empty, callback=callback(0), **common
                )
            else:
                mid = comfy.sample.sample(
                    high,
                    noise,
                    latent_image=empty,
                    start_step=0,
                    last_step=switch,
                    force_full_denoise=False,
                    callback=callback(0),
                    **common,
                )
                out = comfy.sample.sample(
                    low,
                    torch.zeros_like(noise),
                    latent_image=mid,
                    disable_noise=True,
                    start_step=switch,
                    last_step=steps,
                    force_full_denoise=True,
                    callback=callback(switch),
                    **common,
                )
        if out.shape != noise.shape:
            raise SVIError(
                f"ComfyUI returned a latent {tuple(out.shape)}; expected {tuple(noise.shape)}"
            )
        return normalise(out.float().cpu())
