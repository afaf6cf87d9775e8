"""Command line: ``python -m svi_core generate | report | demo``.

``generate`` runs the SVI clip loop with the standalone diffusers backend::

    python -m svi_core generate --mode film \\
        --model wan2.1_i2v_480p_14B_bf16.safetensors --vae wan_2.1_vae.safetensors \\
        --text-encoder umt5_xxl_fp16.safetensors --tokenizer google/umt5-xxl \\
        --clip-vision clip_vision_h.safetensors --lora svi-film-opt-10212025.safetensors \\
        --image frame.jpg --prompts prompt.txt --output film.mp4

Every input is checked before any model is loaded. The run directory (default
``<output>.run/``) makes the run resumable: rerun the same command after a crash or Ctrl-C,
or with a larger ``--clips`` to extend a finished video.

A talking video (SVI-Talk) adds the speech and its two models::

    python -m svi_core generate --mode talk --audio speech.wav --image face.png \\
        --multitalk multitalk.safetensors --wav2vec chinese-wav2vec2-base/ \\
        --lora svi-talk.safetensors --model ... --vae ... --clip-vision ... --output talk.mp4

A dancing video (SVI-Dance) adds a skeleton video; the SVI-Dance file holds the LoRA and the pose
embedding::

    python -m svi_core generate --mode dance --pose pose.mp4 --image dancer.png \\
        --lora svi-dance.safetensors --model ... --vae ... --clip-vision ... --output dance.mp4

``--extend VIDEO`` continues any existing video instead of starting from ``--image`` (which
then only sets the anchor; default: the video's first frame): the output is that video
followed by ``--clips`` new clips (:mod:`svi_core.extend`). ``--drift-guard output|carry``
corrects colour drift at the seams (:mod:`svi_core.drift_guard`; default off = official).

``report VIDEO --out DIR`` is forwarded to :func:`svi_core.report.main`; ``demo`` to
:func:`svi_core.toy.demo.main`.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoints import check_safetensors_header, precheck_model_file
from .clip_schedule import LoadedLora, Schedule, ScheduleCondition, load_schedule_file
from .conditioning import load_reference, read_image
from .drift_guard import DEFAULT_WINDOW, GUARD_MODES, DriftGuard
from .errors import Cancelled, SVIError
from .extend import VideoStart, load_video_start
from .limits import size_problem
from .log import logger
from .loop import LoopInputs, RunResult, RunSettings, check_output, open_run, run_clips
from .modes import MODES, ModeConfig, clip_vision_problem, get_mode
from .pose_inputs import DanceInputs
from .prompts import PromptStream, load_prompts
from .talk.inputs import TalkInputs, refuse_talk_lora_elsewhere
from .video_io import DEFAULT_CRF

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA file and its strength (``[NAME=]PATH[:STRENGTH]`` on the command line).

    ``name``: what a schedule calls it (``lora.NAME``); default: the file name's stem
    (:func:`svi_core.clip_schedule.lora_name`).
    """

    path: Path
    strength: float = 1.0
    name: str | None = None

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        name = None
        head, sep, tail = text.partition("=")
        if sep and head and re.fullmatch(r"[A-Za-z0-9_-]+", head):
            name, text = head, tail
        path, strength = text, 1.0
        head, sep, tail = text.rpartition(":")
        if sep and head and not (len(head) == 1 and head.isalpha()):  # keep "C:\..." intact
            try:
                strength = float(tail)
                path = head
            except ValueError:
                path = text
        return cls(Path(path), strength, name)

    @property
    def schedule_name(self) -> str:
        from .clip_schedule import lora_name

        return self.name if self.name is not None else lora_name(self.path.name)


