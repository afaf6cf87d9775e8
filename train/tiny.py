"""Tiny random models and synthetic videos for tests, benchmarks and toy experiments.

Not for real training: these build a 2-layer Wan I2V DiT (dim 32) and a narrow Wan VAE with
random weights, and write small moving-pattern videos with imageio-ffmpeg, so the whole ERFT
path (data -> cache -> loop -> export) runs in seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

TINY_TEXT_DIM = 32
TINY_CLIP_DIM = 32
TEXT_TOKENS = 512  # diffusers' I2V attention needs exactly 512 text tokens


def tiny_transformer(seed: int = 0, num_layers: int = 2, i2v: bool = True) -> torch.nn.Module:
    """A random diffusers ``WanTransformer3DModel``: 2 heads x 16, ffn 64, text/CLIP width 32,
    in 36 / out 16 channels (I2V: concat(x_t[16], y[20]))."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=36,
        out_channels=16,
        text_dim=TINY_TEXT_DIM,
        freq_dim=32,
        ffn_dim=64,
        num_layers=num_layers,
        image_dim=TINY_CLIP_DIM if i2v else None,
        added_kv_proj_dim=TINY_CLIP_DIM if i2v else None,
    ).train(False)


def tiny_vae(seed: int = 0) -> torch.nn.Module:
    """A random diffusers ``AutoencoderKLWan`` (base_dim 4, z_dim 16, 1 res block per level)."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1).train(
        False
    )


def tiny_text_encoder(seed: int = 0):
    """A deterministic caption -> context ``[512, 32]`` function (hash-seeded; rows after the
    caption's word count are zero, like UMT5 padding)."""
    import hashlib

    def encode(caption: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(
            seed + int.from_bytes(hashlib.sha256(caption.encode()).digest()[:4], "little")
        )
        ctx = torch.zeros(TEXT_TOKENS, TINY_TEXT_DIM)
        n = max(1, min(len(caption.split()), TEXT_TOKENS))
        ctx[:n] = torch.randn(n, TINY_TEXT_DIM, generator=g)
        return ctx

    return encode


def tiny_clip_encoder(seed: int = 0):
    """A deterministic frame ``[1, 3, H, W]`` -> ``[257, 32]`` feature (a fixed random
    projection of a 16x16 pooled frame)."""
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(3 * 16 * 16, 257 * TINY_CLIP_DIM, generator=g) / 28.0

    def encode(frame: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(frame.float(), 16).flatten()
        return (pooled @ proj).view(257, TINY_CLIP_DIM)

    return encode


def tiny_encoders():
    """``train.cache.Encoders`` of the tiny random VAE, text and CLIP encoders (the ids the
    tests' feature caches are keyed by: tiny-vae, tiny-text, tiny-clip)."""
    from .cache import Encoders, diffusers_vae_encoder

    return Encoders(
        diffusers_vae_encoder(tiny_vae()),
        tiny_text_encoder(),
        tiny_clip_encoder(),
        video_id="tiny-vae",
        text_id="tiny-text",
        clip_id="tiny-clip",
    )


def moving_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 ``[F, H, W, 3]``: a smooth random colour field drifting right by 1 px per frame."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(height // 8 + 1, (width + num_frames) // 8 + 2, 3))
    big = np.kron(base, np.ones((8, 8, 1))).astype(np.float32)
    frames = np.stack([big[:height, t : t + width] for t in range(num_frames)])
    return frames.clip(0, 255).astype(np.uint8)


def write_video(path: str | Path, frames: np.ndarray, fps: int = 16) -> Path:
    """Write uint8 ``[F, H, W, 3]`` frames to ``path`` (H, W even) as H.264 through
    :func:`svi_core.video_io.write_segment`, creating the parent folder."""
    from svi_core.video_io import write_segment

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return write_segment(p, frames, fps)


# ============================================================================================
# SVI-Talk / SVI-Dance test kit: tiny wav2vec2, tiny MultiTalk file, videos with speech, skeletons
# ============================================================================================

TINY_W2V_LAYERS = 2
TINY_W2V_HIDDEN = 16


def tiny_wav2vec2_config(**overrides):
    """A transformers ``Wav2Vec2Config`` of a random 2-layer x 16 wav2vec2 (base style:
    group-norm feature encoder, post-LN, no dropout); ``overrides`` replace its fields."""
    import transformers

    fields = dict(
        hidden_size=TINY_W2V_HIDDEN,
        num_hidden_layers=TINY_W2V_LAYERS,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(32,) * 7,
        conv_bias=False,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
    )
    fields.update(overrides)
    return transformers.Wav2Vec2Config(**fields)


def save_wav2vec2_folder(folder: str | Path, model, do_normalize: bool = False) -> Path:
    """Write ``model`` (a transformers wav2vec2) as a local folder like the official one:
    ``config.json``, ``model.safetensors`` and a 16 kHz ``preprocessor_config.json``."""
    import json

    p = Path(folder)
    p.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(p))
    (p / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "feature_extractor_type": "Wav2Vec2FeatureExtractor",
                "do_normalize": do_normalize,
                "feature_size": 1,
                "padding_value": 0.0,
                "sampling_rate": 16000,
            }
        ),
        encoding="utf-8",
    )
    return p


