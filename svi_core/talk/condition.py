"""SVI-Talk's per-clip condition: each clip's speech window, through the loop's condition seam.

:class:`AudioCondition` is a :class:`~svi_core.conditions.ClipCondition` named ``"audio"``. For clip
k it puts an :class:`AudioWindow` into the plan's extras: the feature frames that drive the clip
(official ``test_svi_talk.py:277-280``: start ``0`` for clip 0, ``81 k - m`` after; windows of
``diffsynth/pipelines/svi_video_talk.py:412-446``, see :mod:`svi_core.talk.windows`). A backend's
``"audio"`` hook turns the window into MultiTalk audio tokens and runs the unconditional pass with the
null audio (zero windows, ``svi_video_talk.py:550``).

Identity. The condition's run-level identity is HOW speech becomes features (encoder kind, layers x
channels, feature order, rate, window, loudness target): :class:`AudioFeatureSettings`, never the
audio bytes. Each clip's window is identified in the clip's plan by the 16 kHz samples (before the
loudness gain) that its feature frames cover, ``[lo * 640, (hi + 1) * 640)`` for feature frames
``lo .. hi`` (window context included, clamped to the recording). So a longer recording of the same
speech extends a finished run: the finished clips keep their identity and the new clips use the new
audio. (wav2vec2 encodes the whole recording at once, ``svi_video_talk.py:412-414``, and its first
GroupNorm and the self-attention see every sample, so the features of a window shift very slightly
when the recording grows; the clips already made stay as they were.) A clip whose window ran past the
end of the old recording (the official code then repeats the last feature frame, a frozen mouth)
changes with a longer recording and is refused on resume, naming the clip.

Features are computed lazily, once, the first time a backend asks for a window (the whole recording
in one wav2vec2 call, official order: :func:`svi_core.standalone.wav2vec.wav2vec2_features` or the
ComfyUI node's equivalent on core's modules). Planning a clip does no model work.

The finished video gets the speech at the join (:meth:`AudioCondition.finish_video`, called by the
loop after the video-only join): the segments and the video-only join stay the resumable truth.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from ..errors import SVIError
from ..log import logger
from .audio import SAMPLE_RATE, AudioTrack, write_wav
from .loudness import TARGET_LUFS
from .mux import AudioAlign, audio_segments, mux_audio
from .windows import (
    AUDIO_FPS,
    AUDIO_WINDOW,
    VAE_SCALE,
    audio_window_start,
    check_audio_covers_clip,
    clip_audio_windows,
    clips_for_audio,
    null_audio_windows,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..conditions import ClipPlan
    from ..loop import RunSettings

__all__ = [
    "AudioCondition",
    "AudioFeatureSettings",
    "AudioFeatures",
    "AudioWindow",
    "FeatureOrder",
]

FeatureOrder = Literal["official", "core"]
"""``official``: CNN features interpolated to 25 fps BEFORE the transformer
(``utils/src/audio_analysis/wav2vec2.py:13-64``). ``core``: ComfyUI core's AUDIO_ENCODER_OUTPUT
(transformer at 50 Hz, layer outputs interpolated to 25 fps after; not what SVI-Talk was trained on)."""

SPEECH_FILE = "speech.wav"
"""The run directory's copy of in-memory speech (ComfyUI's AUDIO), the source of the muxed track."""


@dataclass(frozen=True)
class AudioFeatureSettings:
    """How speech becomes the features of a run (the audio condition's identity).

    Attributes:
        encoder: what computed them (e.g. ``"wav2vec2 12x768 do_normalize=False"``).
        layers, channels: feature shape per frame (``[T_a, layers, channels]``; 12 x 768 for
            chinese-wav2vec2-base).
        order: see :data:`FeatureOrder`.
        fps: feature frames per second = the video frame rate (25, ``utils/audio_process.py:20``).
        window, vae_scale: audio context per frame (5) and video frames per latent frame (4).
        sample_rate: rate the encoder reads (16 kHz).
        loudness_target: LUFS the speech is normalised to (-23, ``utils/audio_process.py:10-16``);
            None when not normalised (ComfyUI core features).
    """

    encoder: str
    layers: int = 12
    channels: int = 768
    order: FeatureOrder = "official"
    fps: float = AUDIO_FPS
    window: int = AUDIO_WINDOW
    vae_scale: int = VAE_SCALE
    sample_rate: int = SAMPLE_RATE
    loudness_target: float | None = TARGET_LUFS

    def identity(self) -> dict[str, Any]:
        return {"kind": "audio", **asdict(self)}


class AudioFeatures:
    """The frame-indexed features ``[T_a, layers, channels]`` (float32, CPU) of one recording,
    given or computed on first use by ``compute()`` (then kept).

    ``frames`` is ``T_a``, known before computing (``int(seconds * 25)``); the computed tensor must
    have that many frames.
    """

    def __init__(
        self,
        frames: int,
        *,
        compute: Callable[[], torch.Tensor] | None = None,
        features: torch.Tensor | None = None,
        source: str = "audio",
    ) -> None:
        if (compute is None) == (features is None):
            raise ValueError("give exactly one of compute and features")
        self.frames = int(frames)
        self.source = source
        self._compute = compute
        self._features: torch.Tensor | None = None
        if features is not None:
            self._features = self._check(features)

    def _check(self, f: torch.Tensor) -> torch.Tensor:
        if not isinstance(f, torch.Tensor) or f.ndim != 3 or f.shape[0] != self.frames:
            got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise SVIError(
                f"{self.source}: expected speech features [{self.frames}, layers, channels]; got {got}"
            )
        if not torch.isfinite(f).all():
            raise SVIError(f"{self.source}: the speech features contain NaN/inf")
        return f.detach().float().cpu().contiguous()

    @property
    def ready(self) -> bool:
        """Whether the features are computed."""
        return self._features is not None

    def get(self) -> torch.Tensor:
        """``[T_a, layers, channels]`` float32 (computed now if needed)."""
        if self._features is None:
            assert self._compute is not None
            logger.info("computing speech features of %s (%d frames)", self.source, self.frames)
            self._features = self._check(self._compute())
            self._compute = None
        return self._features


@dataclass(frozen=True, eq=False)
class AudioWindow:
    """One clip's audio (the payload of ``ClipPlan.extras["audio"]``).

    Attributes:
        start: the clip's first feature frame (``0`` or ``F k - m``).
        frames: video frames of the clip (81).
        window, vae_scale: see :class:`AudioFeatureSettings`.
        key: the window's identity (recorded per clip by the run store).
        features: the recording's features (computed on first use).
    """

    start: int
    frames: int
    window: int
    vae_scale: int
    key: str
    features: AudioFeatures

    def fingerprint(self) -> str:
        """What the run store records for this window (see the module docstring)."""
        return self.key

    def windows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """MultiTalk input of the clip: ``(first [1, 1, 5, L, C], latter [1, T - 1, 8, L, C])``
        float32 (:func:`svi_core.talk.clip_audio_windows`)."""
        return clip_audio_windows(
            self.features.get(), self.start, self.frames, self.window, self.vae_scale
        )

    def null_windows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The unconditional pass's audio: zero windows of the same shapes (official
        ``preprocess_audio(zeros_like(audio_embed))``, ``svi_video_talk.py:550``)."""
        f = self.features.get()
        return null_audio_windows(
            int(f.shape[1]), int(f.shape[2]), self.frames, self.window, self.vae_scale
        )


class AudioCondition:
    """SVI-Talk's speech as a per-clip condition (see the module docstring).

    Build it with :meth:`from_track` (speech loaded by :func:`svi_core.talk.load_audio` or
    :func:`~svi_core.talk.prepare_waveform` plus a feature function) or :meth:`from_features`
    (precomputed features, e.g. ComfyUI core's AUDIO_ENCODER_OUTPUT).

    Attributes:
        name: ``"audio"``.
        settings: :class:`AudioFeatureSettings` (the run-level identity).
        features: the recording's :class:`AudioFeatures`.
        source: the speech's name for messages (file path or input name).
        audio_file: the file muxed into the final mp4 (the original, at its own rate and
            channels); None: ``waveform`` is written into the run directory first.
        waveform: ``(samples [C, N] float32, rate)`` of in-memory speech, for the mux.
        align: how the speech track is laid under the video (:data:`svi_core.talk.AudioAlign`).
    """

    name = "audio"

    def __init__(
        self,
        features: AudioFeatures,
        settings: AudioFeatureSettings,
        *,
        source: str,
        samples: np.ndarray | None = None,
        audio_file: str | Path | None = None,
        waveform: tuple[np.ndarray, int] | None = None,
        align: AudioAlign = "official",
    ) -> None:
        if align not in ("official", "frames"):
            raise SVIError(f"audio alignment {align!r} must be 'official' or 'frames'")
        if audio_file is None and waveform is None:
            raise SVIError(f"{source}: the speech needs a file or a waveform to mux into the video")
        self.features = features
        self.settings = settings
        self.source = source
        self.audio_file = None if audio_file is None else Path(audio_file)
        self.waveform = waveform
        self.align: AudioAlign = align
        self._samples = None if samples is None else np.ascontiguousarray(samples, np.float32)

    # ----- construction ------------------------------------------------------------------

    @classmethod
    def from_track(
        cls,
        track: AudioTrack,
        encode: Callable[[np.ndarray], torch.Tensor],
        settings: AudioFeatureSettings,
        **kwargs: Any,
    ) -> AudioCondition:
        """Speech loaded the official way; ``encode(samples [N] float32 16 kHz) -> [T_a, L, C]``
        runs on first use. Windows are identified by the unnormalised samples."""
        if track.sample_rate != settings.sample_rate:
            raise SVIError(
                f"{track.source}: speech at {track.sample_rate} Hz, the encoder reads "
                f"{settings.sample_rate} Hz"
            )
        frames = track.feature_frames(settings.fps)
        feats = AudioFeatures(frames, compute=lambda: encode(track.samples), source=track.source)
        raw = track.unnormalised if track.unnormalised is not None else track.samples
        return cls(feats, settings, source=track.source, samples=raw, **kwargs)

    @classmethod
    def from_features(
        cls, features: torch.Tensor, settings: AudioFeatureSettings, *, source: str, **kwargs: Any
    ) -> AudioCondition:
        """Precomputed features ``[T_a, L, C]``; windows are identified by their feature values."""
        feats = AudioFeatures(int(features.shape[0]), features=features, source=source)
        return cls(feats, settings, source=source, **kwargs)

    # ----- facts ------------------------------------------------------------------------------

    @property
    def feature_frames(self) -> int:
        """T_a: feature frames of the recording (25 per second)."""
        return self.features.frames

    @property
    def seconds(self) -> float:
        return self.feature_frames / self.settings.fps

    def clips_to_cover(self, frames: int, motion_frames: int) -> int:
        """Fewest clips whose windows reach the end of the speech."""
        return clips_for_audio(self.feature_frames, frames, motion_frames)

    # ----- ClipCondition ----------------------------------------------------------------------

    def identity(self) -> Mapping[str, Any]:
        return self.settings.identity()

    def validate(self, settings: RunSettings) -> None:
        mode = settings.mode
        s = self.settings
        if mode.guidance != "text_audio":
            raise SVIError(
                f"speech was given but mode {mode.name!r} does not use it (its guidance is "
                f"{mode.guidance}); use mode talk for a talking video"
            )
        if not math.isclose(mode.fps, s.fps):
            raise SVIError(
                f"mode {mode.name!r} saves {mode.fps:g} fps but the speech features are "
                f"{s.fps:g} per second (one per video frame); set fps {s.fps:g}"
            )
        if (mode.frames - 1) % s.vae_scale:
            raise SVIError(f"frames={mode.frames} must be {s.vae_scale}k + 1 for the audio windows")
        if mode.carry != "pixel":
            raise SVIError("the speech windows follow the pixel-carry clip schedule (mode talk)")
        if self.align == "frames" and mode.overlap_frames != 0:
            raise SVIError(
                "audio alignment 'frames' needs every frame of every clip kept (overlap 0, the "
                f"official SVI-Talk stitching); this mode drops {mode.overlap_frames}"
            )
        check_audio_covers_clip(self.feature_frames, mode.frames, s.fps, source=self.source)
        cover = self.clips_to_cover(mode.frames, mode.motion_frames)
        if settings.num_clips > cover:
            logger.warning(
                "%s covers %d clip(s) (%.2f s); clips %d-%d run past its end and repeat its last "
                "audio frame (a face that stops talking), as the official code does",
                self.source,
                cover,
                self.seconds,
                cover + 1,
                settings.num_clips,
            )

    def for_clip(self, plan: ClipPlan, settings: RunSettings) -> ClipPlan:
        mode = settings.mode
        start = audio_window_start(plan.index, mode.frames, mode.motion_frames)
        key = self._window_key(start, mode.frames)
        window = AudioWindow(
            start=start,
            frames=mode.frames,
            window=self.settings.window,
            vae_scale=self.settings.vae_scale,
            key=key,
            features=self.features,
        )
        return plan.with_extra(self.name, window)

    def _window_key(self, start: int, frames: int) -> str:
        half = self.settings.window // 2
        last = self.feature_frames - 1
        lo = min(max(start - half, 0), last)
        hi = min(start + frames - 1 + half, last)
        h = hashlib.sha256()
        h.update(json.dumps([start, frames, lo, hi, self.settings.identity()]).encode())
        if self._samples is not None:
            per = self.settings.sample_rate / self.settings.fps
            a, b = int(round(lo * per)), int(round((hi + 1) * per))
            h.update(b"samples")
            h.update(self._samples[a:b].tobytes())
        else:
            h.update(b"features")
            h.update(self.features.get()[lo : hi + 1].numpy().tobytes())
        return h.hexdigest()

    # ----- the finished video -----------------------------------------------------------------

    def speech_file(self, run_dir: Path) -> Path:
        """The file whose audio goes into the mp4 (in-memory speech is written to the run
        directory first, atomically)."""
        if self.audio_file is not None:
            return self.audio_file
        assert self.waveform is not None
        samples, rate = self.waveform
        path = Path(run_dir) / SPEECH_FILE
        tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
        write_wav(tmp, samples, rate)
        tmp.replace(path)
        return path

    def finish_video(
        self, video: Path, output: Path, num_clips: int, settings: RunSettings, run_dir: Path
    ) -> Path:
        """Write ``output`` = the joined ``video`` (stream copy) + the speech (AAC), laid per
        :attr:`align` and cut or padded with silence to the video length; verified, atomic."""
        mode = settings.mode
        if self.align == "frames":
            segments = audio_segments(
                num_clips, mode.frames, mode.motion_frames, mode.fps, align="frames"
            )
        else:
            segments = [(0.0, mode.video_length(num_clips) / mode.fps)]
        return mux_audio(
            video,
            self.speech_file(run_dir),
            output,
            segments,
            expected_frames=mode.video_length(num_clips),
        )
