"""Export the trained LoRA in the project's canonical form (DESIGN §5).

Keys: ``diffusion_model.blocks.{i}.<official module>.lora_A.weight`` / ``.lora_B.weight`` plus
``.alpha`` for EVERY layer. The alpha is always written (even when alpha == rank, as in the
official r = alpha = 128 runs, where it is a no-op): the file then states its own scale
``alpha / rank`` and stays correct for any rank/alpha choice; ComfyUI and this project apply
``strength * alpha / rank`` when an alpha exists. Written through
:func:`svi_core.lora.save_lora_canonical`, so it loads in stock ComfyUI and in svi_core.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from svi_core.errors import SVIError
from svi_core.wan_keys import diffusers_to_official, official_to_diffusers

_PEFT_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")
CANONICAL_PREFIX = "diffusion_model."


def diffusers_lora_targets(official_targets: tuple[str, ...], num_blocks: int) -> list[str]:
    """Full diffusers module names for official per-block targets (``self_attn.q`` ->
    ``blocks.{i}.attn1.to_q`` for every block i)."""
    return [
        official_to_diffusers(f"blocks.{i}.{t}")
        for i in range(num_blocks)
        for t in official_targets
    ]


def lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trained tensors of ``model``: the peft LoRA (names as peft stores them, e.g.
    ``blocks.0.attn1.to_q.lora_A.default.weight``) and any other trainable parameter (SVI-Dance:
    ``svi_pose_embedding.*``), detached on the CPU (FSDP shards are gathered to full tensors).
    What a checkpoint saves and a resume loads back."""
    out = {}
    for name, p in model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name or p.requires_grad:
            t = p.detach()
            if hasattr(t, "full_tensor"):
                t = t.full_tensor()
            out[name] = t.cpu()
    return out


def canonical_lora_tensors(
    peft_state: dict[str, torch.Tensor], alpha: float, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """peft names -> canonical ``diffusion_model.<official module>.lora_{A,B}.weight`` + alpha."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in peft_state.items():
        m = _PEFT_KEY.match(name)
        if m is None:
            raise SVIError(f"unexpected LoRA parameter name {name!r}")
        module = m.group("module").removeprefix("module.").removeprefix("_orig_mod.")
        official = diffusers_to_official(module)
        base = CANONICAL_PREFIX + official
        out[f"{base}.lora_{m.group('part')}.weight"] = tensor.to(dtype).contiguous()
        out[f"{base}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return out


def export_lora(
    peft_state: dict[str, torch.Tensor],
    path: str | Path,
    alpha: float,
    dtype: str = "bf16",
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``peft_state`` (see :func:`lora_state_dict`) as a canonical LoRA file."""
    from svi_core.lora import normalise_lora_keys, save_lora_canonical

    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    tensors = canonical_lora_tensors(peft_state, alpha, torch_dtype)
    lora = normalise_lora_keys(tensors, str(path))
    return save_lora_canonical(lora, path, metadata=metadata)
