"""Which audio feature frames drive clip k: the clip's start, its per-latent windows, the clip count.

Audio features are frame-indexed at the video frame rate (``AUDIO_FPS`` = 25 in MultiTalk / SVI-Talk):
``features[i]`` is feature frame i, ``[T_a, L, C]`` (T_a frames, L wav2vec2 layers, C channels).
All rules below are read from the official ``vita-epfl/Stable-Video-Infinity`` code:

* clip k starts at feature frame ``0`` (k = 0) or ``F * k - m`` (k > 0), F = frames per clip, m =
  motion frames (``test_svi_talk.py:277-280``); the clip uses frames ``start .. start + F - 1``
  (``diffsynth/pipelines/svi_video_talk.py:412-420``);
* every video frame f gets the 5 feature frames ``f - 2 .. f + 2`` clamped to ``[0, T_a - 1]``
  (``svi_video_talk.py:417-429``): past the end the LAST feature frame repeats;
* per latent frame (``preprocess_audio``, ``svi_video_talk.py:432-446``, window 5, vae_scale 4): latent
  frame 0 gets the window of video frame 0; latent frame t >= 1 covers video frames ``4t-3 .. 4t`` and
  gets ``[w(4t-3)[:3], w(4t-2)[2], w(4t-1)[2], w(4t)[2:]]`` = 8 consecutive feature frames, clip-relative
  ``4t - 5 .. 4t + 2`` (before clamping);
* the null audio of the unconditional pass is all-zero windows (``svi_video_talk.py:550``).

The official code keeps every frame of every clip, so from clip 1 on video frame n shows feature frame
``n - m`` (a constant lag of m frames, 40 ms at 25 fps for m = 1; see ``/work/notes/TALK_RULES.md`` §9).
"""

from __future__ import annotations

import math

import torch

from ..errors import SVIError

AUDIO_FPS = 25.0
"""Video / feature frame rate of SVI-Talk (``utils/audio_process.py:20`` "Assume the video fps is 25")."""

AUDIO_WINDOW = 5
"""Feature frames around each video frame (``svi_video_talk.py:417``, ``audio_window=5``)."""

VAE_SCALE = 4
"""Video frames per latent frame after the first (``svi_video_talk.py:549``, ``vae_scale=4``)."""


def audio_window_start(clip: int, frames: int = 81, motion_frames: int = 1) -> int:
    """First feature frame of clip ``clip``: ``0`` for clip 0, ``frames * clip - motion_frames`` after.

    Official ``test_svi_talk.py:277-280``: ``start = chunk_idx * 81``, minus ``num_motion_frames`` when
    ``start > 0``. The start does NOT advance by ``frames - motion_frames`` per clip.
    """
    if clip < 0:
        raise ValueError(f"clip index must be >= 0; got {clip}")
    if clip == 0:
        return 0
    return frames * clip - motion_frames


def feature_frame_count(num_samples: int, sample_rate: int = 16000, fps: float = AUDIO_FPS) -> int:
    """Feature frames of an audio of ``num_samples`` samples: ``int(num_samples / sample_rate * fps)``.

    The official float expression (``utils/audio_process.py:19-20`` and ``:31`` ``seq_len=int(...)``).
    """
    return int(num_samples / sample_rate * fps)


def clips_for_audio(feature_frames: int, frames: int = 81, motion_frames: int = 1) -> int:
    """Fewest clips whose windows reach the last feature frame (the ``clips = 0`` rule).

    Clip N-1 covers feature frames up to ``frames * N - motion_frames - 1`` (N >= 2), so
    ``N = ceil((T_a + m) / F)``; one clip when ``T_a <= F``. The official script has no such rule (it
    always makes 50 clips, ``test_svi_talk.py:92-97``).
    """
    if feature_frames < 1:
        raise ValueError(f"feature_frames must be >= 1; got {feature_frames}")
    if feature_frames <= frames:
        return 1
    return math.ceil((feature_frames + motion_frames) / frames)


