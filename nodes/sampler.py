"""SVI Infinite Sampler: one node runs the whole clip loop with ComfyUI's models.

The loop itself is ``svi_core.loop.run_clips``; this node validates the inputs against the
mode, builds a :class:`~.backend.ComfyBackend`, streams the clips to
``<output>/svi/<run name>/`` (resumable with the same run name), reports one progress bar over
clips x steps, and returns the file-backed VIDEO, the last clip's LATENT and its last frames.
"""

from __future__ import annotations

import os
from typing import Any

import comfy.model_management
import comfy.samplers
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import InputImpl, io, ui

from ..svi_core import limits as L
from ..svi_core.conditioning import reference_size
from ..svi_core.drift_guard import DEFAULT_WINDOW, GUARD_MODES, DriftGuard
from ..svi_core.errors import Cancelled
from ..svi_core.latents import denormalise
from ..svi_core.log import logger
from ..svi_core.loop import LoopInputs, RunSettings, prepare_run, run_clips
from ..svi_core.modes import get_mode, mode_names
from ..svi_core.pose import LOOP_POLICIES
from ..svi_core.run_store import sha256_json
from .backend import ComfyBackend
from .checks import EXISTING_RUN, check_models, model_fingerprint, pick_run
from .convert import reference_from_image, run_video, start_from_inputs
from .dance import LOOP_TOOLTIP, PALETTE_CHOICES, PALETTE_TOOLTIP, dance_parts
from .lora_patch import schedule_loras
from .prompts import EncodedPrompts, SVIPrompts
from .schedule import ScheduleInput, SVISchedulePort
from .talk import SVICondition, check_talk_inputs


def _settings(kwargs: dict[str, Any], prompts: EncodedPrompts, image: torch.Tensor):
    """The run settings and the video to continue (None when not extending)."""
    cond = kwargs.get("condition")  # a per-clip condition node (SVI Talk Audio)
    mode = get_mode(
        kwargs["mode"],
        frames=kwargs["frames"],
        steps=kwargs["steps"],
        cfg=kwargs["cfg"],
        shift=kwargs["shift"],
        seed_base=kwargs["seed"],
        seed_stride=kwargs["seed_stride"],
        fps=kwargs["fps"],
        prompt_repeat=prompts.repeat or None,  # 0 = the mode's own repeat
        # the optional input may be absent (an API prompt): then the mode's own boundary
        **(
            {"boundary": kwargs["boundary"]}
            if get_mode(kwargs["mode"]).boundary and kwargs.get("boundary") is not None
            else {}
        ),
        **(dict(cond.mode_overrides) if cond is not None else {}),
    )
    width, height = kwargs["width"], kwargs["height"]
    size = (width, height) if width and height else None
    start = start_from_inputs(kwargs.get("extend_video"), kwargs.get("extend_images"), mode, size)
    if size is None:
        size = (
            start.size if start else reference_size(mode, int(image.shape[2]), int(image.shape[1]))
        )
    if start is not None and start.fps and start.fps != mode.fps:
        logger.info(
            "extend: using the video's frame rate %g fps (fps input: %g)", start.fps, mode.fps
        )
        mode = get_mode(mode, fps=start.fps)
    guard = DriftGuard(
        kwargs.get("drift_guard") or "off", kwargs.get("guard_window") or DEFAULT_WINDOW
    )
    frames = cond.feature_frames if cond is not None else None
    pose = kwargs.get("pose_video")
    pose_frames = None if pose is None else int(pose.shape[0])
    clips = kwargs["clips"] or mode.clip_count(len(prompts.texts), frames, pose_frames=pose_frames)
    settings = RunSettings(
        mode=mode, width=size[0], height=size[1], num_clips=clips, drift_guard=guard
    )
    return settings, start


