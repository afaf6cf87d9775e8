"""SVI-Talk: audio-driven talking video (speech loading, audio windows, two-scale guidance).

Pure numpy / torch (plus imageio-ffmpeg for decoding). :class:`AudioCondition` carries the speech
through the clip loop's per-clip condition seam (one window per clip, the speech muxed at the join). The wav2vec2 encoder and the MultiTalk audio
modules of the standalone (diffusers) side live in ``svi_core.standalone.wav2vec`` and
``svi_core.standalone.multitalk``; the MultiTalk file inspection shared by both sides is in
:mod:`svi_core.talk.multitalk_file`. Every rule cites the official code; the full list is in the
project notes (TALK_RULES).
"""

from .audio import SAMPLE_RATE, AudioTrack, load_audio, prepare_waveform, write_wav
from .condition import AudioCondition, AudioFeatures, AudioFeatureSettings, AudioWindow
from .guidance import AUDIO_SCALE, TEXT_SCALE, TalkGuidance, combine_talk_guidance
from .loudness import TARGET_LUFS, integrated_loudness, normalise_loudness
from .multitalk_file import (
    MultiTalkConfig,
    check_features_fit_multitalk,
    check_multitalk_fits_dit,
    inspect_multitalk,
    is_multitalk,
    strip_multitalk_prefix,
)
from .mux import AudioAlign, audio_segments, mux_audio
from .windows import (
    AUDIO_FPS,
    AUDIO_WINDOW,
    VAE_SCALE,
    audio_window_start,
    check_audio_covers_clip,
    clip_audio_windows,
    clip_feature_indices,
    clips_for_audio,
    feature_frame_count,
    null_audio_windows,
)

__all__ = [
    "AUDIO_FPS",
    "AudioCondition",
    "AudioFeatureSettings",
    "AudioFeatures",
    "AudioWindow",
    "AudioAlign",
    "MultiTalkConfig",
    "audio_segments",
    "check_features_fit_multitalk",
    "check_multitalk_fits_dit",
    "inspect_multitalk",
    "is_multitalk",
    "mux_audio",
    "strip_multitalk_prefix",
    "AUDIO_SCALE",
    "AUDIO_WINDOW",
    "SAMPLE_RATE",
    "TARGET_LUFS",
    "TEXT_SCALE",
    "VAE_SCALE",
    "AudioTrack",
    "TalkGuidance",
    "audio_window_start",
    "check_audio_covers_clip",
    "clip_audio_windows",
    "clip_feature_indices",
    "clips_for_audio",
    "combine_talk_guidance",
    "feature_frame_count",
    "integrated_loudness",
    "load_audio",
    "normalise_loudness",
    "null_audio_windows",
    "prepare_waveform",
    "write_wav",
]