@dataclass(frozen=True)
class ModelFiles:
    """The model files of a standalone run.

    Attributes:
        model: the DiT (Wan2.1 I2V) or the Wan2.2 high-noise expert.
        low_noise_model: the Wan2.2 low-noise expert (None for Wan2.1).
        vae: the Wan2.1 VAE. clip_vision: ViT-H image encoder (Wan2.1 modes only).
        text_encoder, tokenizer: UMT5 weights and tokenizer folder; or
        text_embeddings: a safetensors file of precomputed contexts keyed by
            :func:`svi_core.standalone.backend.text_embedding_key`.
        loras, low_noise_loras: LoRAs merged into ``model`` / ``low_noise_model``.
    """

    model: Path
    vae: Path
    low_noise_model: Path | None = None
    clip_vision: Path | None = None
    text_encoder: Path | None = None
    tokenizer: Path | None = None
    text_embeddings: Path | None = None
    loras: tuple[LoraSpec, ...] = ()
    low_noise_loras: tuple[LoraSpec, ...] = ()

    def fingerprints(self) -> dict[str, str]:
        """Every file's name and size, plus a content fingerprint (``<key>.content``: sampled
        bytes, see :func:`svi_core.run_store.file_fingerprint`; about 1 MiB read per large
        file), so resuming with a same-named file of other weights is refused."""
        from .run_store import CONTENT_SUFFIX, file_fingerprint

        def fp(p: Path | None) -> str:
            return "-" if p is None else f"{p.name}:{p.stat().st_size if p.exists() else 0}"

        def fp_loras(specs: tuple[LoraSpec, ...]) -> str:
            return ",".join(f"{fp(x.path)}@{x.strength:g}" for x in specs) or "-"

        def content(paths: Sequence[Path | None]) -> str:
            return ",".join(file_fingerprint(p)[:16] for p in paths if p is not None) or "-"

        files = {
            "model": [self.model],
            "low_noise_model": [self.low_noise_model],
            "vae": [self.vae],
            "clip_vision": [self.clip_vision],
            "text_encoder": [self.text_encoder or self.text_embeddings],
            "loras": [x.path for x in self.loras],
            "low_noise_loras": [x.path for x in self.low_noise_loras],
        }
        out = {
            "model": fp(self.model),
            "low_noise_model": fp(self.low_noise_model),
            "vae": fp(self.vae),
            "clip_vision": fp(self.clip_vision),
            "text_encoder": fp(self.text_encoder or self.text_embeddings),
            "loras": fp_loras(self.loras),
            "low_noise_loras": fp_loras(self.low_noise_loras),
        }
        out.update({key + CONTENT_SUFFIX: content(paths) for key, paths in files.items()})
        return out


@dataclass(frozen=True)
class GenerateOptions:
    """Everything ``generate`` needs, checked (see :func:`options_from_args`).

    Attributes:
        settings: mode + size + clip count. files: model files. image, prompts: inputs
        (``image`` None when extending a video without an anchor image). start: the video
        to continue (``--extend``), read and checked.
        output: the mp4. run_dir: the resumable run directory. device, dtype: where and in
        which dtype the DiT and text encoder run (the VAE and CLIP vision run in float32).
        batch_cfg: batch the CFG passes. progress: show tqdm bars.
        schedule: the per-clip schedule (``--schedule``) or None; schedule_images: its
            images, uint8 ``[H, W, 3]`` as read (image N = ``schedule_images[N - 1]``).
        talk: the checked SVI-Talk inputs (speech, MultiTalk, wav2vec2) for mode talk.
        dance: the checked SVI-Dance inputs (pose frames, the Dance file) for mode dance.
    """

    settings: RunSettings
    files: ModelFiles
    image: Path | None
    prompts: tuple[str, ...]
    output: Path
    run_dir: Path
    device: str
    dtype: torch.dtype
    batch_cfg: bool = True
    progress: bool = True
    talk: TalkInputs | None = None
    schedule: Schedule | None = None
    schedule_images: tuple[torch.Tensor, ...] = ()
    dance: DanceInputs | None = None
    start: VideoStart | None = None

    def loaded_loras(self) -> tuple[LoadedLora, ...]:
        """The LoRAs of both models as a schedule names them."""
        return loaded_loras(self.files.loras, self.files.low_noise_loras)

    def schedule_condition(self) -> ScheduleCondition | None:
        """The run's per-clip schedule condition (None without ``--schedule``)."""
        if self.schedule is None:
            return None
        return ScheduleCondition(
            self.schedule, images=self.schedule_images, loras=self.loaded_loras()
        )


