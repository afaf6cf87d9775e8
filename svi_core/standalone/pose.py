"""SVI-Dance on diffusers' ``WanTransformer3DModel``: add the pose tokens to the patch tokens.

The official pipeline adds the pose embedding's output to the DiT's tokens right after the
patch embedding (conv + bias) and before RoPE, the time modulation and the blocks
(``diffsynth/pipelines/svi_video_dance.py:101-104``; the training forward
``diffsynth/models/wan_video_dit.py:511,524-525`` does the same). diffusers' Wan forward runs
``self.patch_embedding(hidden_states)`` and then ``flatten(2).transpose(1, 2)``: the same token
order as DiffSynth's ``rearrange('b c f h w -> b (f h w) c')``, so adding ``[1, dim, T, h, w]``
to the conv output IS the official token add. A forward hook on ``patch_embedding`` does that
without a copy of diffusers' model code.

Both the conditional and the unconditional pass get the pose (the official
``cond_wo_pose=True``, test_svi_dance.py:259; svi_video_dance.py:423-430): the tokens
broadcast over the CFG batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch

from ..errors import SVIError
from ..pose import PoseEmbedding, pose_tokens, tokens_match
from ..pose_condition import window_frames


def _patch_embedding(transformer: torch.nn.Module) -> torch.nn.Module:
    conv = getattr(transformer, "patch_embedding", None)
    if not isinstance(conv, torch.nn.Conv3d):
        raise SVIError(
            f"{type(transformer).__name__} has no Conv3d 'patch_embedding'; SVI-Dance needs a "
            "Wan DiT (diffusers WanTransformer3DModel)"
        )
    return conv


def check_pose_width(transformer: torch.nn.Module, dim: int, source: str) -> None:
    """Refuse a pose embedding of another width than the DiT (``source`` names the file)."""
    width = int(_patch_embedding(transformer).out_channels)
    if width != dim:
        raise SVIError(
            f"'{source}': the pose embedding is {dim} wide but this DiT is {width} wide; use "
            "the SVI-Dance file made for this model (svi-dance.safetensors = Wan2.1-I2V-14B)"
        )


@contextmanager
def pose_tokens_added(
    transformer: torch.nn.Module, tokens: torch.Tensor, rows: Sequence[bool] | None = None
) -> Iterator[None]:
    """While active, every forward of ``transformer`` adds ``tokens`` to its patch tokens.

    Args:
        transformer: a diffusers ``WanTransformer3DModel`` (one expert).
        tokens: ``[1, dim, T, h, w]`` (``svi_core.pose.pose_tokens``) for the clip being
            sampled; broadcast over the batch (cond + uncond). Cast to the conv output's
            dtype and device at each call (bf16 + bf16 like the official pipeline when the DiT
            is bf16).
        rows: per batch row, whether it gets the tokens (a guidance pass without the pose gets
            none, as the official ``cond_wo_pose=False`` unconditional pass); None = every row.

    Raises (inside the forward): SVIError when the DiT's patch grid differs from the tokens'
    (a pose window for another size or frame count).
    """
    conv = _patch_embedding(transformer)
    if tokens.ndim != 5 or tokens.shape[0] != 1 or tokens.shape[1] != conv.out_channels:
        raise SVIError(
            f"pose tokens {tuple(tokens.shape)} do not fit this DiT (patch embedding "
            f"{conv.out_channels} wide); expected [1, {conv.out_channels}, T, h, w]"
        )

    def hook(_module: torch.nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
        if not tokens_match(tokens, output.shape[2:]):
            raise SVIError(
                f"pose tokens of grid {tuple(tokens.shape[2:])} do not match the DiT's patch "
                f"grid {tuple(output.shape[2:])}; the pose window was made for another size "
                "or frame count"
            )
        add = tokens.to(device=output.device, dtype=output.dtype)
        if rows is not None:
            if len(rows) != output.shape[0]:
                raise SVIError(
                    f"pose rows {list(rows)} do not match the DiT batch of {output.shape[0]}"
                )
            keep = torch.tensor(list(rows), device=output.device)
            return torch.where(keep.view(-1, 1, 1, 1, 1), output + add, output)
        return output + add

    handle = conv.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class PoseHook:
    """The diffusers backend's ``"pose"`` hook (:class:`~svi_core.standalone.backend.DiffusersExtra`).

    :meth:`prepare` runs the pose embedding once per clip on the clip's window (a
    :class:`~svi_core.pose_condition.PoseWindow`); :meth:`apply` adds the tokens to the patch
    tokens of every forward of that clip, in the rows of the passes that keep the pose.

    Args:
        embedding: the float32 pose embedding (``svi_core.pose.load_dance_file(...).pose``).
        source: the file it came from (for messages).
    """

    def __init__(self, embedding: PoseEmbedding, source: str = "the SVI-Dance file") -> None:
        self.embedding = embedding
        self.source = source

    def check(self, transformer: torch.nn.Module) -> None:
        """Refuse a DiT of another width than the embedding (before any sampling)."""
        check_pose_width(transformer, self.embedding.dim, self.source)

    def prepare(self, payload: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The clip's tokens ``[1, dim, T, H/16, W/16]`` in ``dtype`` on ``device``."""
        return pose_tokens(self.embedding, window_frames(payload), device=device, dtype=dtype)

    def apply(
        self, prepared: torch.Tensor, model: torch.nn.Module, active: Sequence[bool]
    ) -> AbstractContextManager[None]:
        if not any(active):
            return nullcontext()
        return pose_tokens_added(model, prepared, None if all(active) else list(active))