def _inputs(
    kw: dict[str, Any],
    prompts: EncodedPrompts,
    reference: torch.Tensor,
    mode,
    dance: tuple = ((), {}, {}),
    start=None,
) -> Any:
    """The loop inputs of the node: the reference, the encoded prompts (keyed by their texts,
    so the run store never hashes conditioning tensors), the negative, and fingerprints of
    what the loop cannot see: prompt texts and repeat, negative text, sampler/scheduler and
    the MODEL(s)."""
    neg_text, negative = prompts.negative_for(mode)
    fingerprints = {
        "prompts": sha256_json([list(prompts.texts), prompts.repeat]),
        "negative": sha256_json(neg_text),
        "sampler": sha256_json([kw["sampler_name"], kw["scheduler"]]),
        "model": model_fingerprint(kw["model"]),
    }
    if kw.get("low_noise_model") is not None:
        fingerprints["low_noise_model"] = model_fingerprint(kw["low_noise_model"])
    conditions = ()
    cond = kw.get("condition")
    if cond is not None:
        fingerprints.update(cond.fingerprints)
        conditions += (cond.condition,)
    schedule: ScheduleInput | None = kw.get("schedule")
    if schedule is not None:
        loras = schedule_loras(kw["model"], kw.get("low_noise_model"))
        conditions += (schedule.condition(prompts.text_encoder, loras),)
    fingerprints.update(dance[2])
    conditions += tuple(dance[0])
    return LoopInputs(
        reference=reference,
        prompts=list(prompts.positives),
        negative=negative,
        fingerprints=fingerprints,
        prompt_keys=[sha256_json(t) for t in prompts.texts],
        conditions=conditions,
        start=start,
    )