def clip_feature_indices(
    start: int,
    frames: int,
    feature_frames: int,
    window: int = AUDIO_WINDOW,
    vae_scale: int = VAE_SCALE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature-frame indices feeding one clip: ``(first [window], latter [T - 1, window + vae_scale - 1])``.

    ``first`` drives latent frame 0, ``latter[t - 1]`` latent frame t (T = latent frames =
    ``(frames - 1) / vae_scale + 1``). Indices are clamped to ``[0, feature_frames - 1]`` like the
    official ``torch.clamp`` (``svi_video_talk.py:428``). int64 tensors.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be odd and >= 1; got {window}")
    if vae_scale < 2 or (frames - 1) % vae_scale:
        raise ValueError(
            f"frames - 1 must be a multiple of vae_scale={vae_scale}; got frames={frames}"
        )
    if feature_frames < 1:
        raise ValueError(f"feature_frames must be >= 1; got {feature_frames}")
    half = window // 2
    per_frame = torch.arange(start, start + frames).unsqueeze(1) + torch.arange(-half, half + 1)
    per_frame = per_frame.clamp(0, feature_frames - 1)  # [frames, window]
    first = per_frame[0]
    groups = per_frame[1:].reshape(-1, vae_scale, window)  # [T - 1, vae_scale, window]
    latter = torch.cat(
        [
            groups[:, 0, : half + 1],  # first frame of the group: left half and centre
            groups[:, 1:-1, half],  # middle frames: centre only
            groups[:, -1, half:],  # last frame: centre and right half
        ],
        dim=1,
    )
    return first, latter


def clip_audio_windows(
    features: torch.Tensor,
    start: int,
    frames: int = 81,
    window: int = AUDIO_WINDOW,
    vae_scale: int = VAE_SCALE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The MultiTalk audio input of one clip.

    Args:
        features: ``[T_a, L, C]`` frame-indexed wav2vec2 features (all hidden layers), any float dtype.
        start: the clip's first feature frame (:func:`audio_window_start`).

    Returns:
        ``(first [1, 1, window, L, C], latter [1, T - 1, window + vae_scale - 1, L, C])``, the
        ``audio_embed_tuple`` of the official pipeline (``svi_video_talk.py:432-446``), same dtype as
        ``features`` (the official casts to bfloat16 afterwards).
    """
    if features.ndim != 3:
        raise ValueError(f"expected features [T_a, layers, channels]; got {tuple(features.shape)}")
    first_idx, latter_idx = clip_feature_indices(
        start, frames, features.shape[0], window, vae_scale
    )
    first = features[first_idx].unsqueeze(0).unsqueeze(0)
    latter = features[latter_idx].unsqueeze(0)
    return first, latter


def null_audio_windows(
    layers: int,
    channels: int,
    frames: int = 81,
    window: int = AUDIO_WINDOW,
    vae_scale: int = VAE_SCALE,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The unconditional pass's audio: all-zero windows shaped like :func:`clip_audio_windows`.

    Official ``preprocess_audio(torch.zeros_like(audio_embed))`` (``svi_video_talk.py:550``); the zeros
    still go through the audio projection, so the projected null audio is not zero.
    """
    latents = (frames - 1) // vae_scale
    first = torch.zeros(1, 1, window, layers, channels, dtype=dtype)
    latter = torch.zeros(1, latents, window + vae_scale - 1, layers, channels, dtype=dtype)
    return first, latter


def check_audio_covers_clip(
    feature_frames: int, frames: int = 81, fps: float = AUDIO_FPS, source: str = "audio"
) -> None:
    """Refuse audio shorter than one clip (before any model is loaded).

    The official pipeline would run anyway and repeat the last feature frame (a frozen mouth) for the
    rest of the clip; a talking video that stops talking is not what a user asks for.
    """
    if feature_frames < frames:
        raise SVIError(
            f"{source} is {feature_frames / fps:.2f} s ({feature_frames} frames at {fps:g} fps); one "
            f"clip needs {frames / fps:.2f} s ({frames} frames). Use a longer recording (or fewer frames "
            "per clip, 4k + 1)."
        )
