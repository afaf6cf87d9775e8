"""ERFT training configuration: one frozen dataclass, presets ``shot``, ``film``, ``talk`` and
``dance``, TOML loading.

Every number is a field with the official default (``train_svi.py`` + ``scripts/train/
svi_{shot,film}.sh``, ``train_svi_talk.py`` + ``svi_talk.sh``, ``train_svi_dance.py`` +
``svi_dance.sh`` of vita-epfl/Stable-Video-Infinity; the launch scripts' values win over the
argparse defaults). Use :func:`preset` or :func:`load_config` rather than building one by hand.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

from svi_core import limits as L
from svi_core.errors import SVIError
from svi_core.wan_keys import SVI_LORA_TARGETS, official_to_diffusers

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TrainMode = Literal["shot", "film", "talk", "dance"]
"""What is trained: ``shot`` / ``film`` (a LoRA), ``talk`` (a LoRA on top of the frozen
MultiTalk audio modules, :mod:`train.talk`), ``dance`` (a LoRA and the pose embedding,
:mod:`train.dance`)."""

Resize = Literal["crop", "stretch"]
"""How frames reach ``height x width``: ``crop`` = a random crop to the target aspect, then a
bilinear resize (shot, film, talk); ``stretch`` = the whole frame resized bilinearly, the aspect
ignored (dance: the official crop is computed but never applied, train_svi_dance.py:582-606)."""

Padding = Literal["random_frame", "zeros"]
"""Conditioning padding after the motion frames: ``random_frame`` = one frame of the same clip
drawn uniformly, repeated (shot, official ``--ref_pad_num -1``); ``zeros`` (film, ``0``)."""


@dataclass(frozen=True)
class TrainConfig:
    """All ERFT settings. Paths are strings ("" = unset).

    Data: ``dataset`` (a folder; see :mod:`train.data`), ``num_frames`` consecutive frames per
    sample (4k + 1), cropped to the ``height:width`` aspect (the drawn side uniform in
    ``[side - side // crop_jitter, side]``) and resized (bilinear) to ``height x width``.
    ``num_motion_frames`` m: for m > 1 the first m frames are the motion frames with
    probability ``p_motion``, else frame 0 only. ``augment_draws``: augmented samples encoded
    into the cache per video (the official trainer draws a fresh one every epoch: 10 epochs ->
    10 draws). ``context_file``: a safetensors file with ``context`` ``[L, D]`` (and optional
    ``clip_fea`` ``[257, C]``) used for every sample instead of the text / CLIP encoders.

    Models (only needed to fill the cache, except the DiT): ``dit_path``, ``vae_path``,
    ``text_encoder_path`` (UMT5) with ``tokenizer_path`` (default: ``google/umt5-xxl`` next to
    it), or ``text_embeddings`` (a file of precomputed captions, svi_core's
    ``save_text_embeddings`` format), ``clip_vision_path`` (ViT-H; unset = no CLIP feature).

    Multi-condition modes (each field unused elsewhere): ``fixed_caption`` replaces every caption
    (official talk "the person is speaking", dance "the person is dancing");
    ``center_square`` crops landscape frames to a centred square before the random crop (the
    official talk preprocessing, prepare_video_audio.py:168-171); ``resize`` (see
    :data:`Resize`). Talk: ``multitalk_path`` (MeiGen-MultiTalk ``multitalk.safetensors``,
    frozen), ``wav2vec_path`` (local chinese-wav2vec2-base folder, only to fill the cache),
    ``audio_dropout`` (both audio windows zeroed, train_svi_talk.py:969-973). Dance:
    ``pose_dropout`` (the pose embedding's output zeroed: 1 - 0.95 x 0.9 = 0.145 from the two
    official draws, train_svi_dance.py:1041-1048), ``image_dropout`` (y and the CLIP feature
    zeroed together, no condition error then, :1049-1063), ``pose_hidden`` (channels inside the
    pose embedding). ``init_lora``: a file whose LoRA (and, for dance, ``dwpose_embedding``)
    starts the training (official ``--pretrained_lora_path``: the UniAnimate-DiT checkpoint for
    dance).

    ERFT: ``erft_enabled`` False trains a plain LoRA (no banks, no injection). Injection
    probabilities ``noise_prob``/``latent_prob``/``condition_prob``, ``clean_prob`` (no
    injection; banks then update with ``clean_bank_update_prob``), ``bank_cells`` timestep
    cells, ``bank_capacity`` Z per cell, ``bank_dtype``, ``bank_warmup_iters`` (errors are
    all-gathered across ranks during these first steps), ``y_error_num`` latent frames of
    condition error, ``error_scale`` (1 officially).

    Optimisation: ``gradient_accumulation`` samples per optimizer step (their mean loss; 1 =
    the official batch of 1 per GPU). An epoch is ``videos / (world x gradient_accumulation)``
    steps.

    Run: ``max_steps`` 0 = ``max_epochs`` x samples; checkpoints every ``checkpoint_every``
    steps (LoRA, optimizer, banks if ``save_banks``, RNG states, step, config hash);
    ``resume`` = "" / "latest" / a checkpoint folder. ``distributed``: ``ddp`` (torchrun) or
    ``fsdp`` (FSDP2 per block; tested on CPU/gloo only). ``export_dtype`` of the exported LoRA file.
    """

    mode: TrainMode = "shot"
    # data
    dataset: str = ""
    output_dir: str = "runs/svi-train"
    cache_dir: str = ""
    num_frames: int = 81
    height: int = 480
    width: int = 832
    crop_jitter: int = 14
    num_motion_frames: int = 1
    p_motion: float = 0.9
    padding: Padding = "random_frame"
    augment_draws: int = 10
    default_caption: str = ""
    context_file: str = ""
    fixed_caption: str = ""
    center_square: bool = False
    resize: Resize = "crop"
    # models
    dit_path: str = ""
    vae_path: str = ""
    text_encoder_path: str = ""
    tokenizer_path: str = ""
    text_embeddings: str = ""
    clip_vision_path: str = ""
    multitalk_path: str = ""
    wav2vec_path: str = ""
    init_lora: str = ""
    # conditions (talk, dance)
    audio_dropout: float = 0.0
    pose_dropout: float = 0.0
    image_dropout: float = 0.0
    pose_hidden: int = 16
    # LoRA
    lora_rank: int = 128
    lora_alpha: float = 128.0
    lora_targets: tuple[str, ...] = SVI_LORA_TARGETS
    # optimisation
    learning_rate: float = 1e-4
    gradient_accumulation: int = 1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    max_epochs: int = 10
    max_steps: int = 0
    precision: Literal["bf16", "fp32"] = "bf16"
    gradient_checkpointing: bool = True
    seed: int = 0
    # flow schedule
    train_timesteps: int = 1000
    shift: float = 5.0
    # ERFT
    erft_enabled: bool = True
    noise_prob: float = 0.01
    latent_prob: float = 0.9
    condition_prob: float = 0.9
    clean_prob: float = 0.2
    clean_bank_update_prob: float = 0.1
    bank_cells: int = 50
    bank_capacity: int = 500
    bank_dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    bank_warmup_iters: int = 50
    y_error_num: int = 3
    error_scale: float = 1.0
    # run
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    save_banks: bool = True
    resume: str = ""
    distributed: Literal["ddp", "fsdp"] = "ddp"
    log_every: int = 10
    export_dtype: Literal["bf16", "fp32"] = "bf16"
    export_name: str = ""

    def __post_init__(self) -> None:
        problems = _check(self)
        if problems:
            raise SVIError("training config: " + "; ".join(problems))

    @property
    def out(self) -> Path:
        return Path(self.output_dir)

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else self.out / "cache"

    @property
    def latent_frames(self) -> int:
        return (self.num_frames - 1) // 4 + 1

    @property
    def export_file(self) -> Path:
        name = self.export_name or f"svi-{self.mode}-{'erft' if self.erft_enabled else 'plain'}"
        if not name.endswith(".safetensors"):
            name += ".safetensors"
        return self.out / name

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d

    def fingerprint(self) -> str:
        """Hash of every field that changes what training computes (not paths of outputs, not
        the run length or checkpoint cadence): a checkpoint only resumes the same fingerprint."""
        from svi_core.run_store import sha256_json  # lazy: keeps this module torch-free

        d = {
            k: v
            for k, v in self.to_dict().items()
            if k not in RUN_ONLY_FIELDS and not (k in ADDED_FIELDS and v == ADDED_FIELDS[k])
        }
        return sha256_json(d)[:16]


RUN_ONLY_FIELDS = frozenset(
    {
        "output_dir",
        "cache_dir",
        "max_epochs",
        "max_steps",
        "checkpoint_every",
        "keep_checkpoints",
        "resume",
        "log_every",
        "export_dtype",
        "export_name",
        "dit_path",
        "vae_path",
        "text_encoder_path",
        "tokenizer_path",
        "text_embeddings",
        "clip_vision_path",
        "multitalk_path",
        "wav2vec_path",
        "init_lora",
    }
)
"""Fields a resumed run may change (model paths too: the same weights may move; ``init_lora``
only matters before the first checkpoint)."""

ADDED_FIELDS: dict[str, Any] = {
    "fixed_caption": "",
    "center_square": False,
    "resize": "crop",
    "audio_dropout": 0.0,
    "pose_dropout": 0.0,
    "image_dropout": 0.0,
    "pose_hidden": 16,
    "gradient_accumulation": 1,
}
"""Fields added after checkpoints existed (the talk / dance presets, gradient accumulation),
with the value that means "as before": left out of the fingerprint at that value, so
checkpoints of earlier versions still resume."""


_FLOAT_RANGES: dict[str, tuple[float, float, str]] = {
    "learning_rate": (1e-12, 1.0, "1e-4 official"),
    "weight_decay": (0.0, 10.0, "0.01 official"),
    "grad_clip": (0.0, 1e6, "1.0 official"),
    "lora_alpha": (1e-6, 1e6, "= rank officially"),
    "shift": (*L.SHIFT_RANGE, "5 official"),
    "error_scale": (0.0, 100.0, "1 official"),
}
"""Bounds of the float settings (nan and inf are always refused)."""

_INT_MAXIMA: dict[str, int] = {
    "crop_jitter": 1000,
    "augment_draws": 10_000,
    "gradient_accumulation": 10_000,
    "lora_rank": 4096,
    "bank_cells": 1000,
    "bank_capacity": 1_000_000,
    "y_error_num": 1000,
    "checkpoint_every": 10**9,
    "train_timesteps": 100_000,
    "log_every": 10**9,
    "max_epochs": 10**6,
    "pose_hidden": 4096,
}
"""Upper bounds of the integer settings that must be >= 1 (far above any real run)."""


def _check(c: TrainConfig) -> list[str]:
    p: list[str] = []
    bad_frames = L.frames_problem(c.num_frames, name="num_frames")
    if bad_frames:
        p.append(bad_frames)
    bad_size = L.size_problem(c.width, c.height)
    if bad_size:
        p.append(bad_size)
    for name, (lo, hi, hint) in _FLOAT_RANGES.items():
        problem = L.number_problem(name, getattr(c, name), lo, hi, hint=hint)
        if problem:
            p.append(problem)
    if not 1 <= c.num_motion_frames < c.num_frames:
        p.append(f"num_motion_frames={c.num_motion_frames} must be in [1, num_frames)")
    for name in (
        "p_motion",
        "audio_dropout",
        "pose_dropout",
        "image_dropout",
        "noise_prob",
        "latent_prob",
        "condition_prob",
        "clean_prob",
        "clean_bank_update_prob",
    ):
        v = getattr(c, name)
        if not 0.0 <= v <= 1.0:
            p.append(f"{name}={v} must be a probability in [0, 1]")
    for name, hi in _INT_MAXIMA.items():
        problem = L.number_problem(name, getattr(c, name), 1, hi, integer=True)
        if problem:
            p.append(problem)
    bad_steps = L.number_problem(
        "max_steps", c.max_steps, 0, 10**9, integer=True, hint="0 = max_epochs x samples"
    )
    if bad_steps:
        p.append(bad_steps)
    if c.resume not in ("", "latest") and not c.resume.strip():
        p.append("resume must be '', 'latest' or a checkpoint folder")
    for name, allowed in _LITERALS.items():
        if getattr(c, name) not in allowed:
            p.append(f"{name}={getattr(c, name)!r} must be one of {list(allowed)}")
    if c.export_name and (
        Path(c.export_name).name != c.export_name or c.export_name in ("..", ".")
    ):
        p.append(
            f"export_name={c.export_name!r} must be a plain file name (it is written inside "
            "output_dir)"
        )
    elif len(c.export_file.name.encode("utf-8")) > L.MAX_FILE_NAME:
        p.append(
            f"export_name is {len(c.export_name)} characters; the exported file name may have at "
            f"most {L.MAX_FILE_NAME} bytes with its .safetensors suffix (file systems stop at 255)"
        )
    elif any(ord(ch) < 32 for ch in c.export_name):
        p.append(f"export_name={c.export_name!r} must not hold control characters")
    if c.audio_dropout and c.mode != "talk":
        p.append(f"audio_dropout={c.audio_dropout} needs mode 'talk' (there is no audio)")
    if (c.pose_dropout or c.pose_hidden != 16) and c.mode != "dance":
        p.append("pose_dropout / pose_hidden need mode 'dance' (there is no pose embedding)")
    if not c.lora_targets:
        p.append("lora_targets is empty")
    for t in c.lora_targets:
        try:
            official_to_diffusers(f"blocks.0.{t}")
        except KeyError:
            p.append(
                f"lora_targets entry {t!r} is not a Wan block module (official names, e.g. "
                f"{', '.join(SVI_LORA_TARGETS)})"
            )
    return p


_HINTS = get_type_hints(TrainConfig)
_LITERALS = {
    name: get_args(t) for name, t in _HINTS.items() if getattr(t, "__origin__", None) is Literal
}
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig))

PRESETS: dict[str, dict[str, Any]] = {
    # scripts/train/svi_shot.sh: --num_motion_frames 1 --ref_pad_num -1 --clean_prob 0.2
    "shot": {"mode": "shot", "num_motion_frames": 1, "padding": "random_frame", "clean_prob": 0.2},
    # scripts/train/svi_film.sh: --num_motion_frames 5 --ref_pad_num 0 --clean_prob 0.5
    "film": {"mode": "film", "num_motion_frames": 5, "padding": "zeros", "clean_prob": 0.5},
    # scripts/train/svi_talk.sh (--num_motion_frames 1 --ref_pad_num -1 --y_error_num 3
    # --clean_prob 0.2, 10 epochs) + train_svi_talk.py defaults it keeps: 480 x 640
    # (:109-120), the fixed text (:564), audio zeroed with p 0.1 (:969-973), frames from the
    # preprocessor's centred square (prepare_video_audio.py:168-171)
    "talk": {
        "mode": "talk",
        "num_motion_frames": 1,
        "padding": "random_frame",
        "clean_prob": 0.2,
        "y_error_num": 3,
        "height": 480,
        "width": 640,
        "center_square": True,
        "fixed_caption": "the person is speaking",
        "audio_dropout": 0.1,
        "max_epochs": 10,
    },
    # scripts/train/svi_dance.sh (--y_error_num 1 --num_motion_frames 1 --ref_pad_num -1
    # --clean_prob 0.2, 20 epochs) + train_svi_dance.py defaults: height 832 x width 480
    # (:108-119), frames and pose frames stretched (:600-616), 'the person is dancing' (:621),
    # pose output zeroed 14.5 % and y + CLIP zeroed 10 % (:1041-1063); one augmented draw per
    # epoch as the official dataset re-draws every epoch
    "dance": {
        "mode": "dance",
        "num_motion_frames": 1,
        "padding": "random_frame",
        "clean_prob": 0.2,
        "y_error_num": 1,
        "height": 832,
        "width": 480,
        "resize": "stretch",
        "fixed_caption": "the person is dancing",
        "pose_dropout": 0.145,  # 1 - (1 - 0.05)(1 - 0.1)
        "image_dropout": 0.1,
        "max_epochs": 20,
        "augment_draws": 20,
    },
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """A preset (``shot``, ``film``, ``talk``, ``dance``) with optional field overrides."""
    if name not in PRESETS:
        raise SVIError(f"unknown training preset {name!r}; choose one of {sorted(PRESETS)}")
    values = {**PRESETS[name], **overrides}
    return TrainConfig(**coerce_fields(values, f"preset {name!r}"))


def coerce_fields(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Check names and types of config ``values`` (from TOML or flags); raise a clear error
    naming an unknown key (with the closest valid name) or a value of the wrong type."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in FIELD_NAMES:
            close = difflib.get_close_matches(key, FIELD_NAMES, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SVIError(
                f"{source}: unknown config key {key!r}.{hint} Valid keys: {', '.join(FIELD_NAMES)}"
            )
        out[key] = _coerce(key, value, source)
    return out


def _coerce(key: str, value: Any, source: str) -> Any:
    hint = _HINTS[key]
    origin = getattr(hint, "__origin__", None)
    if origin is Literal:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
    raise SVIError(f"{source}: config key {key!r} expects {hint}, got {value!r}")


def load_config(
    path: str | Path | None = None, preset_name: str | None = None, **overrides: Any
) -> TrainConfig:
    """Preset (from ``preset_name``, else the TOML's ``preset`` key, else ``shot``), then the
    TOML file's keys (top level or a ``[train]`` table), then ``overrides``."""
    values: dict[str, Any] = {}
    source = "flags"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise SVIError(f"config file '{p}' does not exist; pass a TOML file")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise SVIError(f"config file '{p}' is not valid TOML: {e}") from e
        if "train" in data and isinstance(data["train"], dict):
            extra = [k for k in data if k != "train"]
            if extra:
                raise SVIError(f"config file '{p}': keys {extra} outside the [train] table")
            data = data["train"]
        source = f"config file '{p}'"
        file_preset = data.pop("preset", None)
        preset_name = preset_name or file_preset
        values.update(coerce_fields(data, source))
    name = preset_name or "shot"
    if name not in PRESETS:
        raise SVIError(f"unknown training preset {name!r}; choose one of {sorted(PRESETS)}")
    merged = {**PRESETS[name], **values, **coerce_fields(overrides, "flags")}
    return TrainConfig(**merged)