class SVIInfiniteSampler(io.ComfyNode):
    """Generates a video of any length, clip by clip, streamed to disk and resumable."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SVIInfiniteSampler",
            display_name="SVI Infinite Sampler",
            category="SVI/sampling",
            description=(
                "Runs the whole SVI clip loop: each clip is conditioned on the end of the "
                "previous one per the mode, sampled, decoded and streamed to "
                "output/svi/<run name>/. Re-queue with the same run name to resume or extend."
            ),
            inputs=[
                io.Model.Input(
                    "model", tooltip="Wan DiT with its SVI LoRA (Wan2.2: the high-noise expert)."
                ),
                io.Vae.Input("vae", tooltip="The Wan2.1 VAE (wan_2.1_vae.safetensors)."),
                SVIPrompts.Input("prompt_stream", tooltip="Prompts from SVI Prompt Stream."),
                io.Image.Input(
                    "reference_image",
                    tooltip="The start image (when extending a video: the anchor, e.g. its first "
                    "frame); stretched to width x height.",
                ),
                io.Combo.Input(
                    "mode",
                    options=mode_names(),
                    default="film",
                    tooltip="SVI preset: shot/film/tom/v2/dance on Wan2.1 I2V 14B; v2_w22/v2_pro on "
                    "Wan2.2 I2V A14B (two experts). Must match the LoRA.",
                ),
                io.Int.Input(
                    "clips",
                    default=0,
                    min=0,
                    max=L.MAX_CLIPS,
                    tooltip="Clips to generate; 0 = the mode's default count.",
                ),
                io.Int.Input(
                    "frames",
                    default=81,
                    min=L.MIN_FRAMES,
                    max=L.MAX_FRAMES,
                    step=4,
                    tooltip="Frames per clip, 4k + 1 (81 official).",
                ),
                io.Int.Input(
                    "width",
                    default=832,
                    min=0,
                    max=L.MAX_SIDE,
                    step=16,
                    tooltip="Video width, a multiple of 16; 0 = from the image per the mode (Wan2.1: keep up to 832).",
                ),
                io.Int.Input(
                    "height",
                    default=480,
                    min=0,
                    max=L.MAX_SIDE,
                    step=16,
                    tooltip="Video height, a multiple of 16; 0 = from the image per the mode.",
                ),
                io.Int.Input(
                    "steps",
                    default=50,
                    min=1,
                    max=L.MAX_STEPS,
                    tooltip="Sampling steps per clip (50 official; 4-8 with a LightX2V LoRA).",
                ),
                io.Float.Input(
                    "cfg",
                    default=5.0,
                    min=0.0,  # the core refuses 0 itself: a scale must be in (0, max]
                    max=L.MAX_GUIDANCE,
                    step=0.1,
                    round=0.01,
                    tooltip="Classifier-free guidance (5 official; 1 = one pass).",
                ),
                io.Combo.Input(
                    "sampler_name",
                    options=comfy.samplers.KSampler.SAMPLERS,
                    default="euler",
                    tooltip="ComfyUI sampler (euler = the official flow Euler).",
                ),
                io.Combo.Input(
                    "scheduler",
                    options=comfy.samplers.KSampler.SCHEDULERS,
                    default="simple",
                    tooltip="ComfyUI scheduler (simple = the official linear schedule).",
                ),
                io.Float.Input(
                    "shift",
                    default=5.0,
                    min=L.SHIFT_RANGE[0],
                    max=L.SHIFT_RANGE[1],
                    step=0.1,
                    tooltip="Flow shift (SVI: 5; ComfyUI's Wan default is 8).",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=L.MAX_SEED,
                    control_after_generate=True,
                    tooltip="Seed of clip 0; clip k uses seed + k * seed_stride.",
                ),
                io.Int.Input(
                    "seed_stride",
                    default=42,
                    min=0,
                    max=L.MAX_SEED_STRIDE,
                    tooltip="Seed step between clips (official 42); never 0 unless you want repeated noise.",
                ),
                io.Float.Input(
                    "fps",
                    default=16.0,
                    min=L.FPS_RANGE[0],
                    max=L.FPS_RANGE[1],
                    step=1.0,
                    tooltip="Frame rate of the saved video (official 24 on Wan2.1, 15 on Wan2.2); "
                    "a video being extended keeps its own.",
                ),
                io.String.Input(
                    "run_name",
                    default="svi_run",
                    tooltip="Folder under output/svi/ for this run's clips; the same name resumes.",
                ),
                io.Combo.Input(
                    "on_existing_run",
                    options=list(EXISTING_RUN),
                    default="resume or new",
                    tooltip="resume: continue the run of this name (error if settings differ); "
                    "new: always a fresh numbered run; resume or new: resume when the settings "
                    "match, else a fresh numbered run.",
                ),
                io.Model.Input(
                    "low_noise_model",
                    optional=True,
                    tooltip="Wan2.2 only: the low-noise expert with its SVI LoRA.",
                ),
                io.Float.Input(
                    "boundary",
                    default=0.875,
                    min=0.0,
                    max=1.0,
                    step=0.005,
                    optional=True,
                    tooltip="Wan2.2: the high-noise expert runs while t >= boundary x 1000 (0.875 for I2V A14B).",
                ),
                io.ClipVision.Input(
                    "clip_vision",
                    optional=True,
                    tooltip="Wan2.1 modes: CLIP vision H (clip_vision_h.safetensors); unused on Wan2.2.",
                ),
                SVICondition.Input(
                    "condition",
                    optional=True,
                    tooltip="Mode talk: the speech from SVI Talk Audio (MultiTalk patch + wav2vec2).",
                ),
                SVISchedulePort.Input(
                    "schedule",
                    optional=True,
                    tooltip="SVI Schedule: per-clip prompt, seed, CFG, LoRA strengths, anchor "
                    "(scene change) and keyframes; unscheduled clips keep the mode's values.",
                ),
                io.Image.Input(
                    "pose_video",
                    optional=True,
                    tooltip="Mode dance: the skeleton video to follow (Load Video -> Get Video "
                    "Components, or a DWPose / SDPose node); it loops when shorter than the run.",
                ),
                io.Combo.Input(
                    "pose_palette",
                    options=list(PALETTE_CHOICES),
                    default="rgb",
                    optional=True,
                    tooltip=PALETTE_TOOLTIP,
                ),
                io.Combo.Input(
                    "pose_loop",
                    options=list(LOOP_POLICIES),
                    default="loop",
                    optional=True,
                    tooltip=LOOP_TOOLTIP,
                ),
                io.Video.Input(
                    "extend_video",
                    optional=True,
                    tooltip="A video to continue: the output is this video, unchanged, followed by "
                    "the new clips (clip 1 continues from its last frames; its frame rate is used). "
                    "reference_image is then the anchor.",
                ),
                io.Image.Input(
                    "extend_images",
                    optional=True,
                    tooltip="Frames to continue (an IMAGE batch) instead of extend_video; encoded "
                    "once in front of the new clips.",
                ),
                io.Combo.Input(
                    "drift_guard",
                    options=list(GUARD_MODES),
                    default="off",
                    optional=True,
                    tooltip="Colour correction at the seams: off = official SVI; output = the saved "
                    "frames around each seam are matched to the reference's colours; carry = also "
                    "the frames the next clip continues from, so colour drift stops compounding.",
                ),
                io.Int.Input(
                    "guard_window",
                    default=DEFAULT_WINDOW,
                    min=1,
                    max=1000,
                    optional=True,
                    tooltip="Drift guard: frames corrected on each side of a seam.",
                ),
            ],
            outputs=[
                io.Video.Output(
                    "video",
                    display_name="video",
                    tooltip="The stitched video (mp4 in output/svi/<run name>/).",
                ),
                io.Latent.Output(
                    "last_latent",
                    display_name="last_latent",
                    tooltip="The last clip's denoised latent.",
                ),
                io.Image.Output(
                    "last_frames",
                    display_name="last_frames",
                    tooltip="The last frames of the video (the motion frames a continuation needs).",
                ),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, **kw: Any) -> io.NodeOutput:
        prompts: EncodedPrompts = kw["prompt_stream"]
        image: torch.Tensor = kw["reference_image"]
        settings, start = _settings(kw, prompts, image)
        settings.validate()
        mode = settings.mode
        check_models(mode, kw["model"], kw.get("low_noise_model"), kw.get("clip_vision"))
        check_talk_inputs(mode, kw.get("condition"), kw["model"])
        reference = reference_from_image(image, settings.width, settings.height)
        dance = dance_parts(
            mode, kw["model"], kw.get("pose_video"), settings.width, settings.height,
            palette=kw.get("pose_palette", "rgb"), loop=kw.get("pose_loop", "loop"),
        )  # fmt: skip
        inputs = _inputs(kw, prompts, reference, mode, dance, start)
        run = prepare_run(settings, inputs)
        store = pick_run(
            folder_paths.get_output_directory(), kw["run_name"], kw["on_existing_run"], run
        )
        run_dir, done = str(store.root), store.clips_done
        total = max(0, settings.num_clips - done) * mode.steps
        bar = comfy.utils.ProgressBar(max(total, 1))

        def on_step(clip: int, step: int, steps: int) -> None:
            bar.update_absolute((clip - done) * steps + step, total)

        backend = ComfyBackend(
            kw["model"],
            kw["vae"],
            clip_vision=kw.get("clip_vision") if mode.clip_vision else None,
            low_noise_model=kw.get("low_noise_model"),
            sampler_name=kw["sampler_name"],
            scheduler=kw["scheduler"],
            extras={
                **(dict(kw["condition"].extras) if kw.get("condition") is not None else {}),
                **dance[1],
            },
        )
        video_path = run_video(run_dir)
        try:
            result = run_clips(backend, settings, inputs, store, output=video_path, on_step=on_step)
        except Cancelled:
            raise comfy.model_management.InterruptProcessingException() from None
        latent = {"samples": denormalise(result.last_latent)}
        frames = result.last_frames.float() / 255.0
        subfolder = os.path.relpath(run_dir, os.path.realpath(folder_paths.get_output_directory()))
        preview = ui.PreviewVideo(
            [ui.SavedResult(os.path.basename(video_path), subfolder, io.FolderType.output)]
        )
        video = InputImpl.VideoFromFile(str(result.video))
        return io.NodeOutput(video, latent, frames, ui=preview)