def loaded_loras(
    loras: Sequence[LoraSpec], low_noise_loras: Sequence[LoraSpec]
) -> tuple[LoadedLora, ...]:
    """The LoRAs of both models (``--lora`` on the high-noise / only DiT, ``--low-noise-lora``
    on the low-noise expert) as a schedule names them."""
    return tuple(
        [LoadedLora(x.schedule_name, "high", x.strength) for x in loras]
        + [LoadedLora(x.schedule_name, "low", x.strength) for x in low_noise_loras]
    )


# ----- parsing ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m svi_core",
        description="Stable Video Infinity: videos of any length from one image.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser(
        "generate",
        help="generate (or resume / extend) an SVI video",
        description="Generate an SVI video clip by clip; rerun to resume or extend.",
    )
    m = g.add_argument_group("models")
    m.add_argument("--model", type=Path, required=True, help="DiT file (Wan2.2: high-noise expert)")
    m.add_argument("--low-noise-model", type=Path, help="Wan2.2 A14B low-noise expert")
    m.add_argument("--vae", type=Path, required=True, help="Wan2.1 VAE file")
    m.add_argument("--text-encoder", type=Path, help="UMT5-XXL weights")
    m.add_argument("--tokenizer", type=Path, help="folder with the google/umt5-xxl tokenizer")
    m.add_argument(
        "--text-embeddings", type=Path, help="precomputed text contexts (instead of UMT5)"
    )
    m.add_argument("--clip-vision", type=Path, help="CLIP ViT-H (Wan2.1 modes)")
    m.add_argument(
        "--lora", action="append", default=[], metavar="[NAME=]PATH[:STRENGTH]",
        help="LoRA for --model (repeatable); NAME is what a schedule calls it (default: the "
        "file name)",
    )  # fmt: skip
    m.add_argument(
        "--low-noise-lora", action="append", default=[], metavar="[NAME=]PATH[:STRENGTH]",
        help="LoRA for --low-noise-model (repeatable)",
    )  # fmt: skip
    i = g.add_argument_group("inputs")
    i.add_argument(
        "--image", type=Path,
        help="reference (first) frame; with --extend the anchor (default: the video's first frame)",
    )  # fmt: skip
    i.add_argument(
        "--extend", type=Path, metavar="VIDEO",
        help="continue this video: the output is VIDEO followed by --clips new clips",
    )  # fmt: skip
    i.add_argument("--prompts", type=Path, help="prompt file (prompts = [...] or one per line)")
    i.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    i.add_argument("--negative", help="negative prompt (default: the mode's official one)")
    i.add_argument(
        "--schedule", type=Path,
        help="per-clip schedule (TOML): prompt, seed, cfg, LoRA strengths, anchor and keyframe "
        "images per clip range",
    )  # fmt: skip
    d = g.add_argument_group("dance (mode dance: a dancing video from a skeleton video)")
    d.add_argument("--pose", type=Path, help="skeleton video (or folder of frames) to follow")
    d.add_argument(
        "--pose-palette", choices=["official", "rgb"], default="official",
        help="official: drawn by the official/UniAnimate scripts (BGR); rgb: ComfyUI/ControlNet",
    )  # fmt: skip
    d.add_argument(
        "--pose-loop", choices=["loop", "pingpong", "hold"], default="loop",
        help="past the end of the pose video: loop (official), pingpong or hold the last pose",
    )  # fmt: skip
    t = g.add_argument_group("talk (mode talk: a talking video from speech)")
    t.add_argument("--audio", type=Path, help="speech (wav, mp3, flac, m4a, or a video's sound)")
    t.add_argument("--multitalk", type=Path, help="MeiGen-MultiTalk multitalk.safetensors")
    t.add_argument("--wav2vec", type=Path, help="TencentGameMate/chinese-wav2vec2-base folder")
    t.add_argument(
        "--audio-align", choices=["official", "frames"], default="official",
        help="speech under the video: official (from 0 s) or frames (the audio each frame saw)",
    )  # fmt: skip
    t.add_argument("--cfg-audio", type=float, help="audio guidance scale (default 5)")
    s = g.add_argument_group("generation")
    s.add_argument("--mode", default="film", choices=list(MODES), help="SVI mode (default film)")
    s.add_argument("--clips", type=int, help="number of clips (default: the mode's rule)")
    s.add_argument("--width", type=int, help="video width (multiple of 16)")
    s.add_argument("--height", type=int, help="video height (multiple of 16)")
    s.add_argument("--frames", type=int, help="frames per clip, 4k + 1 (default 81)")
    s.add_argument("--steps", type=int, help="sampling steps (default 50)")
    s.add_argument("--cfg", type=float, help="guidance scale (default 5; 1 = no guidance)")
    s.add_argument("--shift", type=float, help="schedule shift (default 5)")
    s.add_argument("--seed", type=int, help="seed of clip 0 (default 0)")
    s.add_argument("--stride", type=int, help="seed step per clip (default 42)")
    s.add_argument("--prompt-policy", choices=["first", "cycle", "hold"])
    s.add_argument("--prompt-repeat", type=int, help="clips per prompt")
    s.add_argument("--motion-frames", type=int, help="pixel-carry motion frames m")
    s.add_argument("--motion-latents", type=int, help="latent-carry motion latents k (Pro)")
    s.add_argument("--overlap", type=int, help="frames dropped per clip when stitching")
    d = g.add_argument_group("drift guard (colour correction at the seams; default off)")
    d.add_argument(
        "--drift-guard", choices=list(GUARD_MODES), default="off",
        help="output: correct the saved frames around each seam; carry: also the frames the "
        "next clip continues from, so colour drift stops compounding",
    )  # fmt: skip
    d.add_argument(
        "--guard-window", type=int, default=DEFAULT_WINDOW,
        help=f"frames corrected on each side of a seam (default {DEFAULT_WINDOW})",
    )  # fmt: skip
    d.add_argument(
        "--guard-strength", type=float, default=1.0,
        help="0..1, how far colours are moved onto the anchor's (default 1)",
    )  # fmt: skip
    d.add_argument(
        "--guard-contrast", action="store_true",
        help="also match contrast and saturation, not only the mean colour",
    )  # fmt: skip
    o = g.add_argument_group("output")
    o.add_argument("--output", type=Path, required=True, help="output .mp4")
    o.add_argument("--run-dir", type=Path, help="run directory (default <output>.run)")
    o.add_argument("--fps", type=float, help="saved frame rate (default: the mode's)")
    o.add_argument("--crf", type=int, default=DEFAULT_CRF, help="x264 quality (default 16)")
    r = g.add_argument_group("runtime")
    r.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    r.add_argument("--dtype", choices=list(_DTYPES), help="DiT dtype (default bf16 on GPU)")
    r.add_argument("--no-batch-cfg", action="store_true", help="run CFG passes one by one")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub.add_parser("report", help="drift report of a video (svi_core.report)", add_help=False)
    sub.add_parser("demo", help="the toy demo (svi_core.toy.demo)", add_help=False)
    sub.add_parser("modes", help="every mode with its official values (--json)", add_help=False)
    return parser


