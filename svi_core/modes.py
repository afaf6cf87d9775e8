"""SVI mode presets: every per-mode value of the official scripts, in one frozen dataclass.

A mode fixes how clip k is conditioned on clip k-1 (carry space, motion frames, padding, mask,
CLIP-vision frame), how clips are stitched, the sampling settings, the seed rule, the prompt
stream and the negative prompt. Values were read from the official code:
``vita-epfl/Stable-Video-Infinity`` (``test_svi.py``, ``scripts/test/*.sh``,
``diffsynth/pipelines/svi_video.py``) for the Wan2.1 modes and branch ``svi_wan22``
(``inference.py``, ``inference_svi_2.0_pro.py``, ``wan_video_svi_pro.py``) for Wan2.2.

Use :func:`get_mode` (``get_mode("film", cfg=4.0)``) rather than building one by hand.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from . import limits as L
from .errors import SVIError
from .guidance import GUIDANCE_KINDS, Guidance, GuidanceKind, scale_problems

CarrySpace = Literal["pixel", "latent"]
"""``pixel``: the next clip sees the last m DECODED frames (uint8-quantised), re-encoded.
``latent``: the next clip sees the last k latent frames of the previous denoised latent."""

Padding = Literal["zeros", "reference"]
"""What fills the conditioning video after the motion frames (pixel carry) or the latent after
anchor + motion (latent carry, always ``zeros`` = zeros in NORMALISED latent space)."""

Stitch = Literal["drop_tail", "drop_head"]
"""``drop_tail``: every non-final clip drops its last ``overlap`` frames (the next clip
regenerates them). ``drop_head``: every clip after the first drops its first ``overlap``
frames (they re-render the carried frames)."""

PromptPolicy = Literal["first", "cycle", "hold"]
"""``first``: every clip uses prompts[0]. ``cycle``: prompts[(k // repeat) % len].
``hold``: prompts[min(k // repeat, len - 1)] (the last prompt is held)."""

ClipCountRule = Literal["fixed", "min_prompts", "audio", "pose"]
"""``fixed``: ``default_clips``. ``min_prompts``: ``min(default_clips, len(prompts) * repeat)``
(the official Wan2.1 script's rule when the prompt stream is used). ``audio`` (SVI-Talk): the
fewest clips that cover the speech (:func:`svi_core.talk.clips_for_audio`; not an official
rule: the official script always makes ``default_clips`` = 50). ``pose`` (SVI-Dance): the fewest
clips that play the pose video once (:func:`svi_core.pose.clips_to_cover`; not an official rule:
the official script always makes ``default_clips`` = 10 and loops the pose)."""

ResizeRule = Literal["fit_width", "fixed"]
"""``fit_width``: keep the image size if width <= ``max_width`` else scale to that width, floor
both to multiples of 16 (Wan2.1 scripts). ``fixed``: stretch to ``width`` x ``height`` (Wan2.2)."""

NEGATIVE_PROMPT_EN = (
    "bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, "
    "images, static, overall gray, worst quality, low quality, JPEG compression residue, ugly, "
    "incomplete, extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, "
    "misshapen limbs, fused fingers, still picture, messy background, three legs, many people "
    "in the background, walking backwards"
)
"""The English negative prompt of the official Wan2.1 ``test_svi.py`` (every Wan2.1 mode)."""

NEGATIVE_PROMPT_ZH = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，"
    "最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，"
    "画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)
"""The standard Chinese Wan negative prompt of the official ``inference_svi_2.0_pro.py``."""


@dataclass(frozen=True)
class ModeConfig:
    """One SVI mode. Every field is a setting; presets are in :data:`MODES`.

    Attributes:
        name: preset name (``shot``, ``film``, ``tom``, ``v2``, ``v2_w22``, ``v2_pro``,
            ``talk``, ``dance``).
        model: ``wan2.1`` (one I2V-14B DiT with CLIP vision) or ``wan2.2`` (two A14B experts).
        lora: the official LoRA file(s) this mode is meant for (informative).
        carry: ``pixel`` or ``latent`` (see :data:`CarrySpace`).
        motion_frames: m, decoded frames carried to the next clip (pixel carry); 0 for latent.
        motion_latents: k, latent frames carried (latent carry); 0 for pixel carry.
        padding: the conditioning after the motion part (see :data:`Padding`).
        first_clip_repeat_reference: pixel carry only: clip 0 is conditioned on the reference
            repeated m times instead of once (official ``--repeat_first_clip``; off by default).
        mask_frames: latent frames marked given in the mask (1 in every official mode, even
            when m = 5).
        clip_vision: whether the DiT takes a CLIP-vision feature (Wan2.1 I2V ``img_emb``);
            its frame is the first motion frame M[0] (the reference for clip 0).
        stitch, overlap: stitching rule and frames dropped per clip (``overlap=None`` means the
            default: m for ``drop_tail``, ``1 + 4k`` for latent carry, 1 for ``v2_w22``).
        frames: frames per clip F (4k + 1; 81 official).
        steps, cfg, shift: sampling (official 50 steps, shift 5, CFG 5). ``cfg`` is the
            (text) guidance scale.
        guidance: how passes combine (:data:`svi_core.guidance.GuidanceKind`): ``cfg`` for
            every mode but SVI-Talk's ``text_audio``.
        cfg_audio: ``text_audio`` guidance only: the audio scale.
        uncond_null: per-clip conditions the unconditional pass runs without (empty in every
            official mode).
        conditions: per-clip conditions the mode needs (``("audio",)`` for Talk, ``("pose",)``
            for Dance); a run without them is refused before any work.
        boundary: two-expert switch on the 0..1 sigma scale (0.875 for Wan2.2 A14B I2V);
            None for one model.
        timestep_dtype: dtype the DiT timestep is rounded to: the official Wan2.2 pipelines
            cast it to bfloat16 (t = 995.93 reaches the model as 996), the Wan2.1 one keeps
            float32. The expert switch and the Euler steps always use the exact values.
        seed_base, seed_stride: clip k uses ``seed_base + k * seed_stride``.
        prompt_policy, prompt_repeat: the prompt stream (see :data:`PromptPolicy`).
        clip_count_rule, default_clips: default number of clips (see :data:`ClipCountRule`).
        negative_prompt: exact official negative prompt.
        default_prompt: the official prompt of a mode whose script fixes one (SVI-Talk: "a
            person is talking", SVI-Dance: "the person is dancing"); used when the user gives none. Empty: the user must give one.
        fps: saved video frame rate (official 24 for Wan2.1, 15 for Wan2.2).
        resize, max_width, width, height: reference-image sizing (see :data:`ResizeRule`).
    """

    name: str
    model: Literal["wan2.1", "wan2.2"]
    lora: str = dataclasses.field(metadata={"identity": False})  # a file-name hint only
    carry: CarrySpace
    motion_frames: int
    motion_latents: int
    padding: Padding
    clip_vision: bool
    stitch: Stitch
    cfg: float
    prompt_policy: PromptPolicy
    prompt_repeat: int
    clip_count_rule: ClipCountRule
    default_clips: int
    negative_prompt: str
    fps: float
    resize: ResizeRule
    first_clip_repeat_reference: bool = False
    mask_frames: int = 1
    overlap: int | None = None
    frames: int = 81
    steps: int = 50
    shift: float = 5.0
    boundary: float | None = None
    timestep_dtype: Literal["float32", "bfloat16"] = "float32"
    seed_base: int = 0
    seed_stride: int = 42
    max_width: int = 832
    width: int = 832
    height: int = 480
    guidance: GuidanceKind = "cfg"
    cfg_audio: float = 1.0
    uncond_null: tuple[str, ...] = ()
    conditions: tuple[str, ...] = ()
    default_prompt: str = ""

    def __post_init__(self) -> None:
        problems = _check(self)
        if problems:
            raise SVIError(f"mode {self.name!r}: " + "; ".join(problems))

    @property
    def overlap_frames(self) -> int:
        """Frames each clip drops when stitched (see ``stitch``)."""
        if self.overlap is not None:
            return self.overlap
        if self.carry == "latent":
            return 1 + 4 * self.motion_latents
        return self.motion_frames

    @property
    def latent_frames(self) -> int:
        """Latent frames per clip, ``(F - 1) / 4 + 1``."""
        return (self.frames - 1) // 4 + 1

    def guidance_for(self, cfg: float | None = None) -> Guidance:
        """The mode's guidance, with the (text) scale ``cfg`` instead of ``self.cfg`` if given."""
        return Guidance(
            kind=self.guidance,
            scale=self.cfg if cfg is None else float(cfg),
            audio_scale=self.cfg_audio,
            uncond_null=frozenset(self.uncond_null),
        )

    def seed_for(self, clip: int) -> int:
        """The seed of clip ``clip`` (0-based): ``seed_base + clip * seed_stride``."""
        return self.seed_base + clip * self.seed_stride

    def clip_count(
        self, num_prompts: int, audio_frames: int | None = None, *, pose_frames: int | None = None
    ) -> int:
        """Default number of clips for a prompt list of ``num_prompts`` entries.

        ``audio_frames``: feature frames of the speech (rule ``audio``); ``pose_frames``: frames
        of the pose video (rule ``pose``); without them these rules fall back to the official
        ``default_clips``.
        """
        if self.clip_count_rule == "pose":
            if pose_frames is None:
                return self.default_clips
            from .pose import clips_to_cover

            return clips_to_cover(pose_frames, self.frames, self.motion_frames)
        if self.clip_count_rule == "audio":
            if audio_frames is None:
                return self.default_clips
            from .talk.windows import clips_for_audio

            return clips_for_audio(audio_frames, self.frames, self.motion_frames)
        if self.clip_count_rule == "fixed" or self.prompt_policy == "first":
            return self.default_clips
        return max(1, min(self.default_clips, num_prompts * self.prompt_repeat))

    def video_length(self, num_clips: int) -> int:
        """Frames of the stitched video for ``num_clips`` clips."""
        if num_clips <= 0:
            return 0
        return self.frames + (num_clips - 1) * (self.frames - self.overlap_frames)


def _check(mode: ModeConfig) -> list[str]:
    p: list[str] = []
    bad_frames = L.frames_problem(mode.frames)
    if bad_frames:
        p.append(bad_frames)
        if not isinstance(mode.frames, int):
            return p  # the checks below compare against the frame count
    if mode.carry == "pixel":
        if not 1 <= mode.motion_frames < mode.frames:
            p.append(f"motion_frames={mode.motion_frames} must be in [1, frames - 1]")
        if mode.motion_latents != 0:
            p.append("motion_latents must be 0 for pixel carry")
    elif mode.carry == "latent":
        if not 1 <= mode.motion_latents <= mode.latent_frames - 1:
            p.append(
                f"motion_latents={mode.motion_latents} must be in [1, {mode.latent_frames - 1}]"
            )
        if mode.padding != "zeros":
            p.append("latent carry pads with zeros only")
        if mode.clip_vision:
            p.append("latent carry (Wan2.2) has no CLIP-vision input")
    else:
        p.append(f"carry={mode.carry!r} must be 'pixel' or 'latent'")
    if mode.padding not in ("zeros", "reference"):
        p.append(f"padding={mode.padding!r} must be 'zeros' or 'reference'")
    if mode.stitch not in ("drop_tail", "drop_head"):
        p.append(f"stitch={mode.stitch!r} must be 'drop_tail' or 'drop_head'")
    if mode.prompt_policy not in ("first", "cycle", "hold"):
        p.append(f"prompt_policy={mode.prompt_policy!r} must be 'first', 'cycle' or 'hold'")
    if mode.clip_count_rule not in ("fixed", "min_prompts", "audio", "pose"):
        p.append(
            f"clip_count_rule={mode.clip_count_rule!r} must be 'fixed', 'min_prompts', 'audio' "
            "or 'pose'"
        )
    if mode.resize not in ("fit_width", "fixed"):
        p.append(f"resize={mode.resize!r} must be 'fit_width' or 'fixed'")
    for problem in (
        L.number_problem("prompt_repeat", mode.prompt_repeat, 1, L.MAX_PROMPT_REPEAT, integer=True),
        L.number_problem("mask_frames", mode.mask_frames, 1, mode.latent_frames, integer=True),
        L.number_problem("steps", mode.steps, 1, L.MAX_STEPS, integer=True, hint="50 official"),
        L.number_problem("shift", mode.shift, *L.SHIFT_RANGE, hint="5 official"),
        L.number_problem("fps", mode.fps, *L.FPS_RANGE),
        L.number_problem("default_clips", mode.default_clips, 1, L.MAX_CLIPS, integer=True),
        L.number_problem("seed_base", mode.seed_base, 0, L.MAX_SEED, integer=True),
        L.number_problem("seed_stride", mode.seed_stride, 0, L.MAX_SEED_STRIDE, integer=True),
        L.number_problem("max_width", mode.max_width, L.MIN_SIDE, L.MAX_SIDE, integer=True),
    ):
        if problem:
            p.append(problem)
    if mode.guidance not in GUIDANCE_KINDS:
        p.append(f"guidance={mode.guidance!r} must be one of {', '.join(GUIDANCE_KINDS)}")
    else:  # guidance scales: svi_core.guidance.scale_problems (bound: limits.MAX_GUIDANCE)
        p += scale_problems("cfg", mode.cfg) + scale_problems("cfg_audio", mode.cfg_audio)
    if mode.timestep_dtype not in ("float32", "bfloat16"):
        p.append(f"timestep_dtype={mode.timestep_dtype!r} must be 'float32' or 'bfloat16'")
    if mode.boundary is not None and not 0.0 < mode.boundary < 1.0:  # also refuses nan
        p.append(f"boundary={mode.boundary} must be in (0, 1) or None")
    if mode.overlap is not None and not 0 <= mode.overlap < mode.frames:
        p.append(f"overlap={mode.overlap} must be in [0, frames - 1]")
    bad_size = L.size_problem(mode.width, mode.height)
    if bad_size:
        p.append(bad_size)
    if mode.max_width % 16:
        p.append(f"max_width={mode.max_width} must be a multiple of 16")
    return p


_WAN21 = dict(
    model="wan2.1",
    carry="pixel",
    motion_latents=0,
    clip_vision=True,
    stitch="drop_tail",
    cfg=5.0,
    negative_prompt=NEGATIVE_PROMPT_EN,
    fps=24.0,
    resize="fit_width",
)

# Shared by both Wan2.2 A14B modes (two experts, no CLIP vision, official Wan2.2 scripts).
_WAN22 = dict(
    model="wan2.2",
    clip_vision=False,
    stitch="drop_head",
    cfg=5.0,
    boundary=0.875,
    timestep_dtype="bfloat16",
    prompt_policy="hold",
    prompt_repeat=1,
    clip_count_rule="fixed",
    negative_prompt=NEGATIVE_PROMPT_ZH,
    fps=15.0,
    resize="fixed",
)

MODES: dict[str, ModeConfig] = {
    "shot": ModeConfig(
        name="shot",
        lora="svi-shot.safetensors",
        motion_frames=1,
        padding="reference",
        prompt_policy="first",
        prompt_repeat=1,
        clip_count_rule="fixed",
        default_clips=10,
        **_WAN21,
    ),
    "film": ModeConfig(
        name="film",
        lora="svi-film-opt-10212025.safetensors (or svi-film.safetensors)",
        motion_frames=5,
        padding="zeros",
        prompt_policy="cycle",
        prompt_repeat=1,
        clip_count_rule="min_prompts",
        default_clips=10,
        **_WAN21,
    ),
    "tom": ModeConfig(
        name="tom",
        lora="svi-tom.safetensors",
        motion_frames=1,
        padding="zeros",
        prompt_policy="cycle",
        prompt_repeat=1,
        clip_count_rule="min_prompts",
        default_clips=10,
        **_WAN21,
    ),
    "v2": ModeConfig(
        name="v2",
        lora="SVI_Wan2.1-I2V-14B_lora_v2.0.safetensors",
        motion_frames=5,
        padding="reference",
        prompt_policy="cycle",
        prompt_repeat=2,
        clip_count_rule="min_prompts",
        default_clips=999,
        **_WAN21,
    ),
    "v2_w22": ModeConfig(
        name="v2_w22",
        lora="SVI 2.0 Wan2.2 high/low-noise LoRAs",
        carry="pixel",
        motion_frames=1,
        motion_latents=0,
        padding="reference",
        overlap=1,
        default_clips=10,
        **_WAN22,
    ),
    "v2_pro": ModeConfig(
        name="v2_pro",
        lora="SVI_Wan2.2-I2V-A14B_high/low_noise_lora_v2.0_pro.safetensors",
        carry="latent",
        motion_frames=0,
        motion_latents=1,
        padding="zeros",
        default_clips=15,
        **_WAN22,
    ),
    # SVI-Talk (official test_svi_talk.py, scripts/test/svi_talk.sh,
    # diffsynth/pipelines/svi_video_talk.py): m = 1 (test_svi_talk.py:86-91), reference
    # padding (--ref_pad_num -1, :81-85), every frame kept (:304-308), text 2.0 / audio 5.0
    # over three passes (:45-56, svi_video_talk.py:448-466), 50 steps (hard-coded,
    # test_svi_talk.py:286), shift 5 (svi_video_talk.py:161), 25 fps (test_svi_talk.py:319),
    # 50 clips (svi_talk.sh:7), max width 640 (test_svi_talk.py:199), prompt "a person is
    # talking" (:138). The official seed is None (fresh torch.randn every run, :22): we keep
    # the fixed base + k * stride rule so that a run can resume.
    "talk": ModeConfig(
        name="talk",
        lora="svi-talk.safetensors + MeiGen-MultiTalk multitalk.safetensors",
        motion_frames=1,
        padding="reference",
        overlap=0,
        prompt_policy="first",
        prompt_repeat=1,
        clip_count_rule="audio",
        default_clips=50,
        max_width=640,
        guidance="text_audio",
        cfg_audio=5.0,
        conditions=("audio",),
        default_prompt="a person is talking",
        **{**_WAN21, "cfg": 2.0, "fps": 25.0},
    ),
    # SVI-Dance (official test_svi_dance.py, scripts/test/svi_dance.sh,
    # diffsynth/pipelines/svi_video_dance.py; every rule with its line in the project notes'
    # DANCE_RULES): m = 1 (svi_dance.sh:10), reference padding (--ref_pad_num -1, sh:7,
    # test:72-77), non-final clips drop their last frame (test:264-267), text CFG 2.0 with the
    # pose in BOTH passes (cond_wo_pose=True, test:259; svi_video_dance.py:423-433, so
    # uncond_null stays empty), 50 steps (sh:9), shift 5 (test:90-95), 25 fps (test:279), 10
    # clips (sh:8; our default plays the pose video once, see ClipCountRule), max width 640
    # (test:192-203), prompt "the person is dancing" (test:244), the English negative
    # (test:137). The official seed is None (fresh noise every run, test:27,251): we keep the
    # fixed base + k * stride rule so that a run can resume.
    "dance": ModeConfig(
        name="dance",
        lora="svi-dance.safetensors (LoRA + pose embedding)",
        motion_frames=1,
        padding="reference",
        prompt_policy="first",
        prompt_repeat=1,
        clip_count_rule="pose",
        default_clips=10,
        max_width=640,
        conditions=("pose",),
        default_prompt="the person is dancing",
        **{**_WAN21, "cfg": 2.0, "fps": 25.0},
    ),
}
"""The official presets. Values and where they come from: DESIGN.md §2-§3 (Talk: the comment
above and the project notes' TALK_RULES)."""


def clip_vision_problem(mode: ModeConfig, given: bool, how: str) -> str | None:
    """The one rule for the CLIP-vision input: a mode whose DiT takes a CLIP-vision feature
    (``mode.clip_vision``: the Wan2.1 I2V modes) needs an image encoder. None when satisfied,
    else the sentence every front end shows, ending with ``how`` to fix it (the CLI's flag or
    the node's input)."""
    if mode.clip_vision and not given:
        return (
            f"mode {mode.name!r} runs Wan2.1 I2V 14B, which needs CLIP vision "
            f"(clip_vision_h.safetensors): {how}"
        )
    return None


def mode_names() -> list[str]:
    """Names of the presets, in a stable order."""
    return list(MODES)


def get_mode(name: str | ModeConfig, **overrides: object) -> ModeConfig:
    """A preset by name with optional field overrides, e.g. ``get_mode("film", cfg=4.0)``.

    Raises:
        SVIError: unknown mode name or field, or a value that breaks the mode's rules.
    """
    if isinstance(name, ModeConfig):
        base = name
    else:
        key = str(name).strip().lower().replace("-", "_")
        if key not in MODES:
            raise SVIError(
                f"unknown SVI mode {name!r}; expected one of {', '.join(MODES)}"
                " (shot/film/tom/v2/talk/dance = Wan2.1, v2_w22/v2_pro = Wan2.2 A14B)"
            )
        base = MODES[key]
    fields = {f.name for f in dataclasses.fields(ModeConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise SVIError(
            f"unknown mode setting(s) {', '.join(unknown)} for mode {base.name!r}; "
            f"valid settings: {', '.join(sorted(fields - {'name'}))}"
        )
    clean = {k: v for k, v in overrides.items() if v is not None or k in ("boundary", "overlap")}
    return dataclasses.replace(base, **clean) if clean else base