def tiny_wav2vec2(folder: str | Path, seed: int = 0) -> Path:
    """Write a random :func:`tiny_wav2vec2_config` wav2vec2 as a local folder
    (:func:`save_wav2vec2_folder`, no normalisation); features are ``[T_a, 2, 16]``."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.Wav2Vec2Model(tiny_wav2vec2_config()).train(False)
    return save_wav2vec2_folder(folder, model)


def tiny_multitalk(
    path: str | Path,
    transformer: torch.nn.Module,
    seed: int = 0,
    feature_width: int = TINY_W2V_LAYERS * TINY_W2V_HIDDEN,
) -> Path:
    """Write random MultiTalk audio modules for ``transformer`` (one audio block per DiT block,
    4 audio tokens of width 16 per latent frame) under the official key names."""
    cfg = transformer.config
    heads = int(cfg.num_attention_heads)
    dim = heads * int(cfg.attention_head_dim)
    return tiny_multitalk_file(path, dim, len(transformer.blocks), heads, seed, feature_width)


def tiny_multitalk_file(
    path: str | Path,
    dim: int,
    num_layers: int,
    num_heads: int,
    seed: int = 0,
    feature_width: int = TINY_W2V_LAYERS * TINY_W2V_HIDDEN,
) -> Path:
    """:func:`tiny_multitalk` for a DiT given by its width, blocks and heads."""
    from safetensors.torch import save_file

    from svi_core.standalone.multitalk import MultiTalkAudioModules
    from svi_core.talk.multitalk_file import MultiTalkConfig

    mt = MultiTalkConfig(
        dim=dim,
        num_layers=num_layers,
        intermediate_dim=8,
        token_dim=16,
        context_tokens=4,
        feature_width=feature_width,
    )
    torch.manual_seed(seed)
    modules = MultiTalkAudioModules(mt, num_heads=num_heads)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in modules.state_dict().items()}, str(p))
    return p


def speech_like(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """float32 ``[N]`` mono: noise bursts under a syllable-rate envelope (not silent)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * (3.0 + seed) * t)
    carrier = np.sin(2 * np.pi * (180.0 + 40 * seed) * t) + 0.3 * rng.standard_normal(n)
    return (0.2 * envelope * carrier).astype(np.float32)


def write_video_with_audio(
    path: str | Path,
    frames: np.ndarray,
    samples: np.ndarray,
    fps: float = 25.0,
    rate: int = 16000,
) -> Path:
    """Write uint8 frames ``[F, H, W, 3]`` as H.264 with ``samples`` ``[N]`` muxed in as AAC."""
    import tempfile

    import imageio_ffmpeg

    from svi_core.talk.audio import write_wav

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wav = write_wav(Path(tmp) / "speech.wav", samples, rate)
        h, w = frames.shape[1:3]
        writer = imageio_ffmpeg.write_frames(
            str(p),
            (w, h),
            fps=fps,
            codec="libx264",
            quality=None,
            macro_block_size=2,
            ffmpeg_log_level="error",
            output_params=["-crf", "12", "-threads", "1"],
            audio_path=str(wav),
            audio_codec="aac",
        )
        writer.send(None)
        for f in frames:
            writer.send(np.ascontiguousarray(f))
        writer.close()
    return p


def skeleton_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 ``[F, H, W, 3]``: a few coloured 2-px lines on black moving over time (a sparse
    stand-in for DWPose skeleton frames)."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(64, 256, size=(4, 3))
    starts = rng.integers(0, min(height, width), size=(4, 2))
    out = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        for (y0, x0), c in zip(starts, colours, strict=True):
            y = (y0 + t) % (height - 2)
            x = (x0 + 2 * t) % (width - 8)
            out[t, y : y + 2, x : x + 8] = c
            out[t, max(0, y - 6) : y, x : x + 2] = c
    return out