def _need_file(path: Path | None, what: str, flag: str) -> None:
    if path is not None and not path.is_file():
        raise SVIError(f"{what} {path} does not exist; pass an existing file with {flag}")


class _Problems:
    """Collects the problems of one run, so a user fixes them all at once (issue 10, 2)."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def check(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``, or None with its SVIError message noted."""
        try:
            return fn(*args, **kwargs)
        except SVIError as e:
            self.found.append(str(e))
            return None

    def add(self, message: str) -> None:
        self.found.append(message)

    def raise_if_any(self) -> None:
        if len(self.found) == 1:
            raise SVIError(self.found[0])
        if self.found:
            listed = "; ".join(f"({i}) {m}" for i, m in enumerate(self.found, 1))
            raise SVIError(f"{len(self.found)} problems: {listed}")


def options_from_args(args: argparse.Namespace) -> GenerateOptions:
    """Check every input and map the arguments onto the typed settings (no model loaded).

    Every cheap check runs (settings, files, text encoder, prompts, size, image, output) and
    all problems are reported together in one SVIError, not one per run.
    """
    problems = _Problems()
    mode: ModeConfig | None = problems.check(
        get_mode,
        args.mode,
        frames=args.frames,
        steps=args.steps,
        cfg=args.cfg,
        cfg_audio=args.cfg_audio,
        shift=args.shift,
        seed_base=args.seed,
        seed_stride=args.stride,
        prompt_policy=args.prompt_policy,
        prompt_repeat=args.prompt_repeat,
        motion_frames=args.motion_frames,
        motion_latents=args.motion_latents,
        fps=args.fps,
        negative_prompt=args.negative,
        **({"overlap": args.overlap} if args.overlap is not None else {}),
    )
    rules = mode if mode is not None else get_mode(args.mode)  # the preset, for the checks below
    for path, what, flag in (
        (args.model, "DiT file", "--model"),
        (args.low_noise_model, "low-noise DiT file", "--low-noise-model"),
        (args.vae, "VAE file", "--vae"),
        (args.text_encoder, "text encoder file", "--text-encoder"),
        (args.text_embeddings, "text embeddings file", "--text-embeddings"),
        (args.clip_vision, "CLIP-vision file", "--clip-vision"),
    ):
        problems.check(_need_file, path, what, flag)
        # a wrong file type, a pickle or a truncated download is named now, not after the DiT
        # has loaded
        if path is not None and path.is_file():
            if flag == "--text-embeddings":
                problems.check(check_safetensors_header, path, what)
            else:
                problems.check(precheck_model_file, path, what)
    if args.text_encoder is None and args.text_embeddings is None:
        problems.add("no text encoder: pass --text-encoder and --tokenizer, or --text-embeddings")
    if args.text_encoder is not None and (args.tokenizer is None or not args.tokenizer.is_dir()):
        problems.add(
            f"--text-encoder needs --tokenizer pointing to the google/umt5-xxl tokenizer folder "
            f"(got {args.tokenizer})"
        )
    no_clip = clip_vision_problem(rules, args.clip_vision is not None, "pass --clip-vision FILE")
    if no_clip:
        problems.add(no_clip)
    loras = tuple(LoraSpec.parse(t) for t in args.lora)
    low_loras = tuple(LoraSpec.parse(t) for t in args.low_noise_lora)
    for specs, flag in ((loras, "--lora"), (low_loras, "--low-noise-lora")):
        for spec in specs:
            problems.check(_need_file, spec.path, "LoRA file", flag)
            if spec.path.is_file():
                problems.check(precheck_model_file, spec.path, "LoRA file")
    problems.check(refuse_talk_lora_elsewhere, rules, [spec.path for spec in loras])
    talk: TalkInputs | None = problems.check(
        TalkInputs.check,
        rules,
        audio=args.audio,
        multitalk=args.multitalk,
        wav2vec=args.wav2vec,
        dit=args.model,
        align=args.audio_align,
    )
    dance: DanceInputs | None = problems.check(
        DanceInputs.check, rules, pose=args.pose, palette=args.pose_palette, loop=args.pose_loop,
        loras=[spec.path for spec in loras if spec.path.is_file()], dit=args.model,
    )  # fmt: skip
    if args.cfg_audio is not None and "audio" not in rules.conditions:
        problems.add(
            f"--cfg-audio is the audio guidance of mode talk; mode {rules.name!r} has none"
        )
    if low_loras and args.low_noise_model is None:
        problems.add("--low-noise-lora needs --low-noise-model (the Wan2.2 low-noise expert)")
    for flag, specs in (("--lora", loras), ("--low-noise-lora", low_loras)):
        names = [x.schedule_name for x in specs]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            problems.add(
                f"two {flag} files are both named {twice[0]!r}; name them for the schedule with "
                f"{flag} NAME=PATH[:STRENGTH]"
            )
    schedule, schedule_images = None, ()
    if args.schedule is not None:
        loaded = problems.check(load_schedule_file, args.schedule)
        if loaded is not None:
            schedule, image_paths = loaded
            read = [
                problems.check(read_image, p, f"schedule image {i} ({args.schedule})")
                for i, p in enumerate(image_paths, start=1)
            ]
            schedule_images = tuple(read) if all(r is not None for r in read) else ()
    prompts: list[str] | None = None
    if args.prompts is not None and args.prompt:
        problems.add("give prompts either with --prompts FILE or with --prompt TEXT, not both")
    elif args.prompts is not None:
        prompts = problems.check(load_prompts, args.prompts)
    elif args.prompt:
        prompts = [p.strip() for p in args.prompt if p.strip()]
    elif rules.default_prompt:
        prompts = [rules.default_prompt]
    else:
        problems.add("no prompt: pass --prompts FILE or --prompt TEXT")
    if prompts is not None:
        problems.check(PromptStream.for_mode, prompts, rules)  # empty -> error
    size: tuple[int, int] | None = None
    if (args.width is None) != (args.height is None):
        problems.add("give both --width and --height, or neither")
    elif args.width is not None:
        bad_size = size_problem(args.width, args.height)
        if bad_size:
            problems.add(bad_size)
        else:
            size = (args.width, args.height)
    elif rules.resize == "fixed":
        size = (rules.width, rules.height)
    guard = DriftGuard(
        args.drift_guard, args.guard_window, args.guard_strength, bool(args.guard_contrast)
    )
    problems.check(guard.validate)
    start: VideoStart | None = None
    reference = None
    if args.extend is not None:
        # the video sets the size (as an image would) and, unless --fps is given, the frame
        # rate, so the original keeps its speed and can be joined by stream copy
        start = problems.check(load_video_start, args.extend, rules, size)
        if start is not None:
            if args.fps is None and start.fps:
                rules = get_mode(rules, fps=start.fps)
            if args.image is not None:  # the anchor: only its readability is checked here
                problems.check(load_reference, args.image, rules, start.size)
    elif args.image is None:
        problems.add("no start: pass --image FILE (the first frame), or --extend VIDEO")
    else:
        # an unreadable image -> SVIError; with a bad size, only its readability is checked
        reference = problems.check(load_reference, args.image, rules, size)
    output = args.output
    if output.suffix.lower() != ".mp4":
        problems.add(f"--output {output} must end in .mp4")
    if start is not None:
        width, height = start.size
    elif reference is not None:
        height, width = int(reference.shape[0]), int(reference.shape[1])
    else:  # a valid stand-in: the size's own problems are listed above
        width, height = rules.width, rules.height
    if dance is not None:  # every pose frame read and fitted before any model loads
        dance = problems.check(dance.read, width, height)
    audio_frames = talk.feature_frames if talk is not None else None
    pose_frames = dance.frames if dance is not None else None
    clips = args.clips
    if clips is None:
        clips = rules.clip_count(len(prompts or [""]), audio_frames, pose_frames=pose_frames)
    settings = RunSettings(
        mode=rules, width=width, height=height, num_clips=clips, crf=args.crf, drift_guard=guard
    )
    problems.check(settings.validate)  # clip count, crf, the last clip's seed
    if schedule is not None and (reference is not None or start is not None):  # vs this run
        condition = ScheduleCondition(
            schedule,
            images=schedule_images,
            loras=loaded_loras(loras, low_loras),
        )
        problems.check(condition.validate, settings)
    problems.raise_if_any()
    run_dir = args.run_dir if args.run_dir is not None else output.with_suffix(".run")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.dtype is not None:
        dtype = _DTYPES[args.dtype]
    else:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    files = ModelFiles(
        model=args.model,
        vae=args.vae,
        low_noise_model=args.low_noise_model,
        clip_vision=args.clip_vision if settings.mode.clip_vision else None,
        text_encoder=args.text_encoder,
        tokenizer=args.tokenizer,
        text_embeddings=args.text_embeddings if args.text_encoder is None else None,
        loras=loras,
        low_noise_loras=low_loras,
    )
    return GenerateOptions(
        settings=settings,
        files=files,
        image=args.image,
        prompts=tuple(prompts or ()),
        output=output,
        run_dir=run_dir,
        device=device,
        dtype=dtype,
        batch_cfg=not args.no_batch_cfg,
        progress=not args.no_progress,
        talk=talk,
        schedule=schedule,
        schedule_images=schedule_images,
        dance=dance,
        start=start,
    )


