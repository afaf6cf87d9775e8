"""SVI-Dance on ComfyUI's own Wan model: add the pose tokens after its patch embedding.

ComfyUI core has no UniAnimate / SVI-Dance support, and this pack never copies ComfyUI's DiT.
Instead a ``WrappersMP.DIFFUSION_MODEL`` wrapper (the mechanism ComfyUI offers around
``WanModel.forward``; present in 0.3.64 and 0.33) is added to a clone of the MODEL. For the
duration of one wrapped forward it registers a forward hook on ``WanModel.patch_embedding``
that adds the clip's pose tokens to the conv output, then removes the hook. That is exactly
where the official pipeline adds them (``svi_video_dance.py:101-104``: after the patch
embedding, before the blocks). Both the conditional and the unconditional batch entries get
the tokens (the official ``cond_wo_pose=True``); passes listed in ``null_passes`` (ComfyUI's
``cond_or_uncond`` indices: 0 positive, 1 negative) run without them, row by row.

The tokens are computed once per clip, lazily, on the device the DiT runs on (the embedding
is about a TFLOP for an 81-frame 832x480 clip: never per step), rounded to bfloat16 like the
official pipeline and kept in bfloat16 (exact, about 335 MB for Wan2.1 14B at 832x480).
ComfyUI runs ``patch_embedding(x.float()).to(x.dtype)``, so the add happens in float32 before
that cast (the official adds in bf16 after it: a rounding-level difference).
"""

from __future__ import annotations

from typing import Any

import comfy.patcher_extension
import torch

from ..svi_core.errors import SVIError
from ..svi_core.log import logger
from ..svi_core.pose import PoseEmbedding, pose_tokens, tokens_match
from ..svi_core.pose_condition import rows_with_pose

POSE_WRAPPER_KEY = "svi_dance_pose"


class PoseTokenWrapper:
    """``DIFFUSION_MODEL`` wrapper that adds one clip's pose tokens to the patch tokens.

    Args:
        embedding: the float32 pose embedding (``svi_core.pose.load_dance_file(...).pose``).
        window: the clip's pose frames, uint8 ``[F, H, W, 3]`` at the video size
            (``svi_core.pose.PoseSequence.window``).
        null_passes: guidance passes (``cond_or_uncond`` values) that run without the pose.
    """

    def __init__(
        self,
        embedding: PoseEmbedding,
        window: torch.Tensor,
        null_passes: frozenset[int] = frozenset(),
    ) -> None:
        self.embedding = embedding
        self.window = window
        self.null_passes = frozenset(null_passes)
        self._tokens: torch.Tensor | None = None

    def tokens(self, device: torch.device) -> torch.Tensor:
        """The clip's tokens ``[1, dim, T, H/16, W/16]`` (bfloat16) on ``device``, computed once."""
        if self._tokens is None or self._tokens.device != device:
            self._tokens = pose_tokens(
                self.embedding, self.window, device=device, dtype=torch.bfloat16
            )
            self.embedding.to("cpu")
        return self._tokens

    def __call__(self, executor: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        dit = executor.class_obj
        conv = dit.patch_embedding
        tokens = self.tokens(x.device)
        grid = (x.shape[2], x.shape[3] // 2, x.shape[4] // 2)
        if not tokens_match(tokens, grid):
            raise SVIError(
                f"the pose window gives tokens for a {tuple(tokens.shape[2:])} patch grid but "
                f"this clip's latent is {tuple(x.shape[2:])} (grid {grid}); the pose frames must "
                "be fitted to the video size and the clip's frame count"
            )

        options = args[4] if len(args) > 4 else kwargs.get("transformer_options")
        rows = rows_with_pose((options or {}).get("cond_or_uncond"), x.shape[0], self.null_passes)
        if not any(rows):
            return executor(x, *args, **kwargs)

        def add(_module: torch.nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
            # only the main stream: other patch-embedded inputs (e.g. 0.33's context_latents)
            # have other grids and stay untouched
            if out.ndim == 5 and tokens_match(tokens, out.shape[2:]):
                delta = tokens.to(device=out.device, dtype=out.dtype)
                if all(rows):
                    return out + delta
                if out.shape[0] != len(rows):
                    raise SVIError(
                        f"pose rows {rows} do not match a patch-embedded batch of {out.shape[0]}"
                    )
                keep = torch.tensor(rows, device=out.device).view(-1, 1, 1, 1, 1)
                return torch.where(keep, out + delta, out)
            return out

        handle = conv.register_forward_hook(add)
        try:
            return executor(x, *args, **kwargs)
        finally:
            handle.remove()


def dit_width(model: Any) -> int:
    """The width of a ComfyUI Wan MODEL's DiT (its patch embedding's output channels)."""
    dm = getattr(getattr(model, "model", None), "diffusion_model", None)
    conv = getattr(dm, "patch_embedding", None)
    if conv is None or not hasattr(conv, "out_channels"):
        raise SVIError(
            "SVI-Dance needs a Wan DiT MODEL (Wan2.1 I2V 14B); this MODEL has no Wan patch "
            "embedding"
        )
    return int(conv.out_channels)


def with_pose_tokens(
    model: Any,
    embedding: PoseEmbedding,
    window: torch.Tensor,
    null_passes: frozenset[int] = frozenset(),
) -> Any:
    """A clone of ``model`` whose DiT adds the pose tokens of ``window`` after its patch embedding.

    Args:
        model: a ComfyUI MODEL (ModelPatcher) holding a Wan DiT.
        embedding: the pose embedding (width must equal the DiT width).
        window: one clip's pose frames uint8 ``[F, H, W, 3]`` at the video size.
        null_passes: guidance passes (0 positive, 1 negative) that run without the pose (none
            in the official SVI-Dance run).

    Raises:
        SVIError: the embedding was made for another DiT width (e.g. the 14B file on a 1.3B
            model).
    """
    width = dit_width(model)
    if embedding.dim != width:
        raise SVIError(
            f"the SVI-Dance pose embedding is {embedding.dim} wide but this Wan DiT is {width} "
            "wide; svi-dance.safetensors is for Wan2.1-I2V-14B (5120)"
        )
    patched = model.clone()
    patched.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
        POSE_WRAPPER_KEY,
        PoseTokenWrapper(embedding, window, null_passes),
    )
    logger.debug("pose tokens wrapper added (%d pose frames)", int(window.shape[0]))
    return patched
