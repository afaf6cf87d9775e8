"""The infinite clip loop: clip after clip over a :class:`~svi_core.backend.Backend`.

Per clip k: seed ``base + k * stride``; noise from a CPU ``torch.Generator`` (float32,
``[1, 16, T, H/8, W/8]``); conditioning per mode (:mod:`svi_core.conditioning`); denoise;
decode; quantise to uint8 exactly as stored; stitch (drop the tail of every non-final clip, or
the head of every clip after the first); stream the kept frames to disk; persist the carry.
Every finished clip is committed to the run directory (:mod:`svi_core.run_store`), so a crash
or a cancel loses at most the clip in progress and a rerun with the same settings resumes.

What clip k is made of (seed, prompt, guidance, reference, extra per-clip conditions such as
SVI-Talk's audio window) is its :class:`~svi_core.conditions.ClipPlan`: the mode's values,
rewritten by the run's per-clip conditions. :func:`prepare_run` validates a run and computes
its identity (the one function the CLI, the ComfyUI node and the loop use); :func:`open_run`
opens (or creates) its run directory for it.

Memory does not grow with the number of clips: at most two clips' frames are held (the one
being generated and the previous one, while its segment is encoded in the background).
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from . import limits
from .backend import Backend, ClipRequest
from .conditioning import (
    KEYFRAME_SLOTS,
    Carry,
    Keyframe,
    anchor_latent,
    build_conditioning,
    carry_from_clip,
    keyframe_latent,
    quantise_frames,
)
from .conditions import ClipCondition, ClipPlan, conditions_identity
from .drift_guard import ColourTransfer, DriftGuard, guard_clip
from .errors import Cancelled, SVIError
from .extend import VideoStart, prefix_identity
from .latents import LATENT_CHANNELS
from .log import logger
from .modes import ModeConfig
from .prompts import PromptStream
from .run_store import (
    NOT_RECORDED,
    ClipRecord,
    RunStore,
    check_writable,
    fingerprint,
    input_fingerprints,
    sha256_tensor,
)
from .video_io import DEFAULT_CRF

P = TypeVar("P")

ClipStepCallback = Callable[[int, int, int], None]
"""``on_step(clip_index, step_done, total_steps)``; may raise ``Cancelled``."""


@dataclass(frozen=True)
class RunSettings:
    """Everything that decides the clips of a run, plus the clip count.

    Attributes:
        mode: the SVI mode (with any overrides: cfg, steps, seed_base, frames, ...).
        width, height: video size in pixels (multiples of 16).
        num_clips: clips to have in the run when done (a finished run can be extended).
        crf: x264 quality of the streamed segments.
        drift_guard: colour correction at the seams (:mod:`svi_core.drift_guard`; off =
            official SVI).
    """

    mode: ModeConfig
    width: int
    height: int
    num_clips: int
    crf: int = DEFAULT_CRF
    drift_guard: DriftGuard = field(default_factory=DriftGuard)

    def identity(self) -> dict[str, Any]:
        """The JSON-able settings a run directory is bound to (everything but ``num_clips``
        and :data:`INFORMATIVE_MODE_FIELDS`: the LoRA weights themselves are bound through the
        run's inputs)."""
        d = dataclasses.asdict(self.mode)
        for name in INFORMATIVE_MODE_FIELDS:
            d.pop(name)
        d.update(width=self.width, height=self.height, crf=self.crf)
        d["drift_guard"] = self.drift_guard.identity()
        return d

    def validate(self) -> None:
        """Raise SVIError for settings no model can run (before any work starts), listing
        every problem; the bounds are :mod:`svi_core.limits`'."""
        m = self.mode
        problems = [
            limits.frames_problem(m.frames),
            limits.size_problem(self.width, self.height),
            limits.number_problem("num_clips", self.num_clips, 1, limits.MAX_CLIPS, integer=True),
            limits.number_problem(
                "crf", self.crf, *limits.CRF_RANGE, integer=True, hint="16 default"
            ),
        ]
        if isinstance(self.num_clips, int) and 1 <= self.num_clips <= limits.MAX_CLIPS:
            problems.append(limits.seed_problem(m.seed_base, m.seed_stride, self.num_clips))
        try:
            self.drift_guard.validate()
        except SVIError as e:
            problems.append(str(e))
        found = [p for p in problems if p]
        if found:
            raise SVIError("; ".join(found))


INFORMATIVE_MODE_FIELDS = tuple(
    f.name for f in dataclasses.fields(ModeConfig) if not f.metadata.get("identity", True)
)
"""ModeConfig fields that describe a mode but do not bind a run (``lora``, the file hint)."""


def identity_defaults() -> dict[str, Any]:
    """What a setting or input that an older run directory did not record stood for.

    Every :class:`ModeConfig` field with a default (fields added later get one that keeps
    the earlier behaviour), no per-clip conditions, and no extra inputs. Used when a run
    directory made by an earlier version is resumed.
    """
    out: dict[str, Any] = {"clip_conditions": {}, "drift_guard": DriftGuard().identity()}
    for f in dataclasses.fields(ModeConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = json.loads(json.dumps(f.default))
    # informative fields recorded by earlier versions are not compared (the LoRA file-name
    # hint changed when the official files were renamed; it is not a property of the video)
    out.update(dict.fromkeys(INFORMATIVE_MODE_FIELDS, NOT_RECORDED))
    return out


@dataclass(frozen=True)
class ClipResult:
    """A finished clip as reported to ``on_clip``.

    Attributes:
        record: its manifest entry. kept: the uint8 frames ``[N, H, W, 3]`` it contributes.
        latent: its final NORMALISED latent ``[1, 16, T, h, w]``.
        plan: what it was made of.
    """

    record: ClipRecord
    kept: torch.Tensor
    latent: torch.Tensor
    plan: ClipPlan | None = None


@dataclass(frozen=True)
class RunResult:
    """Outcome of :func:`run_clips`.

    Attributes:
        run_dir: the run directory. video: the joined mp4 (None if not asked).
        clips_done: finished clips in the run. clips_generated: clips generated by this call.
        frames: frames in the stitched video.
        last_latent: the last clip's final NORMALISED latent ``[1, 16, T, h, w]``.
        last_frames: the video's last frames, uint8 ``[n, H, W, 3]``: what a continuation
            needs (``max(1, motion frames, overlap)`` frames), read from the run store.
    """

    run_dir: Path
    video: Path | None
    clips_done: int
    clips_generated: int
    frames: int
    last_latent: torch.Tensor | None = None
    last_frames: torch.Tensor | None = None


@dataclass(frozen=True)
class LoopInputs(Generic[P]):
    """The inputs of a run.

    Attributes:
        reference: the resized reference image, uint8 ``[H, W, 3]`` (H, W = settings size).
        prompts: the prompt items (strings or backend-specific conditioning objects).
        negative: backend-specific negative conditioning; None = the mode's negative prompt.
        fingerprints: extra input fingerprints for the run directory (model / LoRA files,
            sampler); ``prompts`` may be overridden here when items are not strings.
        prompt_keys: one fingerprint per prompt item (recorded per clip); default: a hash of
            the item (give the prompt texts' hashes when items are large conditioning tensors).
        conditions: the run's per-clip conditions (:mod:`svi_core.conditions`), applied in
            this order to every clip's plan.
        start: a video to continue (:mod:`svi_core.extend`): clip 0 continues from its end
            and the output is that video followed by the clips; None = start from
            ``reference``.
    """

    reference: torch.Tensor
    prompts: Sequence[P]
    negative: Any = None
    fingerprints: Mapping[str, str] | None = None
    prompt_keys: Sequence[str] | None = None
    conditions: tuple[ClipCondition, ...] = field(default=())
    start: VideoStart | None = None


@dataclass(frozen=True)
class RunIdentity:
    """What a run directory is bound to: settings and input fingerprints (JSON-able), and the
    defaults that keys missing from an older run directory stand for."""

    settings: dict[str, Any]
    inputs: dict[str, str]
    defaults: dict[str, Any]


def _release_heap() -> None:
    """Hand freed heap memory back to the OS between clips (glibc only; a no-op elsewhere).

    glibc raises its mmap threshold after large frees, so clip-sized buffers (decoded pixels,
    frames) are later served from the heap and stay resident: peak RSS then drifts upwards
    over a long run although nothing is kept. ``malloc_trim(0)`` after each clip keeps the
    footprint flat; it costs milliseconds.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = False
        if sys.platform.startswith("linux"):
            try:
                _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


def clip_noise(seed: int, latent_frames: int, height: int, width: int) -> torch.Tensor:
    """``torch.randn`` from a CPU generator seeded with ``seed``: float32 ``[1, 16, T, h, w]``
    (h, w = LATENT size), the same noise as the official scripts."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(
        (1, LATENT_CHANNELS, latent_frames, height, width), generator=gen, dtype=torch.float32
    )


def stitch_bounds(
    mode: ModeConfig, index: int, frames: int, continues: bool = False
) -> tuple[int, int]:
    """``(first_kept, seam)`` of a clip of ``frames`` frames: the stitched video keeps frames
    ``[first_kept, seam)``; frames from ``seam`` on are its tail (drop_tail: the next clip
    replaces them; they end the video only if this clip is the last).

    ``drop_tail``: seam = F - overlap; ``drop_head``: seam = F, and every clip after the first
    drops its first ``overlap`` frames. ``continues``: clip 0 continues a video (extend), so it
    also drops the ``overlap`` frames it re-renders from the video's end, and the video is
    kept whole.
    """
    o = mode.overlap_frames
    head = o if (index > 0 and mode.stitch == "drop_head") or (index == 0 and continues) else 0
    seam = frames - o if mode.stitch == "drop_tail" else frames
    return head, seam


def stitch(
    mode: ModeConfig, index: int, frames: torch.Tensor, continues: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split a clip's uint8 frames ``[F, H, W, 3]`` into (kept, tail) (:func:`stitch_bounds`)."""
    head, seam = stitch_bounds(mode, index, int(frames.shape[0]), continues)
    return frames[head:seam], (frames[seam:] if seam < frames.shape[0] else None)


@dataclass(frozen=True)
class PreparedRun:
    """A validated run: settings, inputs, the prompt stream, and the run identity.

    Made by :func:`prepare_run` (no model work, no file written). :meth:`plan` gives clip
    k's plan; :meth:`open` opens the run directory for it.
    """

    settings: RunSettings
    inputs: LoopInputs[Any]
    stream: PromptStream[Any]
    prompt_keys: tuple[str, ...]
    identity: RunIdentity

    @property
    def negative(self) -> Any:
        n = self.inputs.negative
        return n if n is not None else self.settings.mode.negative_prompt

    def plan(self, k: int) -> ClipPlan:
        """Clip ``k``'s plan: the mode's values, then every per-clip condition in order."""
        mode = self.settings.mode
        idx = self.stream.index(k)
        plan = ClipPlan(
            index=k,
            seed=mode.seed_for(k),
            prompt_index=idx,
            prompt_key=self.prompt_keys[idx],
            positive=self.stream[k],
            negative=self.negative,
            guidance=mode.guidance_for(),
            reference=self.inputs.reference,
        )
        for condition in self.inputs.conditions:
            plan = condition.for_clip(plan, self.settings)
        _check_plan(plan, self.settings)
        return plan

    def open(self, run_dir: str | Path) -> RunStore:
        """Open (or create) ``run_dir`` for this run, locked; finished clips are checked
        against their plans (a finished clip that would now be made differently is refused).

        Raises:
            RunStoreError: another run's directory, one in use, damaged or not writable.
        """
        ident = self.identity
        store = RunStore.open(run_dir, ident.settings, ident.inputs, defaults=ident.defaults)
        self.verify(store)
        return store

    def verify(self, store: RunStore) -> None:
        """Check an open store against this run (closing it and raising RunStoreError when it
        belongs to another run or a finished clip would now be made differently)."""
        ident = self.identity
        try:
            store.check_identity(ident.settings, ident.inputs, ident.defaults)
            upto = min(store.clips_done, self.settings.num_clips)
            store.check_plans(lambda k: self.plan(k).identity(), upto)
        except BaseException:
            store.close()
            raise


def _check_plan(plan: ClipPlan, settings: RunSettings) -> None:
    if plan.keyframe is not None and plan.keyframe_slot not in KEYFRAME_SLOTS:
        raise SVIError(
            f"clip {plan.index}: keyframe slot {plan.keyframe_slot!r} must be one of "
            f"{', '.join(KEYFRAME_SLOTS)}"
        )
    ref = plan.reference
    want = (settings.height, settings.width, 3)
    for name, img in (("reference", ref), ("keyframe", plan.keyframe)):
        if img is None:
            continue
        if (
            not isinstance(img, torch.Tensor)
            or img.dtype != torch.uint8
            or tuple(img.shape) != want
        ):
            got = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise SVIError(
                f"clip {plan.index}: the {name} image must be uint8 {list(want)} (the video "
                f"size); got {got}. Resize it to the video size first"
            )


def validate_inputs(settings: RunSettings, inputs: LoopInputs[Any]) -> PromptStream[Any]:
    """Check settings and inputs before any work; returns the prompt stream."""
    settings.validate()
    ref = inputs.reference
    if not isinstance(ref, torch.Tensor) or ref.dtype != torch.uint8 or ref.ndim != 3:
        raise SVIError("the reference image must be a uint8 tensor [H, W, 3]")
    if tuple(ref.shape) != (settings.height, settings.width, 3):
        raise SVIError(
            f"the reference image is {ref.shape[1]}x{ref.shape[0]}, the video "
            f"{settings.width}x{settings.height}; resize it to the video size first"
        )
    have = {c.name for c in inputs.conditions}
    missing = [name for name in settings.mode.conditions if name not in have]
    if missing:
        raise SVIError(
            f"mode {settings.mode.name!r} needs the per-clip condition(s) {', '.join(missing)} "
            "(e.g. --audio for talk, --pose for dance); none was given"
        )
    for condition in inputs.conditions:
        condition.validate(settings)
    if inputs.start is not None:
        inputs.start.check(settings.mode, settings.width, settings.height)
    return PromptStream.for_mode(inputs.prompts, settings.mode)


def prepare_run(settings: RunSettings, inputs: LoopInputs[Any]) -> PreparedRun:
    """Validate a run and compute its identity (the ONE place it is computed).

    Settings identity: the mode, size and video quality, plus each per-clip condition's
    run-level settings. Input identity: the resized reference, the prompts, a non-default
    negative, and ``inputs.fingerprints`` (models, LoRAs, sampler).

    Raises:
        SVIError: bad settings or inputs.
    """
    stream = validate_inputs(settings, inputs)
    keys = inputs.prompt_keys
    if keys is None:
        keys = [fingerprint(p) for p in inputs.prompts]
    elif len(keys) != len(inputs.prompts):
        raise SVIError(
            f"{len(keys)} prompt keys for {len(inputs.prompts)} prompts; give one per prompt"
        )
    ident = settings.identity()
    conds = conditions_identity(tuple(inputs.conditions))
    if conds:
        ident["clip_conditions"] = conds
    fps = input_fingerprints(
        inputs.reference, inputs.prompts, inputs.fingerprints, negative=inputs.negative
    )
    fps.update(prefix_identity(inputs.start))
    ident, fps = json.loads(json.dumps([ident, fps]))  # the manifest's JSON form
    identity = RunIdentity(settings=ident, inputs=fps, defaults=identity_defaults())
    return PreparedRun(
        settings=settings,
        inputs=inputs,
        stream=stream,
        prompt_keys=tuple(str(k) for k in keys),
        identity=identity,
    )


def open_run(run_dir: str | Path, settings: RunSettings, inputs: LoopInputs[Any]) -> RunStore:
    """:func:`prepare_run` then :meth:`PreparedRun.open`: the run directory, locked."""
    return prepare_run(settings, inputs).open(run_dir)


def check_output(output: str | Path) -> None:
    """Refuse an output video path that cannot be written (before any model is loaded)."""
    out = Path(output)
    if out.is_dir():
        raise SVIError(f"output {out} is a folder; give a file name ending in .mp4")
    check_writable(out.parent if str(out.parent) else Path("."), "the output folder")


class _ClipMaker:
    """Turns clip k's plan and carry into frames (the part resume repair reuses)."""

    def __init__(self, backend: Backend, run: PreparedRun) -> None:
        self.backend = backend
        self.run = run
        self._anchors: dict[str, torch.Tensor] = {}

    def anchor(self, reference: torch.Tensor) -> torch.Tensor:
        key = sha256_tensor(reference)
        if key not in self._anchors:
            self._anchors[key] = anchor_latent(self.backend, reference)
        return self._anchors[key]

    def keyframe(self, plan: ClipPlan) -> tuple[Keyframe | None, torch.Tensor | None]:
        """The plan's keyframe and, for latent carry, its latent (encoded once per image)."""
        if plan.keyframe is None:
            return None, None
        key = Keyframe(plan.keyframe, plan.keyframe_slot)  # type: ignore[arg-type]
        if self.run.settings.mode.carry != "latent":
            return key, None
        cache = f"keyframe:{key.slot}:{sha256_tensor(key.image)}"
        if cache not in self._anchors:
            self._anchors[cache] = keyframe_latent(self.backend, key)
        return key, self._anchors[cache]

    def request(self, plan: ClipPlan, carry: Carry | None) -> ClipRequest:
        settings = self.run.settings
        mode = settings.mode
        anchor = self.anchor(plan.reference) if mode.carry == "latent" else None
        key, key_lat = self.keyframe(plan)
        cond = build_conditioning(
            self.backend, mode, plan.reference, carry, anchor, keyframe=key, keyframe_lat=key_lat
        )
        clip_fea = None
        if mode.clip_vision and cond.clip_frame is not None:
            clip_fea = self.backend.encode_clip_vision(cond.clip_frame)
        return ClipRequest(
            index=plan.index,
            seed=plan.seed,
            noise=clip_noise(
                plan.seed, mode.latent_frames, settings.height // 8, settings.width // 8
            ),
            cond_latent=cond.cond_latent,
            mask=cond.mask,
            positive=plan.positive,
            negative=plan.negative,
            clip_vision=clip_fea,
            steps=mode.steps,
            shift=mode.shift,
            guidance=plan.guidance,
            boundary=mode.boundary,
            timestep_dtype=mode.timestep_dtype,
            extras=dict(plan.extras),
            lora_strengths=dict(plan.lora_strengths),
        )

    def frames(self, latent: torch.Tensor) -> torch.Tensor:
        """Decoded uint8 frames ``[F, H, W, 3]`` of a NORMALISED clip latent."""
        frames = quantise_frames(self.backend.decode(latent))
        if frames.shape[0] != self.run.settings.mode.frames:
            raise RuntimeError(
                f"the backend decoded {frames.shape[0]} frames; expected "
                f"{self.run.settings.mode.frames}"
            )
        return frames

    # ----- after decoding: the drift guard (post-decode hook) ------------------------------

    @property
    def continues(self) -> bool:
        """Clip 0 continues a video (extend)."""
        return self.run.inputs.start is not None

    def finish(
        self,
        plan: ClipPlan,
        latent: torch.Tensor,
        transfer_in: ColourTransfer | None,
        recorded: Mapping[str, torch.Tensor] | None = None,
    ) -> FinishedClip:
        """Decode a clip and apply the post-decode processing (the drift guard).

        ``transfer_in``: the previous seam's colour transfer (None for clip 0). ``recorded``:
        a finished clip's stored tensors; their transfers are reused (segment repair), so the
        same frames come out.
        """
        mode = self.run.settings.mode
        frames = self.frames(latent)
        guard = self.run.settings.drift_guard
        if not guard.on:
            return FinishedClip(frames, carry_from_clip(mode, latent, frames), {}, None)
        first_kept, seam = stitch_bounds(mode, plan.index, frames.shape[0], self.continues)
        out = None
        if recorded is not None:
            out = ColourTransfer.from_array(recorded["guard_out"].numpy())
            t_in = recorded.get("guard_in")
            transfer_in = None if t_in is None else ColourTransfer.from_array(t_in.numpy())
        g = guard_clip(
            guard,
            frames.numpy(),
            plan.reference.numpy(),
            first_kept=first_kept,
            seam=seam,
            transfer_in=transfer_in,
            transfer_out=out,
        )
        state = {"guard_out": torch.from_numpy(g.transfer_out.to_array())}
        if g.transfer_in is not None:
            state["guard_in"] = torch.from_numpy(g.transfer_in.to_array())
        corrected = torch.from_numpy(g.frames)
        carry = carry_from_clip(
            mode, latent, torch.from_numpy(np.ascontiguousarray(g.carry_frames))
        )
        return FinishedClip(corrected, carry, state, g.transfer_out)

    def repair(self, store: RunStore) -> Callable[[int], torch.Tensor]:
        """A segment repair function: clip k's kept frames from its stored latent (and the
        drift guard's recorded transfers)."""

        def kept(k: int) -> torch.Tensor:
            state = store.load_state(k)
            done = self.finish(self.run.plan(k), state["latent"], None, recorded=state)
            return stitch(self.run.settings.mode, k, done.frames, self.continues)[0]

        return kept


@dataclass(frozen=True)
class FinishedClip:
    """A decoded clip after the post-decode processing.

    Attributes:
        frames: uint8 ``[F, H, W, 3]`` for the video. carry: what the next clip continues from.
        state: extra tensors for the clip file. transfer_out: the drift guard's transfer of
        the seam after this clip (None when the guard is off).
    """

    frames: torch.Tensor
    carry: Carry
    state: dict[str, torch.Tensor]
    transfer_out: ColourTransfer | None


def _last_outputs(store: RunStore, mode: ModeConfig, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    state = store.load_state(n - 1)
    count = max(1, mode.motion_frames, mode.overlap_frames)
    motion = state.get("motion")
    if motion is not None and motion.shape[0] >= count:
        last = motion[-count:]
    else:
        last = store.last_frames(n, count)
    return state["latent"].float(), last


VIDEO_ONLY = "video_only.mp4"
"""The video-only join kept in the run directory when a condition finishes the video itself."""


def _join(store: RunStore, output: str | Path, n: int, run: PreparedRun, maker: _ClipMaker) -> Path:
    """Join the first ``n`` clips into ``output``. A per-clip condition with a
    ``finish_video(video, output, n, settings, run_dir) -> Path`` step (SVI-Talk muxes the speech)
    gets the video-only join, kept in the run directory as ``VIDEO_ONLY`` (the segments stay the
    resumable truth), and writes ``output`` from it."""
    s = run.settings
    finishers = [c for c in run.inputs.conditions if hasattr(c, "finish_video")]
    target = store.root / VIDEO_ONLY if finishers else Path(output)
    video = store.build_video(target, n, fps=s.mode.fps, crf=s.crf, repair=maker.repair(store))
    for condition in finishers:
        video = condition.finish_video(video, Path(output), n, s, store.root)
    return video


def _write_prefix(store: RunStore, start: VideoStart, settings: RunSettings) -> None:
    """Write the video a run continues into the run directory (once; again if damaged)."""
    mode = settings.mode

    def write(target: Path, folder: Path) -> bool:
        return start.write_prefix(target, mode.fps, settings.crf, folder)

    store.set_prefix(start.fingerprint, start.frames, write)


def run_clips(
    backend: Backend,
    settings: RunSettings,
    inputs: LoopInputs[Any],
    run_dir: str | Path | RunStore,
    *,
    output: str | Path | None = None,
    on_step: ClipStepCallback | None = None,
    on_clip: Callable[[ClipResult], None] | None = None,
) -> RunResult:
    """Generate (or resume, or extend) a run of ``settings.num_clips`` clips.

    Finished clips in ``run_dir`` are reused; generation starts after the last one. When
    ``output`` is given, the stitched mp4 is (re)built there at the end, and also after a
    cancel (from the clips finished so far) before ``Cancelled`` propagates. ``run_dir`` may
    be a store already opened for this run (:func:`open_run`); it is closed on return.

    Raises:
        SVIError: bad settings or inputs (before any work). RunStoreError: ``run_dir`` holds
            another run, is in use, or cannot be written. Cancelled: ``on_step`` cancelled;
            finished clips stay valid.
    """
    run = prepare_run(settings, inputs)
    if output is not None:
        check_output(output)
    if isinstance(run_dir, RunStore):
        store = run_dir
        run.verify(store)
    else:
        store = run.open(run_dir)
    mode = settings.mode
    maker = _ClipMaker(backend, run)
    start = store.clips_done
    if start == 0:
        logger.info("new run %s: %d clips", store.root, settings.num_clips)
    elif start < settings.num_clips:
        logger.info(
            "resuming run %s after %d finished clips (%d to go)",
            store.root,
            start,
            settings.num_clips - start,
        )
    else:
        logger.info("run %s already has %d clips; nothing to generate", store.root, start)
    if settings.drift_guard.mode == "carry" and mode.carry == "latent":
        logger.info(
            "drift guard 'carry' with latent carry (mode %s): the carried latent is kept as the "
            "official loop keeps it (every latent correction measured on the toy VAE lost "
            "structure over 50 clips; README 'Drift guard'); the saved frames are corrected as "
            "with 'output'",
            mode.name,
        )
    carry: Carry | None = None
    transfer: ColourTransfer | None = None
    try:
        if inputs.start is not None:
            _write_prefix(store, inputs.start, settings)
        if start == 0 and inputs.start is not None and settings.num_clips > 0:
            carry = inputs.start.carry(backend, mode)
        elif 0 < start < settings.num_clips:
            state = store.load_state(start - 1)
            carry = Carry(motion_frames=state.get("motion"), latent=state["latent"])
            if "guard_out" in state:
                transfer = ColourTransfer.from_array(state["guard_out"].numpy())
    except BaseException:
        store.close()
        raise

    generated = 0
    try:
        for k in range(start, settings.num_clips):
            plan = run.plan(k)
            request = maker.request(plan, carry)
            step_cb = None if on_step is None else (lambda d, t, _k=k: on_step(_k, d, t))
            logger.info(
                "clip %d/%d: seed %d, prompt %d, %s",
                k + 1,
                settings.num_clips,
                plan.seed,
                plan.prompt_index,
                plan.guidance.describe(),
            )
            latent = backend.denoise(request, step_cb).float().cpu()
            del request
            done = maker.finish(plan, latent, transfer)
            frames, carry, transfer = done.frames, done.carry, done.transfer_out
            kept, tail = stitch(mode, k, frames, maker.continues)
            rec = store.commit_clip(
                index=k,
                seed=plan.seed,
                prompt_index=plan.prompt_index,
                latent=latent,
                motion=carry.motion_frames,
                kept=kept,
                tail=tail,
                fps=mode.fps,
                crf=settings.crf,
                plan=plan.identity(),
                extra_state=done.state,
            )
            generated += 1
            if on_clip is not None:
                on_clip(ClipResult(record=rec, kept=kept, latent=latent, plan=plan))
            del frames, kept, tail, latent, done
            _release_heap()
    except Cancelled:
        try:
            store.flush()
            logger.info("cancelled after %d finished clips; rerun to resume", store.clips_done)
            if output is not None and store.clips_done > 0:
                n = min(store.clips_done, settings.num_clips)
                _join(store, output, n, run, maker)
        finally:
            store.close()
        raise
    except BaseException:
        try:
            store.close()
        except Exception as e:  # keep the original error; this one is secondary
            logger.error("a pending clip write failed as well: %s", e)
        raise
    try:
        store.flush()
        n = min(store.clips_done, settings.num_clips)
        video = None
        if output is not None:
            video = _join(store, output, n, run, maker)
        last_latent, last_frames = _last_outputs(store, mode, n)
        result = RunResult(
            run_dir=store.root,
            video=video,
            clips_done=store.clips_done,
            clips_generated=generated,
            frames=store.video_frames(n),
            last_latent=last_latent,
            last_frames=last_frames,
        )
    finally:
        store.close()
    logger.info("run %s finished: %d clips, %d frames", store.root, n, result.frames)
    return result
