"""The standalone :class:`~svi_core.backend.Backend`: Wan models as diffusers modules.

``DiffusersBackend`` takes already constructed modules (so tests can build tiny random ones):
one ``WanTransformer3DModel`` (Wan2.1) or two experts (Wan2.2 A14B: high-noise, low-noise),
an ``AutoencoderKLWan``, a text encoder callable (UMT5 or precomputed embeddings) and,
for Wan2.1 I2V, a CLIP-vision callable. Sampling is :func:`svi_core.sampler.sample_flow`.

Spaces: the loop hands NORMALISED latents; the VAE works in RAW space, converted here with
:mod:`svi_core.latents`. Text context ``[1, 512, text_dim]``; CLIP feature ``[1, 257, dim]``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any, Protocol

import torch

from ..backend import ClipRequest, StepCallback, unknown_extras
from ..errors import SVIError
from ..guidance import GuidancePass
from ..latents import denormalise, normalise
from ..log import logger
from ..sampler import sample_flow
from .models import vae_decode, vae_encode

TextEncoderFn = Callable[[str], torch.Tensor]
"""``prompt -> [1, 512, text_dim]`` text context (padded positions zero)."""

ImageEncoderFn = Callable[[torch.Tensor], torch.Tensor]
"""``frame [1, 3, H, W] in [-1, 1] -> [1, 257, image_dim]`` CLIP-vision feature."""


class DiffusersExtra(Protocol):
    """The diffusers-side hook of one per-clip condition (``ClipRequest.extras[name]``).

    :meth:`prepare` runs once per clip (e.g. project the clip's audio window); :meth:`apply`
    wraps every DiT forward of that clip. ``active[i]`` says whether batch row i gets the
    condition (False: its null, e.g. the unconditional pass of SVI-Talk's guidance).
    """

    def prepare(self, payload: Any, device: torch.device, dtype: torch.dtype) -> Any: ...

    def apply(
        self, prepared: Any, model: torch.nn.Module, active: Sequence[bool]
    ) -> AbstractContextManager[None]: ...


def _has_image_embedder(model: torch.nn.Module) -> bool:
    emb = getattr(getattr(model, "condition_embedder", None), "image_embedder", None)
    return emb is not None


class DiffusersBackend:
    """A Backend over diffusers Wan modules.

    Args:
        transformer: ``WanTransformer3DModel``: the only DiT (Wan2.1) or the high-noise expert.
        vae: ``AutoencoderKLWan`` (float32 recommended: the conditioning encode is float32).
        low_noise_transformer: the Wan2.2 low-noise expert (used below the request's boundary).
        text_encoder: prompt -> context; prompts may also be given as tensors directly.
        image_encoder: CLIP vision for Wan2.1 I2V DiTs (``img_emb``); None for Wan2.2.
        device, dtype: where and in which dtype the DiT runs (latents stay float32).
        batch_cfg: run the guidance passes of a step as one batch.
        extras: hooks of the per-clip conditions this backend can apply, by name (e.g.
            ``{"audio": MultiTalkAudio(...)}``); a clip carrying another extra is refused.
    """

    def __init__(
        self,
        transformer: torch.nn.Module,
        vae: torch.nn.Module,
        *,
        low_noise_transformer: torch.nn.Module | None = None,
        text_encoder: TextEncoderFn | None = None,
        image_encoder: ImageEncoderFn | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_cfg: bool = True,
        extras: Mapping[str, DiffusersExtra] | None = None,
    ) -> None:
        self.extras = dict(extras or {})
        self.experts = [transformer] + ([low_noise_transformer] if low_noise_transformer else [])
        self.vae = vae
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_cfg = batch_cfg
        self.needs_clip_vision = _has_image_embedder(transformer)
        self._text_cache: dict[str, torch.Tensor] = {}
        self._warned_one_expert = False

    # ----- Backend protocol ---------------------------------------------------------------

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[1, 3, F, H, W]`` in [-1, 1] -> NORMALISED latent (one causal encode)."""
        return normalise(vae_encode(self.vae, pixels)).cpu()

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """NORMALISED latent -> pixels ``[1, 3, 4(T-1)+1, 8h, 8w]`` in [-1, 1] (clamped)."""
        return vae_decode(self.vae, denormalise(latent.float())).cpu()

    @torch.no_grad()
    def encode_clip_vision(self, image: torch.Tensor) -> Any:
        """Frame ``[1, 3, H, W]`` in [-1, 1] -> ``[1, 257, image_dim]``; None for Wan2.2 DiTs."""
        if not self.needs_clip_vision:
            return None
        if self.image_encoder is None:
            raise SVIError(
                "this DiT is a Wan2.1 I2V model (it has img_emb) and needs a CLIP-vision "
                "encoder; pass --clip-vision (clip_vision_h.safetensors)"
            )
        return self.image_encoder(image).float().cpu()

    @torch.no_grad()
    def denoise(self, request: ClipRequest, on_step: StepCallback | None = None) -> torch.Tensor:
        """Sample one clip; returns the denoised NORMALISED latent ``[1, 16, T, h, w]`` float32."""
        if request.clip_vision is None and self.needs_clip_vision:
            raise SVIError(
                "this DiT has an image embedding (Wan2.1 I2V) but the mode gave no CLIP-vision "
                "feature; use a Wan2.1 mode (shot/film/tom/v2) with this model"
            )
        if request.clip_vision is not None and not self.needs_clip_vision:
            raise SVIError(
                "the mode uses CLIP vision but this DiT has no image embedding (a Wan2.2 "
                "expert?); use mode v2_pro or v2_w22 with Wan2.2 models"
            )
        if request.boundary is not None and len(self.experts) == 1 and not self._warned_one_expert:
            logger.warning(
                "mode switches experts at boundary %.3f but only one DiT was given; it runs "
                "every step (pass the low-noise expert for Wan2.2 A14B)",
                request.boundary,
            )
            self._warned_one_expert = True
        unknown_extras(request, self.extras, "diffusers")
        dev, dt = self.device, self.dtype
        y = torch.cat([request.mask.float(), request.cond_latent.float()], dim=1).to(dev, dt)
        passes = request.guidance.passes
        texts = {False: self._context(request.positive)}
        if any(p.negative_text for p in passes):
            texts[True] = self._context(request.negative)
        img = None if request.clip_vision is None else request.clip_vision.to(dev, dt)
        prepared = {
            name: self.extras[name].prepare(payload, dev, dt)
            for name, payload in request.extras.items()
        }

        def run(model: torch.nn.Module, x: torch.Tensor, t: float, group: Sequence[GuidancePass]):
            """One forward over the passes of ``group`` as one batch."""
            n = len(group)
            xin = torch.cat([x.to(dev, dt), y], dim=1)
            ctx = torch.cat([texts[p.negative_text] for p in group])
            image = None if img is None else torch.cat([img] * n)
            with ExitStack() as stack:
                for name, payload in prepared.items():
                    active = [name not in p.null for p in group]
                    stack.enter_context(self.extras[name].apply(payload, model, active))
                out = self._forward(model, torch.cat([xin] * n), t, ctx, image)
            return list(out.chunk(n))

        def velocity(x: torch.Tensor, t: float, expert: int, group: Sequence[GuidancePass]):
            model = self.experts[min(expert, len(self.experts) - 1)]
            if self.batch_cfg:
                return run(model, x, t, group)
            return [run(model, x, t, [p])[0] for p in group]

        out = sample_flow(
            velocity,
            request.noise.to(dev),  # x stays on the DiT's device during sampling
            steps=request.steps,
            guidance=request.guidance,
            shift=request.shift,
            boundary=request.boundary,
            on_step=on_step,
            timestep_dtype=request.timestep_dtype,
        )
        return out.float().cpu()

    def precompute_text(self, prompts: Sequence[str], release_encoder: bool = True) -> None:
        """Encode every prompt now (cached on the CPU); then drop the text encoder when
        ``release_encoder`` so its memory (UMT5-XXL: ~11 GB in bf16) is freed for the DiT."""
        for p in dict.fromkeys(prompts):
            self._context(p)
        if release_encoder:
            self.text_encoder = None

    # ----- helpers ------------------------------------------------------------------------

    def _forward(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        t: float,
        context: torch.Tensor,
        image: torch.Tensor | None,
    ) -> torch.Tensor:
        ts = torch.full((x.shape[0],), t, dtype=torch.float32, device=self.device)
        out = model(
            hidden_states=x,
            timestep=ts,
            encoder_hidden_states=context,
            encoder_hidden_states_image=image,
            return_dict=False,
        )[0]
        return out.float()

    def _context(self, prompt: Any) -> torch.Tensor:
        if isinstance(prompt, torch.Tensor):
            ctx = prompt
        elif isinstance(prompt, str):
            if prompt not in self._text_cache:
                if self.text_encoder is None:
                    raise SVIError(
                        "prompts are text but no text encoder was given; pass --text-encoder "
                        "and --tokenizer (or precomputed embeddings)"
                    )
                self._text_cache[prompt] = self.text_encoder(prompt).float().cpu()
            ctx = self._text_cache[prompt]
        else:
            raise SVIError(
                f"unsupported prompt item {type(prompt).__name__}; expected str or tensor"
            )
        if ctx.ndim == 2:
            ctx = ctx.unsqueeze(0)
        return ctx.to(self.device, self.dtype)


def text_embedding_key(prompt: str) -> str:
    """Key of a prompt in a text-embeddings file: the SHA-256 hex digest of its UTF-8 text."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def save_text_embeddings(path: str | Path, contexts: Mapping[str, torch.Tensor]) -> Path:
    """Write precomputed contexts ``{prompt: [1, L, text_dim]}`` for ``--text-embeddings``."""
    from safetensors.torch import save_file

    tensors = {
        text_embedding_key(p): c.detach().float().cpu().contiguous() for p, c in contexts.items()
    }
    save_file(tensors, str(path))
    return Path(path)


def embeddings_text_encoder(path: str | Path) -> TextEncoderFn:
    """A text encoder that looks prompts up in a file written by :func:`save_text_embeddings`."""
    from safetensors.torch import load_file

    from ..checkpoints import check_safetensors_header

    check_safetensors_header(path, "text embeddings file")
    try:
        table = load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError
        raise SVIError(
            f"text embeddings file {path} cannot be read ({type(e).__name__}: {e}); write it "
            "with save_text_embeddings"
        ) from None

    def lookup(prompt: str) -> torch.Tensor:
        key = text_embedding_key(prompt)
        if key not in table:
            raise SVIError(
                f"text embeddings file {path} has no entry for the prompt {prompt[:60]!r}; "
                "precompute it with save_text_embeddings or use --text-encoder"
            )
        return table[key]

    return lookup