# ----- running ------------------------------------------------------------------------------


def build_backend(opts: GenerateOptions):
    """Load the models of ``opts.files`` and return a :class:`DiffusersBackend`."""
    from .clip_schedule import lora_key
    from .lora import apply_lora_to_diffusers, load_lora
    from .standalone.backend import DiffusersBackend, embeddings_text_encoder
    from .standalone.lora_switch import SwitchableLoras
    from .standalone.models import (
        clip_vision_features,
        encode_text,
        load_clip_vision,
        load_umt5_encoder,
        load_wan_transformer,
        load_wan_vae,
    )

    f, dev = opts.files, torch.device(opts.device)
    condition = opts.schedule_condition()
    switched = condition.lora_keys() if condition is not None else set()
    switches = []

    read_lora = opts.dance.load_lora if opts.dance is not None else load_lora

    def dit(path: Path, loras: Sequence[LoraSpec], expert: str) -> torch.nn.Module:
        model = load_wan_transformer(path, dtype=opts.dtype)
        later = {}
        for spec in loras:
            key = lora_key(spec.schedule_name, expert)
            if key in switched:  # a schedule changes it per clip: applied unmerged
                later[key] = (read_lora(spec.path), spec.strength)
            else:
                apply_lora_to_diffusers(model, read_lora(spec.path), spec.strength)
        model = model.to(dev)
        if later:
            switches.append(SwitchableLoras(model, later))
            logger.info(
                "LoRA(s) %s applied unmerged: the schedule changes their strength per clip",
                ", ".join(sorted(later)),
            )
        return model

    high = dit(f.model, f.loras, "high")
    low = None
    if f.low_noise_model is not None:
        low = dit(f.low_noise_model, f.low_noise_loras, "low")
    vae = load_wan_vae(f.vae, dtype=torch.float32).to(dev)
    if f.text_encoder is not None:
        te, tok = load_umt5_encoder(f.text_encoder, f.tokenizer, dtype=opts.dtype)
        te = te.to(dev)

        def text_encoder(prompt: str) -> torch.Tensor:
            return encode_text(te, tok, [prompt])

    else:
        text_encoder = embeddings_text_encoder(f.text_embeddings)
    image_encoder = None
    if f.clip_vision is not None:
        cv = load_clip_vision(f.clip_vision, dtype=torch.float32).to(dev)

        def image_encoder(frame: torch.Tensor) -> torch.Tensor:
            return clip_vision_features(cv, frame)

    backend = DiffusersBackend(
        high,
        vae,
        low_noise_transformer=low,
        text_encoder=text_encoder,
        image_encoder=image_encoder,
        device=dev,
        dtype=opts.dtype,
        batch_cfg=opts.batch_cfg,
        loras=switches,
        extras={
            **({"audio": opts.talk.hook(high, opts.dtype)} if opts.talk is not None else {}),
            **({"pose": opts.dance.hook(high)} if opts.dance is not None else {}),
        },
    )
    # every prompt is known up front: encode them all, then free the text encoder
    scheduled = opts.schedule.prompts() if opts.schedule is not None else []
    backend.precompute_text([*opts.prompts, *scheduled, opts.settings.mode.negative_prompt])
    return backend


