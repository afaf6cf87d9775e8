"""Command line: ``python -m train`` / ``svi-train`` (``torchrun --nproc_per_node N -m train``).

Settings come from a preset (``--preset shot|film|talk|dance``), then a TOML file (``--config``: keys of
:class:`train.config.TrainConfig` at the top level or in a ``[train]`` table, optional
``preset = "film"``), then flags (``--learning_rate 5e-5``; every config field is a flag).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from svi_core.errors import SVIError
from svi_core.log import logger

from .config import FIELD_NAMES, PRESETS, TrainConfig, load_config

FIELD_HELP: dict[str, str] = {
    "mode": "preset family the LoRA is for (set by --preset)",
    "dataset": "folder of training videos (official <category>/<category>.csv, or clip.mp4 + "
    "clip.txt captions)",
    "output_dir": "where checkpoints, loss.csv and the exported LoRA go",
    "cache_dir": "encoded-sample cache (empty = <output_dir>/cache)",
    "num_frames": "consecutive frames per sample, 4k + 1",
    "height": "sample height after crop and resize (multiple of 16)",
    "width": "sample width after crop and resize (multiple of 16)",
    "crop_jitter": "crop side drawn in [side - side // crop_jitter, side]",
    "num_motion_frames": "motion frames m of the conditioning (shot 1, film 5)",
    "p_motion": "probability of m motion frames (else 1) when m > 1",
    "padding": "conditioning after the motion frames: random_frame (shot) or zeros (film)",
    "augment_draws": "augmented samples encoded per video",
    "default_caption": "caption of videos without one",
    "context_file": "safetensors with 'context' [L, D] (+ optional 'clip_fea') used for every "
    "sample instead of the text / CLIP encoders",
    "dit_path": "Wan2.1 I2V DiT (.safetensors, sharded .index.json or folder)",
    "vae_path": "Wan2.1 VAE (needed while the cache is built)",
    "text_encoder_path": "UMT5-XXL weights (needed while the cache is built)",
    "tokenizer_path": "google/umt5-xxl tokenizer folder (empty = next to the text encoder)",
    "text_embeddings": "precomputed caption contexts instead of UMT5 (save_text_embeddings)",
    "clip_vision_path": "CLIP ViT-H image encoder (empty = no CLIP feature)",
    "lora_rank": "LoRA rank",
    "lora_alpha": "LoRA alpha (scale = alpha / rank)",
    "lora_targets": "comma-separated Wan block modules that get a LoRA",
    "learning_rate": "AdamW learning rate",
    "weight_decay": "AdamW weight decay",
    "grad_clip": "gradient-norm clip",
    "gradient_accumulation": "samples per optimizer step (mean loss; 1 = official batch of 1)",
    "max_epochs": "epochs when max_steps is 0",
    "max_steps": "optimiser steps (0 = max_epochs x samples)",
    "precision": "compute precision of the DiT: bf16 or fp32",
    "gradient_checkpointing": "recompute activations in backward (less memory)",
    "seed": "seed of the run",
    "train_timesteps": "flow-matching training timesteps",
    "shift": "flow schedule shift",
    "erft_enabled": "error recycling on (false = a plain LoRA)",
    "noise_prob": "probability of injecting a noise error",
    "latent_prob": "probability of injecting a latent error",
    "condition_prob": "probability of injecting a condition error",
    "clean_prob": "probability of a clean step (no injection)",
    "clean_bank_update_prob": "probability a clean step updates the banks",
    "bank_cells": "timestep cells of the error banks",
    "bank_capacity": "errors kept per bank cell",
    "bank_dtype": "storage dtype of the banks: bf16, fp16 or fp32",
    "bank_warmup_iters": "first steps whose errors are gathered across ranks",
    "y_error_num": "latent frames of condition error",
    "error_scale": "scale of injected errors",
    "checkpoint_every": "steps between checkpoints",
    "keep_checkpoints": "checkpoints kept (older ones are deleted)",
    "save_banks": "store the error banks in checkpoints",
    "resume": "'' (new run), 'latest' or a checkpoint folder",
    "distributed": "ddp, or fsdp to shard the DiT (under torchrun)",
    "log_every": "steps between log lines",
    "export_dtype": "dtype of the exported LoRA: bf16 or fp32",
    "export_name": "file name of the exported LoRA (empty = svi-<mode>-<erft|plain>)",
    "fixed_caption": "text for every sample, captions ignored (talk, dance: the official text)",
    "center_square": "crop landscape frames to a centred square first (talk preprocessing)",
    "resize": "crop (random crop to the aspect, then resize) or stretch (whole frame: dance)",
    "multitalk_path": "talk: MeiGen-MultiTalk multitalk.safetensors (frozen audio layers)",
    "wav2vec_path": "talk: local chinese-wav2vec2-base folder (needed while the cache is built)",
    "init_lora": "LoRA file to start from (dance: UniAnimate-DiT checkpoint, its pose embedding "
    "too)",
    "audio_dropout": "talk: probability of zeroing a step's audio windows",
    "pose_dropout": "dance: probability of zeroing a step's pose-embedding output",
    "image_dropout": "probability of zeroing y and the CLIP feature of a step (dance)",
    "pose_hidden": "dance: channels inside the pose embedding",
}
"""One line per config field for ``--help`` (the full story: ``TrainConfig``'s docstring)."""


def _field_help(name: str) -> str:
    shot, film, talk, dance = (
        getattr(load_config(None, p), name) for p in ("shot", "film", "talk", "dance")
    )
    show = lambda v: ",".join(v) if isinstance(v, tuple) else repr(v)  # noqa: E731
    default = show(shot) if shot == film else f"shot {show(shot)}, film {show(film)}"
    others = [f"{p} {show(v)}" for p, v in (("talk", talk), ("dance", dance)) if v != shot]
    if others:
        default += "; " + ", ".join(others)
    return f"{FIELD_HELP.get(name, 'see TrainConfig')} (default: {default})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="svi-train",
        description="Error-Recycling Fine-Tuning (ERFT) of an SVI LoRA for the Wan2.1 I2V DiT. "
        "Settings: the preset, then the TOML file, then these flags.",
    )
    parser.add_argument("--config", help="TOML file of TrainConfig keys")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), help="shot (default), film, talk or dance"
    )
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    group = parser.add_argument_group("config fields (override the preset and the TOML file)")
    for name in FIELD_NAMES:
        group.add_argument(
            f"--{name}",
            dest=f"field_{name}",
            metavar="VALUE",
            default=None,
            help=_field_help(name).replace("%", "%%"),
        )
    return parser


def parse_config(argv: Sequence[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    args = build_parser().parse_args(argv)
    overrides = {
        name: getattr(args, f"field_{name}")
        for name in FIELD_NAMES
        if getattr(args, f"field_{name}") is not None
    }
    return load_config(args.config, args.preset, **overrides), args


def main(argv: Sequence[str] | None = None) -> int:
    """Run training; returns the exit status (2 on bad input, with the message on stderr)."""
    if not logging.getLogger().handlers and not logger.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config, args = parse_config(argv)
        if args.print_config:
            import json

            sys.stdout.write(json.dumps(config.to_dict(), indent=1) + "\n")
            return 0
        from .cache import check_input_files
        from .loop import train

        check_input_files(config)  # a pickle or truncated file: refused before any model loads
        path = train(config)
    except SVIError as e:
        logger.error("%s", e)
        return 2
    logger.info("done: %s", path)
    return 0
