"""SVI-Dance training: ``python -m train --preset dance`` (official ``train_svi_dance.py`` +
``scripts/train/svi_dance.sh``).

What the official trainer does and what this module does the same way:

* trainable: the LoRA (r = alpha = 128 on q, k, v, o, ffn.0, ffn.2) AND the whole pose embedding
  (``dwpose_embedding``: seven Conv3d with SiLU, 3 -> 16 -> ... -> DiT width,
  train_svi_dance.py:665-679 = :class:`svi_core.pose.PoseEmbedding`), both in the AdamW
  optimizer with the same learning rate (:1272-1277) and both saved (:1290-1300). Here the
  embedding is registered on the DiT as ``svi_pose_embedding`` (float32); the forward keyword
  ``svi_pose=(input, keep)`` runs it inside the DiT's forward and adds its output to the patch
  tokens (as the official ``condition`` added after the patch embedding,
  wan_video_dit.py:511, 524-525).
* start: ``--pretrained_lora_path`` UniAnimate-Wan2.1-14B-Lora-12000.ckpt (svi_dance.sh:12):
  its ``pipe.dit.*`` LoRA (strict=False) and its ``dwpose_embedding.*`` (strict=True)
  (:986-1014). Here ``init_lora`` takes that checkpoint (``torch.load(weights_only=True)``: a
  file of tensors only), an SVI-Dance file or one of ours; without it the embedding starts from
  PyTorch's default init, as the official module without a pretrained file.
* pose input: the clip's pose frames (the same frame indices as the video), stretched
  bilinearly to the training size like the frames, uint8 0..255; the first pose frame repeated
  3 times in front, divided by 255 (:606-616, 1019) = :func:`svi_core.pose.pose_embedding_input`.
* dropout: the embedding OUTPUT zeroed with p 0.05 and, independently, p 0.1 (14.5 % in all;
  :1041-1048; here one draw of 0.145, as a zero output times 0 so every parameter still gets a
  (zero) gradient); y (all 20 channels) and the CLIP feature zeroed together with p 0.1, no
  condition error injected then (:1049-1063, ``y_set_null``).
* frames: height 832 x width 480 (argparse defaults, the script sets neither, :108-119), the
  whole frame stretched (the random crop of :582-594 is never applied), 1 motion frame, a random
  frame of the clip as padding, the text "the person is dancing" (:621).
* ERFT: svi_dance.sh's values (y_error_num 1, clean 0.2, ...), 20 epochs.

Data (``dataset``): one folder per video with ``video.mp4`` and ``dwpose.mp4`` (its DWPose
skeleton, frame i = the pose of frame i, drawn like the official skeletons: BGR palette on
black), the official raw layout (:433-493). The official loader uses a black pose frame when
``dwpose.mp4`` is missing; here a folder without it is refused (a skeleton-less dance sample is
almost always a mistake). The preprocessed pickles (``frame_data.pkl`` +
``dw_pose_with_foot_wo_face.pkl``) are never loaded: folders holding only them are refused with
the conversion recipe (README).

Exported: ONE safetensors file with the LoRA in canonical keys
(``diffusion_model.blocks.N.<module>.lora_A.weight`` / ``.lora_B.weight`` / ``.alpha``) and the
pose embedding in the official keys ``dwpose_embedding.{0,2,...,12}.{weight,bias}`` (float32),
named ``svi-dance-erft.safetensors`` by default: :func:`svi_core.pose.load_dance_file` reads it
(the Dance nodes and ``python -m svi_core generate --mode dance --lora ...``).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from svi_core.errors import SVIError
from svi_core.log import logger

from .conditions import (
    ConditionFamily,
    StepCondition,
    chance,
    derived_seed,
    header_shapes,
    load_init_lora,
    lora_only,
    read_init_file,
)
from .config import TrainConfig
from .data import VideoItem

VIDEO_NAME = "video.mp4"
POSE_NAME = "dwpose.mp4"
PICKLE_CACHES = ("frame_data.pkl", "dw_pose_with_foot_wo_face.pkl")
MODULE_NAME = "svi_pose_embedding"
"""Where the trainable pose embedding sits on the DiT (its parameters: ``svi_pose_embedding.*``)."""
SPARSE_LIMIT = 0.3
"""Pose frames are cached sparsely when at most this share of pixels is not black."""


# ============================================================================================
# data
# ============================================================================================


def list_dance_videos(config: TrainConfig) -> list[VideoItem]:
    """Every ``<folder>/video.mp4`` of ``config.dataset`` with its ``dwpose.mp4``.

    Captions: ``fixed_caption`` (the preset's), else ``<folder>/caption.txt``, else
    ``default_caption``.

    Raises:
        SVIError: no such folder, folders without ``dwpose.mp4``, folders with only the
            official pickles.
    """
    root = Path(config.dataset)
    if not str(config.dataset) or not root.is_dir():
        raise SVIError(
            f"dataset folder '{config.dataset}' does not exist; set `dataset` to a folder of "
            f"per-video folders holding {VIDEO_NAME} + {POSE_NAME}"
        )
    pickled = sorted(
        p.parent
        for name in PICKLE_CACHES
        for p in root.rglob(name)
        if not (p.parent / VIDEO_NAME).is_file()
    )
    if pickled:
        raise SVIError(
            f"dataset folder '{pickled[0]}' holds the official preprocessed pickles and no "
            f"{VIDEO_NAME}. Pickles are never loaded here (unpickling a file can run code): "
            "convert them once with the README recipe 'Converting the official preprocessed "
            f"pickles' (run it in the official environment), or give {VIDEO_NAME} + {POSE_NAME} "
            "per folder."
        )
    items: list[VideoItem] = []
    missing: list[Path] = []
    for video in sorted(root.rglob(VIDEO_NAME)):
        pose = video.parent / POSE_NAME
        if not pose.is_file():
            missing.append(video.parent)
            continue
        txt = video.parent / "caption.txt"
        caption = txt.read_text(encoding="utf-8").strip() if txt.is_file() else ""
        items.append(VideoItem(video, caption or config.default_caption, pose=pose))
    if missing:
        shown = ", ".join(str(m) for m in missing[:5])
        raise SVIError(
            f"{len(missing)} folder(s) have {VIDEO_NAME} but no {POSE_NAME}: {shown}. SVI-Dance "
            "learns from the skeleton video of each clip: add its DWPose video (the official "
            "scripts/data_preprocess/prepare_video_pose.py, or comfyui_controlnet_aux's DWPose "
            "saved as a video), or move the folder out of the dataset."
        )
    if not items:
        raise SVIError(
            f"dataset folder '{root}' holds no '{VIDEO_NAME}'; SVI-Dance data is one folder per "
            f"video with {VIDEO_NAME} + {POSE_NAME}"
        )
    return items


def pack_pose_frames(frames: torch.Tensor) -> dict[str, torch.Tensor]:
    """uint8 ``[F, H, W, 3]`` -> cache tensors: ``index`` (int32 flat pixel indices of the
    non-black pixels) + ``rgb`` (uint8 ``[K, 3]``) + ``shape``, or ``frames`` itself when more
    than :data:`SPARSE_LIMIT` of the pixels are not black. Lossless either way."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"pose frames must be uint8 [F, H, W, 3]; got {tuple(frames.shape)}")
    flat = frames.reshape(-1, 3)
    lit = flat.any(dim=1)
    shape = torch.tensor(list(frames.shape), dtype=torch.int64)
    if flat.shape[0] >= 2**31 or float(lit.float().mean()) > SPARSE_LIMIT:
        return {"frames": frames.contiguous(), "shape": shape}
    index = lit.nonzero().squeeze(1).to(torch.int32)
    return {"index": index, "rgb": flat[index.long()].contiguous(), "shape": shape}


def unpack_pose_frames(data: dict[str, torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`pack_pose_frames`: uint8 ``[F, H, W, 3]``."""
    if "frames" in data:
        return data["frames"]
    shape = [int(v) for v in data["shape"].tolist()]
    flat = torch.zeros(shape[0] * shape[1] * shape[2], 3, dtype=torch.uint8)
    flat[data["index"].long()] = data["rgb"]
    return flat.view(*shape)


# ============================================================================================
# model
# ============================================================================================


def _dit_width(config: TrainConfig, transformer: torch.nn.Module | None) -> int:
    """The DiT width from the model handed in or the DiT file's header (0 = unknown here)."""
    if transformer is not None:
        conv = getattr(transformer, "patch_embedding", None)
        return int(conv.out_channels) if isinstance(conv, torch.nn.Conv3d) else 0
    if not config.dit_path:
        return 0
    for k, shape in header_shapes(Path(config.dit_path)).items():
        if k.endswith("patch_embedding.weight"):
            return int(shape[0])
    return 0


def pose_module(model: torch.nn.Module) -> torch.nn.Module:
    """The trainable pose embedding attached to ``model`` (DDP-wrapped or not)."""
    return getattr(getattr(model, "module", model), MODULE_NAME)


class DanceFamily(ConditionFamily):
    """The pose condition of SVI-Dance (see the module docstring)."""

    name = "dance"

    def check(self, config: TrainConfig, transformer: torch.nn.Module | None = None) -> None:
        super().check(config, transformer)
        if config.init_lora:
            from svi_core.lora import normalise_lora_keys
            from svi_core.pose import split_dance_state_dict

            src = config.init_lora
            lora_sd, pose = split_dance_state_dict(read_init_file(src), src)
            rank = normalise_lora_keys(lora_sd, src).rank if lora_sd else config.lora_rank
            if rank != config.lora_rank:
                raise SVIError(
                    f"init_lora '{src}' has rank {rank} but lora_rank is {config.lora_rank}; "
                    f"set --lora_rank {rank} to start from this file"
                )
            width = _dit_width(config, transformer)
            if pose and "12.weight" in pose and width and int(pose["12.weight"].shape[0]) != width:
                raise SVIError(
                    f"init_lora '{src}': its pose embedding is {int(pose['12.weight'].shape[0])} "
                    f"wide, the DiT {width}; use the file made for this DiT (UniAnimate-DiT / "
                    "svi-dance are for Wan2.1-I2V-14B, width 5120)"
                )
            if not pose:
                logger.warning(
                    "init_lora '%s' has no dwpose_embedding tensors: the pose embedding starts "
                    "from a fresh init (official: the UniAnimate-DiT checkpoint's)",
                    config.init_lora,
                )

    def list_items(self, config: TrainConfig) -> list[VideoItem]:
        return list_dance_videos(config)

    def attach(self, model: torch.nn.Module, config: TrainConfig) -> None:
        from svi_core.pose import PoseEmbedding, tokens_match

        conv = getattr(model, "patch_embedding", None)
        if not isinstance(conv, torch.nn.Conv3d):
            raise SVIError("mode dance needs a Wan DiT with a Conv3d patch_embedding")
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(derived_seed(config.seed, "pose-init"))
            embedding = PoseEmbedding(int(conv.out_channels), config.pose_hidden)
        embedding = embedding.to(device=conv.weight.device, dtype=torch.float32)
        embedding.requires_grad_(True)
        model.add_module(MODULE_NAME, embedding)
        state: dict[str, torch.Tensor | None] = {"tokens": None}

        def compute_tokens(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple:
            pose = kwargs.pop("svi_pose", None)
            if pose is None:
                state["tokens"] = None
            else:
                x, keep = pose
                # official: dwpose_embedding(...) then zeros_like when dropped; times 0 keeps
                # every parameter in the graph (zero gradients, as DDP expects)
                state["tokens"] = embedding(x) * keep
            return args, kwargs

        def add_tokens(_m: torch.nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
            tokens = state["tokens"]
            if tokens is None:
                return output
            if not tokens_match(tokens, output.shape[2:]):
                raise SVIError(
                    f"pose tokens of grid {tuple(tokens.shape[2:])} do not match the DiT's patch "
                    f"grid {tuple(output.shape[2:])}: the pose frames are not the clip's size"
                )
            return output + tokens.to(output.dtype)

        model.register_forward_pre_hook(compute_tokens, with_kwargs=True)
        conv.register_forward_hook(add_tokens)

    def init_weights(self, model: torch.nn.Module, config: TrainConfig) -> None:
        if not config.init_lora:
            return
        from svi_core.pose import load_pose_embedding, split_dance_state_dict

        sd = read_init_file(config.init_lora)
        load_init_lora(model, config, sd)
        _lora, pose_sd = split_dance_state_dict(sd, config.init_lora)
        if not pose_sd:
            return
        module = pose_module(model)
        loaded = load_pose_embedding(pose_sd, config.init_lora, expected_dim=module.dim)
        if loaded.hidden != module.hidden:
            raise SVIError(
                f"init_lora '{config.init_lora}': its pose embedding has {loaded.hidden} hidden "
                f"channels; set --pose_hidden {loaded.hidden}"
            )
        with torch.no_grad():
            for (_name, p), q in zip(module.named_parameters(), loaded.parameters(), strict=True):
                p.copy_(q.to(p.dtype))
        logger.info("init_lora '%s': pose embedding loaded", config.init_lora)

    def check_sample(self, model: torch.nn.Module, sample: Any) -> None:
        if sample.pose is None:
            raise SVIError("mode dance: the cached sample has no pose frames; rebuild the cache")

    def step_condition(
        self, sample: Any, config: TrainConfig, rng: random.Random, device: torch.device
    ) -> StepCondition:
        from svi_core.pose import pose_embedding_input

        dropped = chance(rng, config.pose_dropout)
        x = pose_embedding_input(sample.pose).to(device)
        return StepCondition(
            kwargs={"svi_pose": (x, 0.0 if dropped else 1.0)},
            null_image=chance(rng, config.image_dropout),
            dropped=dropped,
        )

    def export(
        self, state: Mapping[str, torch.Tensor], config: TrainConfig, metadata: dict[str, str]
    ) -> Path:
        from safetensors.torch import save_file

        from svi_core.lora import canonical_state_dict, normalise_lora_keys
        from svi_core.pose import POSE_KEY_MARKER

        from .export import canonical_lora_tensors

        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[config.export_dtype]
        path = config.export_file
        lora = normalise_lora_keys(
            canonical_lora_tensors(lora_only(state), config.lora_alpha, dtype), str(path)
        )
        tensors = canonical_state_dict(lora)
        prefix = MODULE_NAME + "."
        pose = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not pose:
            raise SVIError("mode dance: the model has no pose embedding to export")
        for k, v in pose.items():
            tensors[POSE_KEY_MARKER + k] = v.float().contiguous()
        meta = {
            "format": "pt",
            "svi_lora_layout": "diffusion_model.<official module path>",
            "svi_pose_layout": "dwpose_embedding.<index>.<weight|bias> (official)",
            **metadata,
            "svi_mode": "dance",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
        return path
