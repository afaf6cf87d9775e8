"""Sampling with an SVI :class:`~svi_core.guidance.Guidance` other than plain CFG on ComfyUI.

:class:`SVIGuider` is a ``comfy.samplers.CFGGuider`` whose passes are the guidance's
(:attr:`Guidance.passes`): SVI-Talk's three (positive text + the clip's audio, negative text + the
clip's audio, negative text + the null audio; official ``svi_video_talk.py:455-458``). ComfyUI's
``calc_cond_batch`` runs them (batched when memory allows) with ``cond_or_uncond`` = the pass index
of every chunk, which is how the per-clip extras (``ComfyBackend._patch_extras``, e.g.
:class:`nodes.talk_parts.PassAudioPatch`) give each pass its own audio. The predictions are combined
by :meth:`Guidance.combine`, the official order of operations
(``v_uncond + text * (v_cond - v_drop_text) + audio * (v_drop_text - v_uncond)``).

Core's ``DualCFGGuider`` computes the same combination with positive = cond, middle = drop-text,
negative = uncond, cfg1 = text, cfg2 = audio, but adds the two terms in the other order (a rounding
difference) and drops the unconditional pass when cfg2 is 1; this guider runs every pass the
official code runs. The combination is affine with weights summing to 1, so combining ComfyUI's
denoised predictions equals combining the velocities, as ComfyUI's own CFG does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import comfy.model_management
import comfy.samplers
import node_helpers
import torch

from ..svi_core.backend import ClipRequest, StepCallback
from ..svi_core.errors import SVIError
from ..svi_core.guidance import Guidance
from ..svi_core.latents import normalise


def _pass_key(i: int, n: int) -> str:
    return "positive" if i == 0 else ("negative" if i == n - 1 else f"middle_{i}")


class SVIGuider(comfy.samplers.CFGGuider):
    """Runs ``guidance``'s passes through ComfyUI and combines them the official way.

    Args:
        model_patcher: the MODEL (already patched with the clip's extras).
        guidance: the clip's :class:`Guidance`.
        positive, negative: CONDITIONING of the positive and negative prompt (with the clip's
            image condition); each pass uses one of them.
    """

    def __init__(self, model_patcher: Any, guidance: Guidance, positive: list, negative: list):
        super().__init__(model_patcher)
        self.guidance = guidance
        passes = guidance.passes
        conds = {}
        for i, p in enumerate(passes):
            c = negative if p.negative_text else positive
            if p.negative_text:
                c = node_helpers.conditioning_set_values(c, {"prompt_type": "negative"})
            conds[_pass_key(i, len(passes))] = c
        self.inner_set_conds(conds)

    def predict_noise(self, x: torch.Tensor, timestep: Any, model_options={}, seed=None):  # noqa: B006
        n = len(self.guidance.passes)
        conds = [self.conds.get(_pass_key(i, n)) for i in range(n)]
        out = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, model_options)
        return self.guidance.combine(out).to(x.dtype)


def sample_guided(
    model: Any,
    request: ClipRequest,
    positive: list,
    negative: list,
    sampler_name: str,
    scheduler: str,
    callback: Callable[..., None],
) -> torch.Tensor:
    """One clip sampled with :class:`SVIGuider` on ``model`` from ``request.noise`` (the empty
    latent, full denoise, ComfyUI's sigmas for ``scheduler``); returns the RAW latent."""
    noise = request.noise.float()
    ks = comfy.samplers.KSampler(
        model,
        steps=request.steps,
        device=model.load_device,
        sampler=sampler_name,
        scheduler=scheduler,
        denoise=1.0,
        model_options=model.model_options,
    )
    guider = SVIGuider(model, request.guidance, positive, negative)
    out = guider.sample(
        noise,
        torch.zeros_like(noise),
        comfy.samplers.sampler_object(sampler_name),
        ks.sigmas,
        callback=callback,
        disable_pbar=True,
        seed=request.seed,
    )
    return out.to(comfy.model_management.intermediate_device()).float()


def denoise_guided(
    backend: Any, request: ClipRequest, on_step: StepCallback | None
) -> torch.Tensor:
    """``ComfyBackend.denoise`` for guidance kinds other than ``cfg`` (SVI-Talk's text/audio);
    returns the denoised NORMALISED latent. One model only (the Wan2.1 modes)."""
    from .backend import image_condition, interruptible

    if backend.low_noise_model is not None and request.boundary is not None:
        raise SVIError(
            f"{request.guidance.describe()} guidance runs one Wan2.1 model; disconnect "
            "low_noise_model"
        )
    ts = getattr(request, "timestep_dtype", "float32")
    model = backend._patch_extras(backend._shift(backend.model, request.shift, ts), request)
    image = (request.cond_latent, request.mask, request.clip_vision)
    positive = image_condition(request.positive, *image)
    negative = image_condition(request.negative, *image)
    steps = request.steps

    def callback(step: int, _x0: Any, _x: Any, _total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if on_step is not None:
            on_step(step + 1, steps)

    with interruptible():
        out = sample_guided(
            model, request, positive, negative, backend.sampler_name, backend.scheduler, callback
        )
    if out.shape != request.noise.shape:
        raise SVIError(
            f"ComfyUI returned a latent {tuple(out.shape)}; expected {tuple(request.noise.shape)}"
        )
    return normalise(out.cpu())
