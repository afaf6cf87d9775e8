"""SVI-Talk training: ``python -m train --preset talk`` (official ``train_svi_talk.py`` +
``scripts/train/svi_talk.sh``).

What the official trainer does and what this module does the same way:

* model: the Wan2.1 I2V DiT with MeiGen-MultiTalk's audio modules (``multitalk.safetensors``,
  the 8th "shard" of ``--dit_path``, svi_talk.sh:6), everything frozen; only the LoRA (r = alpha
  = 128 on q, k, v, o, ffn.0, ffn.2 of self and cross attention) trains. PEFT's target names
  do not match ``audio_cross_attn.{q_linear,kv_linear,proj}``, ``norm_x`` or ``audio_proj``
  (train_svi_talk.py:889-915), so the audio modules keep their MultiTalk weights. Here they are
  :class:`svi_core.standalone.multitalk.MultiTalkAudioModules` registered on the DiT as
  ``svi_multitalk`` and wired in by :func:`svi_core.standalone.multitalk.attach_multitalk`;
  the forward keyword ``svi_audio=(first, latter)`` sets the audio of one forward.
* audio: the whole recording at 16 kHz mono, loudness-normalised to -23 LUFS, through
  wav2vec2 (chinese-wav2vec2-base, the official order: CNN features interpolated to 25 fps
  before the transformer), all 12 layer outputs ``[T_a, 12, 768]``
  (prepare_video_audio.py:62-93, :mod:`svi_core.standalone.wav2vec`); cached once per
  recording. A sample's windows start at the video frame where its clip starts
  (``cut_audio_embedding(..., audio_start_idx=start_frame)``, train_svi_talk.py:483-484;
  utils/audio_process.py:79-108 = :func:`svi_core.talk.clip_audio_windows`).
* audio dropout: with probability 0.1 both windows are zeros (train_svi_talk.py:969-973), which
  the projection turns into the null audio of inference.
* frames: landscape frames cropped to a centred square (the preprocessor,
  prepare_video_audio.py:168-171), then the random crop to 480:640 and a bilinear resize to
  480 x 640 (train_svi_talk.py:109-120, 522-547); 1 motion frame, a random frame of the clip as
  padding; the fixed text "the person is speaking" (:564).
* ERFT: as shot, with svi_talk.sh's values (y_error_num 3, clean 0.2, ...).

Data (``dataset``): videos at 25 fps (the features assume it, audio_process.py:20) with their
speech, as ``name.mp4`` holding an audio stream, ``name.mp4`` + ``name.wav`` (or .mp3 / .flac
/ .m4a / .ogg / .aac) beside it, or the official raw layout ``videos/name.mp4`` +
``audios/name.wav`` (prepare_video_audio.py:117-186); or ``name.mp4`` +
``name.audio.safetensors`` (``features`` ``[T_a, 12, 768]`` or the official ``[12, T_a, 768]``)
for features computed elsewhere, e.g. converted from the official ``audio_embedding.pkl``. The
official preprocessed folders (``frame_data.pkl`` + ``audio_embedding.pkl``) are pickles and are
never loaded: they are refused with the conversion recipe (README).

Exported: the LoRA in canonical keys (``diffusion_model.blocks.N.<module>.lora_A.weight``,
``.lora_B.weight``, ``.alpha``), named ``svi-talk-erft.safetensors`` by default; it is used
with the same ``multitalk.safetensors`` (``python -m svi_core generate --mode talk --lora ...
--multitalk ...``, the Talk nodes with core's model-patch loader).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from svi_core.errors import SVIError
from svi_core.log import logger

from .conditions import ConditionFamily, StepCondition, block_dims, chance, header_shapes
from .config import TrainConfig
from .data import VideoItem, VideoReadError, list_videos

AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".m4a", ".ogg", ".aac")
FEATURES_SUFFIX = ".audio.safetensors"
VIDEO_FPS = 25.0
"""The official features assume 25 fps video (utils/audio_process.py:20)."""
PICKLE_CACHES = ("frame_data.pkl", "audio_embedding.pkl")


# ============================================================================================
# data
# ============================================================================================


def list_talk_videos(config: TrainConfig) -> list[VideoItem]:
    """Every video of ``config.dataset`` with where its speech comes from (see the module doc).

    Raises:
        SVIError: the official pickled layout, or anything :func:`train.data.list_videos`
            refuses.
    """
    root = Path(config.dataset)
    if root.is_dir():
        _refuse_pickles(root, PICKLE_CACHES)
    items = list_videos(
        config.dataset, config.default_caption, warn_uncaptioned=not config.fixed_caption
    )
    out = []
    for it in items:
        features = it.path.with_name(it.path.stem + FEATURES_SUFFIX)
        if features.is_file():
            out.append(VideoItem(it.path, it.caption, audio_features=features))
            continue
        out.append(VideoItem(it.path, it.caption, audio=_audio_beside(it.path)))
    return out


def _audio_beside(video: Path) -> Path:
    """A sound file with the video's name (beside it, or in ``../audios/`` for the official raw
    layout ``videos/`` + ``audios/``), else the video itself (its own audio stream)."""
    places = [video.parent]
    if video.parent.name == "videos":
        places.append(video.parent.parent / "audios")
    for folder in places:
        for ext in AUDIO_EXTENSIONS:
            cand = folder / (video.stem + ext)
            if cand.is_file():
                return cand
    return video


def _refuse_pickles(root: Path, names: tuple[str, ...]) -> None:
    found = sorted(p for name in names for p in root.rglob(name))
    if found:
        raise SVIError(
            f"dataset '{root}' holds the official preprocessed pickles ('{found[0]}'"
            f"{f' and {len(found) - 1} more' if len(found) > 1 else ''}). They are never "
            "loaded here (unpickling a file can run code). Point `dataset` at the raw videos "
            "instead, or convert the pickles once with the README recipe 'Converting the official "
            "preprocessed pickles' (run it in the official environment)."
        )


def video_fps(path: Path) -> float:
    """The container's frame rate (raises VideoReadError when unreadable)."""
    import imageio_ffmpeg

    try:
        gen = imageio_ffmpeg.read_frames(str(path))
        meta = next(gen)
        gen.close()
    except (OSError, RuntimeError, ValueError, StopIteration, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise VideoReadError(f"cannot read video '{path}': {first}") from e
    return float(meta.get("fps") or 0.0)


def read_feature_file(path: Path) -> torch.Tensor:
    """Precomputed features ``[T_a, L, C]`` float32 from ``name.audio.safetensors`` (key
    ``features``; the official ``[L, T_a, C]`` layout with L = 12 is transposed).

    Raises VideoReadError (the video is skipped) for a file without ``features`` [.., .., ..]."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        data = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise VideoReadError(f"cannot read audio features '{path}': {e}") from e
    feats = data.get("features")
    if feats is None or feats.ndim != 3:
        raise VideoReadError(
            f"audio features '{path}' must hold 'features' [T_a, layers, channels] (or the "
            f"official [12, T_a, 768]); found {sorted(data)}"
        )
    if feats.shape[0] == 12 and feats.shape[1] != 12:
        feats = feats.transpose(0, 1)  # official audio_embedding layout [layers, T_a, C]
    return feats.float().contiguous()


def cache_audio_features(
    item: VideoItem, cache: Any, get_encoders: Callable[[], Any], fps: float = VIDEO_FPS
) -> str:
    """Key of the recording's wav2vec2 features in ``cache`` (computed when missing).

    Raises VideoReadError (the video is skipped with a warning) when the video is not 25 fps,
    the speech cannot be decoded, is silent or shorter than 0.4 s.
    """
    from .cache import content_key

    if item.audio_features is not None:
        feats = read_feature_file(item.audio_features)
        key = content_key("audio-file", feats)
        if not cache.has("audio", key):
            cache.put("audio", key, feats)
        return key
    rate = video_fps(item.path)
    if abs(rate - fps) > 0.01:
        raise VideoReadError(
            f"video '{item.path}' is {rate:g} fps; SVI-Talk's audio features are {fps:g} per "
            "second and frame i must match feature i (the official code assumes 25 fps). "
            f"Re-encode it: ffmpeg -i '{item.path.name}' -r 25 out.mp4"
        )
    from svi_core.talk import load_audio

    assert item.audio is not None
    try:
        track = load_audio(item.audio)
    except SVIError as e:
        raise VideoReadError(f"speech of '{item.path}': {e}") from e
    enc = get_encoders()
    samples = np.ascontiguousarray(track.samples, dtype=np.float32)
    key = content_key("audio", enc.audio_id, torch.from_numpy(samples))
    if not cache.has("audio", key):
        if enc.audio_features is None:
            raise SVIError(
                "the training cache lacks audio features and no wav2vec2 is configured: set "
                "`wav2vec_path` to the local TencentGameMate/chinese-wav2vec2-base folder"
            )
        feats = enc.audio_features(samples)
        cache.put("audio", key, feats.float())
    return key


def sample_audio_windows(
    features: torch.Tensor, start: int, frames: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The MultiTalk windows of the clip starting at video frame ``start``: ``(first [1, 1, 5,
    L, C], latter [1, T - 1, 8, L, C])`` float32, indices past the end clamped to the last
    feature frame (utils/audio_process.py:79-108)."""
    from svi_core.talk import clip_audio_windows

    return clip_audio_windows(features.float(), start, frames)


def wav2vec2_encoder(path: str) -> tuple[Callable[[np.ndarray], torch.Tensor], str]:
    """``(samples [N] -> features [T_a, L, C], identity)`` for a local wav2vec2 folder
    (:func:`svi_core.standalone.wav2vec.load_wav2vec2`, CPU float32 as the official)."""
    from svi_core.standalone.wav2vec import load_wav2vec2, wav2vec2_features

    from .cache import module_fingerprint

    enc = load_wav2vec2(path)
    ident = f"{module_fingerprint(enc.model)}|norm={int(enc.do_normalize)}"

    def features(samples: np.ndarray) -> torch.Tensor:
        return wav2vec2_features(enc, samples)

    return features, ident


# ============================================================================================
# model
# ============================================================================================


class TalkFamily(ConditionFamily):
    """The audio condition of SVI-Talk (see the module docstring)."""

    name = "talk"

    def check(self, config: TrainConfig, transformer: torch.nn.Module | None = None) -> None:
        super().check(config, transformer)
        if not config.multitalk_path:
            raise SVIError(
                "mode talk needs `multitalk_path`: MeiGen-MultiTalk's multitalk.safetensors (the "
                "audio layers SVI-Talk is trained on top of; official svi_talk.sh puts it in "
                "--dit_path)"
            )
        from safetensors import safe_open

        from svi_core.talk.multitalk_file import is_multitalk

        p = Path(config.multitalk_path)
        if not p.is_file():
            raise SVIError(f"multitalk_path '{p}' does not exist")
        if p.suffix == ".safetensors":
            with safe_open(str(p), framework="pt") as f:
                keys = list(f.keys())
            if not is_multitalk(dict.fromkeys(keys)):
                raise SVIError(
                    f"multitalk_path '{p}' is not a MultiTalk file (no audio_proj.proj1.weight); "
                    "use MeiGen-AI/MeiGen-MultiTalk's multitalk.safetensors"
                )
            self._check_fits(p, config, transformer)
        if config.wav2vec_path and not Path(config.wav2vec_path).exists():
            raise SVIError(f"wav2vec_path '{config.wav2vec_path}' does not exist")

    @staticmethod
    def _check_fits(mt: Path, config: TrainConfig, transformer: torch.nn.Module | None) -> None:
        """Width and block count of the MultiTalk file vs the DiT, from the files' headers (or
        the DiT handed in), so a file for another model size is refused before any work."""
        mt_dim, mt_blocks = block_dims(
            header_shapes(mt), r"blocks\.(\d+)\.audio_cross_attn\.q_linear"
        )
        if transformer is not None:
            c = transformer.config
            dit_dim = int(c.num_attention_heads) * int(c.attention_head_dim)
            dit_blocks, dit_src = len(transformer.blocks), "the DiT"
        elif config.dit_path:
            shapes = header_shapes(Path(config.dit_path))
            dit_dim, dit_blocks = block_dims(shapes, r"blocks\.(\d+)\.(?:self_attn\.q|attn1\.to_q)")
            dit_src = f"dit_path '{config.dit_path}'"
        else:
            return
        if mt_dim and dit_dim and mt_dim != dit_dim:
            raise SVIError(
                f"multitalk_path '{mt}' is for a DiT of width {mt_dim}, but {dit_src} has width "
                f"{dit_dim}; SVI-Talk needs Wan2.1-I2V-14B (5120) with MeiGen-MultiTalk's file"
            )
        if mt_blocks and dit_blocks and mt_blocks < dit_blocks:
            raise SVIError(
                f"multitalk_path '{mt}' has audio layers for {mt_blocks} blocks, {dit_src} has "
                f"{dit_blocks}; use the MultiTalk file made for this DiT"
            )

    def list_items(self, config: TrainConfig) -> list[VideoItem]:
        return list_talk_videos(config)

    def attach(self, model: torch.nn.Module, config: TrainConfig) -> None:
        from svi_core.standalone.multitalk import attach_multitalk, load_multitalk

        heads = int(model.config.num_attention_heads)
        p = next(model.parameters())
        modules = load_multitalk(config.multitalk_path, num_heads=heads, dtype=p.dtype)
        handle = attach_multitalk(model, modules)
        model.add_module("svi_multitalk", modules)
        modules.requires_grad_(False)

        def set_audio(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple:
            # The tokens stay set until the next forward: with gradient checkpointing the
            # blocks run again during backward and must see the same audio.
            audio = kwargs.pop("svi_audio", None)
            handle._residual.clear()
            handle.tokens = None if audio is None else modules.project(*audio)
            return args, kwargs

        model.register_forward_pre_hook(set_audio, with_kwargs=True)
        self.handle = handle

    def check_sample(self, model: torch.nn.Module, sample: Any) -> None:
        from svi_core.talk.multitalk_file import check_features_fit_multitalk

        if sample.audio is None:
            raise SVIError("mode talk: the cached sample has no audio features; rebuild the cache")
        layers, channels = int(sample.audio[0].shape[-2]), int(sample.audio[0].shape[-1])
        cfg = model.svi_multitalk.cfg
        check_features_fit_multitalk(cfg, layers, channels, "multitalk_path", "wav2vec_path")

    def step_condition(
        self, sample: Any, config: TrainConfig, rng: random.Random, device: torch.device
    ) -> StepCondition:
        first, latter = sample.audio
        dropped = chance(rng, config.audio_dropout)
        if dropped:  # official: both windows zeroed (train_svi_talk.py:969-973)
            first, latter = torch.zeros_like(first), torch.zeros_like(latter)
        return StepCondition(
            kwargs={"svi_audio": (first.to(device), latter.to(device))},
            null_image=chance(rng, config.image_dropout),
            dropped=dropped,
        )

    def export(
        self, state: Mapping[str, torch.Tensor], config: TrainConfig, metadata: dict[str, str]
    ) -> Path:
        meta = {**metadata, "svi_requires": "MeiGen-MultiTalk multitalk.safetensors"}
        path = super().export(state, config, meta)
        logger.info(
            "SVI-Talk LoRA '%s': use it with the same multitalk.safetensors (--mode talk)", path
        )
        return path