def generate(opts: GenerateOptions, backend=None) -> RunResult:
    """Run (or resume / extend) a generation; ``backend`` defaults to :func:`build_backend`."""
    mode = opts.settings.mode
    size = (opts.settings.width, opts.settings.height)
    if opts.image is not None:
        reference = load_reference(opts.image, mode, size)
    elif opts.start is not None:
        reference = opts.start.first  # the anchor: the video's first frame
    else:
        raise SVIError("no start: pass --image FILE (the first frame), or --extend VIDEO")
    fingerprints = opts.files.fingerprints()
    conditions = ()
    if opts.talk is not None:
        fingerprints.update(opts.talk.fingerprints())
        conditions = (opts.talk.condition(),)
    schedule = opts.schedule_condition()
    if schedule is not None:
        conditions += (schedule,)
    if opts.dance is not None:
        conditions = (*conditions, opts.dance.condition())
    inputs = LoopInputs(
        reference=reference,
        prompts=opts.prompts,
        fingerprints=fingerprints,
        conditions=conditions,
        start=opts.start,
    )
    # the run directory and the output are checked (and the run locked) before any model loads
    check_output(opts.output)
    store = open_run(opts.run_dir, opts.settings, inputs)
    if backend is None:
        try:
            if opts.talk is not None and store.clips_done < opts.settings.num_clips:
                conditions[0].features.get()  # wav2vec2 before (and freed before) the DiT
            backend = build_backend(opts)
        except BaseException:
            store.close()
            raise
    clip_bar = step_bar = None
    if opts.progress:
        from tqdm import tqdm

        clip_bar = tqdm(total=opts.settings.num_clips, desc="clips", unit="clip", position=0)
        step_bar = tqdm(total=mode.steps, desc="steps", unit="step", position=1, leave=False)

    def on_step(clip: int, done: int, total: int) -> None:
        if step_bar is not None:
            if done == 1:
                step_bar.reset(total=total)
                step_bar.set_description(f"clip {clip + 1}")
            step_bar.update(1)

    def on_clip(result) -> None:
        if clip_bar is not None:
            clip_bar.n = result.record.index + 1
            clip_bar.refresh()

    try:
        return run_clips(
            backend,
            opts.settings,
            inputs,
            store,
            output=opts.output,
            on_step=on_step,
            on_clip=on_clip,
        )
    finally:
        for bar in (step_bar, clip_bar):
            if bar is not None:
                bar.close()


