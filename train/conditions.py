"""What a preset adds to the plain ERFT loop: the per-step condition of talk and dance.

:func:`family_for` gives the loop one :class:`ConditionFamily` per config: :class:`PlainFamily`
for shot / film (no extra condition), :class:`train.talk.TalkFamily`,
:class:`train.dance.DanceFamily`. The loop calls, in this order:

1. ``check(config, transformer)`` when training starts (files the preset needs, before any long work);
2. ``list_items(config)``: the dataset's videos (and their audio / pose files);
3. ``attach(model, config)`` after the LoRA is injected: frozen or trainable modules registered
   on the DiT, with a forward pre-hook that pops the family's keyword argument (so the extra
   computation runs inside the DiT's forward: DDP sees it, gradient checkpointing recomputes it);
4. ``init_weights(model, config)``: ``init_lora`` (the official ``--pretrained_lora_path``);
5. ``check_sample(model, sample)`` on the first cached sample (sizes fit the model);
6. per step, ``step_condition(sample, config, rng)``: the forward keyword arguments and the
   condition dropout of that step (a :class:`StepCondition`);
7. ``export(state, config, metadata)``: the file the inference side loads.

The dropout draws come from their own RNG (:func:`condition_rng`), so shot / film steps draw
exactly what they drew before these presets existed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from svi_core.errors import SVIError
from svi_core.log import logger

from .config import TrainConfig
from .data import VideoItem, list_videos


@dataclass(frozen=True)
class StepCondition:
    """One step's extra condition.

    kwargs: keyword arguments for the DiT forward, popped by the family's pre-hook
        (``svi_audio`` / ``svi_pose``), tensors on the step's device.
    null_image: zero y (all 20 channels) and the CLIP feature, and inject no condition error
        (official dance ``p < 0.1``: ``y_set_null``, train_svi_dance.py:1049-1063, 1111).
    dropped: the family's own condition was dropped this step (audio / pose zeroed).
    """

    kwargs: Mapping[str, Any] = field(default_factory=dict)
    null_image: bool = False
    dropped: bool = False


def condition_rng(seed: int, rank: int, step: int, micro: int = 0) -> random.Random:
    """The RNG of a step's condition dropout (separate from the ERFT draws of the step)."""
    digest = hashlib.sha256(f"condition|{seed}|{rank}|{step}|{micro}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


class ConditionFamily:
    """The no-condition family (shot, film); talk and dance override what they add."""

    name = "plain"

    def check(self, config: TrainConfig, transformer: torch.nn.Module | None = None) -> None:
        """Refuse missing / unreadable files the preset needs (before any long work);
        ``transformer``: the DiT when handed in (:class:`train.loop.TrainModels`)."""
        if config.init_lora and not Path(config.init_lora).is_file():
            raise SVIError(
                f"init_lora '{config.init_lora}' does not exist; pass a LoRA file "
                "(.safetensors / .ckpt of tensors) or leave it empty"
            )

    def list_items(self, config: TrainConfig) -> list[VideoItem]:
        return list_videos(
            config.dataset, config.default_caption, warn_uncaptioned=not config.fixed_caption
        )

    def attach(self, model: torch.nn.Module, config: TrainConfig) -> None:
        """Register the family's modules on the DiT (after the LoRA is injected)."""

    def init_weights(self, model: torch.nn.Module, config: TrainConfig) -> None:
        if config.init_lora:
            load_init_lora(model, config)

    def check_sample(self, model: torch.nn.Module, sample: Any) -> None:
        """Refuse a cached sample that does not fit the model (first sample only)."""

    def step_condition(
        self, sample: Any, config: TrainConfig, rng: random.Random, device: torch.device
    ) -> StepCondition:
        return StepCondition(null_image=chance(rng, config.image_dropout))

    def export(
        self, state: Mapping[str, torch.Tensor], config: TrainConfig, metadata: dict[str, str]
    ) -> Path:
        """Write the trained file from ``state`` (:func:`train.export.lora_state_dict`; rank 0
        only); returns its path."""
        from .export import export_lora

        return export_lora(
            lora_only(state),
            config.export_file,
            alpha=config.lora_alpha,
            dtype=config.export_dtype,
            metadata={**metadata, "svi_mode": config.mode},
        )


PlainFamily = ConditionFamily


def family_for(config: TrainConfig) -> ConditionFamily:
    """The family of ``config.mode``."""
    if config.mode == "talk":
        from .talk import TalkFamily

        return TalkFamily()
    if config.mode == "dance":
        from .dance import DanceFamily

        return DanceFamily()
    return PlainFamily()


def derived_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for one use of the config seed (e.g. the pose embedding's init)."""
    digest = hashlib.sha256(f"{purpose}|{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def chance(rng: random.Random, p: float) -> bool:
    """One uniform draw (always consumed, so later draws do not depend on ``p``)."""
    return rng.random() < p


def lora_only(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The LoRA tensors of a trainable-parameter state dict (``.lora_A.`` / ``.lora_B.``)."""
    return {k: v for k, v in state.items() if ".lora_A." in k or ".lora_B." in k}


# ============================================================================================
# init_lora: start from an existing LoRA (official --pretrained_lora_path)
# ============================================================================================


def read_init_file(path: str) -> dict[str, torch.Tensor]:
    """The tensors of an ``init_lora`` file (safetensors, or a ``.ckpt`` / ``.pth`` of tensors
    read with ``torch.load(weights_only=True)``: a file holding Python objects is refused)."""
    from svi_core.checkpoints import load_state_dict

    return load_state_dict(path)


@torch.no_grad()
def load_init_lora(
    model: torch.nn.Module, config: TrainConfig, sd: Mapping[str, torch.Tensor] | None = None
) -> int:
    """Copy the LoRA of ``config.init_lora`` into the model's peft LoRA parameters.

    Any spelling svi_core reads (official ``pipe.dit.blocks.N.self_attn.q.lora_A.default.weight``
    as in the UniAnimate-DiT checkpoint, canonical ``diffusion_model.`` + alpha, diffusers,
    kohya). Official semantics (train_svi_dance.py:986-1014): layers the file has are loaded,
    the others keep their fresh init; the rank must equal ``lora_rank``. A file whose
    ``alpha / rank`` differs from ``lora_alpha / lora_rank`` has its ``lora_B`` rescaled so the
    layer's change is the file's. Tensors other than LoRA (``dwpose_embedding.*``) are skipped
    here. Returns the number of layers loaded.

    Raises:
        SVIError / CheckpointError: unreadable file, no LoRA, another rank, a layer the model
            does not have, or a shape that does not fit.
    """
    from svi_core.lora import normalise_lora_keys
    from svi_core.pose import split_dance_state_dict
    from svi_core.wan_keys import official_to_diffusers

    src = config.init_lora
    if sd is None:
        sd = read_init_file(src)
    lora_sd, _pose = split_dance_state_dict(sd, src)
    lora = normalise_lora_keys(lora_sd, src)
    params = dict(getattr(model, "module", model).named_parameters())
    loaded = 0
    for module, entry in lora.entries.items():
        if entry.lora_a is None or entry.lora_b is None:
            raise SVIError(
                f"init_lora '{src}': layer '{module}' is a full-weight difference, not a LoRA "
                "pair; only lora_A / lora_B layers can start a LoRA training"
            )
        if entry.rank != config.lora_rank:
            raise SVIError(
                f"init_lora '{src}' has rank {entry.rank} (layer '{module}') but lora_rank is "
                f"{config.lora_rank}; set --lora_rank {entry.rank} to start from this file"
            )
        try:
            name = official_to_diffusers(module)
        except KeyError:
            name = module
        a = params.get(f"{name}.lora_A.default.weight")
        b = params.get(f"{name}.lora_B.default.weight")
        if a is None or b is None:
            raise SVIError(
                f"init_lora '{src}': layer '{lora.source_keys.get(module, module)}' is not a "
                f"LoRA target of this model (targets: {', '.join(config.lora_targets)}, "
                f"{len(getattr(model, 'blocks', []))} blocks)"
            )
        if tuple(a.shape) != tuple(entry.lora_a.shape) or tuple(b.shape) != tuple(
            entry.lora_b.shape
        ):
            raise SVIError(
                f"init_lora '{src}': layer '{module}' is A {tuple(entry.lora_a.shape)} / B "
                f"{tuple(entry.lora_b.shape)}, the model needs {tuple(a.shape)} / "
                f"{tuple(b.shape)}; the file is for another model size"
            )
        file_scale = entry.scale(1.0)
        ours = config.lora_alpha / config.lora_rank
        a.copy_(entry.lora_a.to(a.dtype))
        b.copy_((entry.lora_b.float() * (file_scale / ours)).to(b.dtype))
        loaded += 1
    total = sum(1 for n in params if n.endswith(".lora_A.default.weight"))
    logger.info("init_lora '%s': %d of %d LoRA layers loaded", src, loaded, total)
    if loaded < total:
        logger.warning(
            "init_lora '%s' covers %d of the %d LoRA layers; the others start fresh",
            src,
            loaded,
            total,
        )
    return loaded


# ============================================================================================
# file headers (checks before any model loads)
# ============================================================================================


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from safetensors headers only (a file, a sharded ``.index.json`` or a folder
    holding one); ``{}`` for other formats (checked later, when loaded)."""
    import json

    from safetensors import safe_open

    if path.is_dir():
        found = sorted(path.glob("*.safetensors.index.json")) or sorted(path.glob("*.safetensors"))
        if not found:
            return {}
        path = found[0]
    files: list[Path]
    if path.name.endswith(".index.json"):
        try:
            weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError):
            return {}
        files = [path.parent / name for name in sorted(set(weight_map.values()))]
    elif path.suffix == ".safetensors":
        files = [path]
    else:
        return {}
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for k in f.keys():
                    shapes[k] = tuple(f.get_slice(k).get_shape())
        except Exception:  # unreadable here: the loader reports it with its own message
            return {}
    return shapes


def block_dims(shapes: dict[str, tuple[int, ...]], block_pattern: str) -> tuple[int, int]:
    """(output width of block 0's matched weight, number of blocks) or zeros when absent."""
    import re

    rx = re.compile(r"(?:^|\.)" + block_pattern + r"\.weight$")
    blocks: dict[int, int] = {}
    for k, shape in shapes.items():
        m = rx.search(k)
        if m:
            blocks[int(m.group(1))] = int(shape[0])
    if not blocks:
        return 0, 0
    return blocks.get(0, next(iter(blocks.values()))), len(blocks)