_FORWARDED = {"report": "report", "demo": "toy.demo", "modes": "mode_table"}
"""Subcommands whose module parses its own arguments (imported only when used)."""


def _forward(module: str, argv: list[str]) -> int:
    import importlib

    try:
        mod = importlib.import_module(f".{module}", __package__)
    except ModuleNotFoundError as e:
        if e.name == f"{__package__}.{module}":
            logger.error("the '%s' command is not available in this build", module)
            return 2
        raise
    return int(mod.main(argv) or 0)


class _StderrHandler(logging.StreamHandler):
    """A log handler writing to whatever ``sys.stderr`` is when a record is emitted (not the
    stream of the moment it was made), so ``main`` can be called again in one process."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m svi_core`` / the ``svi`` script. Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("svi: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    if argv and argv[0] in _FORWARDED:
        try:
            return _forward(_FORWARDED[argv[0]], argv[1:])
        except SVIError as e:  # the commands report their own; this is the safety net
            logger.error("error: %s", e)
            return 2
    args = build_parser().parse_args(argv)
    try:
        opts = options_from_args(args)
        result = generate(opts)
    except SVIError as e:
        logger.error("error: %s", e)
        return 2
    except (Cancelled, KeyboardInterrupt):
        logger.error("interrupted; finished clips are kept, rerun the same command to resume")
        return 130
    logger.info(
        "wrote %s: %d frames from %d clips (%d generated now); run directory %s",
        result.video,
        result.frames,
        result.clips_done,
        result.clips_generated,
        result.run_dir,
    )
    return 0
