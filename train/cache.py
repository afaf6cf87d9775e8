"""Encode every training sample once; training reads the cache, never the encoders.

Kinds of cached tensors, one ``.safetensors`` file each under ``<cache>/<kind>/<key>``, the key
a SHA-256 of the encoder's identity plus the exact input content (uint8 frames, caption text):

* ``latent``: VAE latent of the clip, NORMALISED ``[1, 16, T, H/8, W/8]``;
* ``cond``: VAE latent of the conditioning video ``[motion, padding]`` (one causal encode),
  NORMALISED ``[1, 16, T, H/8, W/8]``;
* ``text``: UMT5 context ``[L, D]`` (512 tokens, padded rows zero);
* ``clip``: CLIP-vision feature of frame 0 ``[257, C]``;
* ``audio`` (talk): wav2vec2 features of a whole recording ``[T_a, L, C]`` float32, one per
  video, keyed by the decoded 16 kHz samples (or the precomputed feature file); a sample stores
  its start frame and cuts its windows when loaded (:func:`train.talk.sample_audio_windows`);
* ``pose`` (dance): the sample's pose frames uint8 ``[F, H, W, 3]`` at the training size,
  stored sparsely when most pixels are black (:func:`train.dance.pack_pose_frames`).

Latents are stored in the training precision (bf16 like the official trainer, or fp32).
A manifest (``manifest-<hash>.json``: data settings, encoder identities, video files with
size and mtime) lists the samples; when it exists and every file is present, training needs
no VAE, text or CLIP encoder at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from svi_core.errors import SVIError
from svi_core.log import logger

from .config import TrainConfig
from .data import VideoItem, VideoReadError, conditioning_pixels, draw_sample

KINDS = ("latent", "cond", "text", "clip", "audio", "pose")
_DATA_FIELDS = (
    "mode",
    "num_frames",
    "height",
    "width",
    "crop_jitter",
    "num_motion_frames",
    "p_motion",
    "padding",
    "augment_draws",
    "default_caption",
    "context_file",
    "precision",
    "seed",
)
_LATER_DATA_FIELDS = ("fixed_caption", "center_square", "resize")
"""Data fields of the talk / dance presets: in the manifest key only when not at their
"as before" value, so caches of earlier versions keep their manifests."""


@dataclass(frozen=True)
class Encoders:
    """The encoders the cache needs, each with an identity string (part of every key).

    encode_video: pixels ``[1, 3, F, H, W]`` in [-1, 1] -> NORMALISED latent ``[1, 16, T, h, w]``.
    encode_text: caption -> context ``[L, D]``.
    clip_features: frame ``[1, 3, H, W]`` in [-1, 1] -> ``[257, C]``; None for a DiT without
        an image embedding (Wan2.2) or when ``context_file`` supplies it.
    audio_features (talk): 16 kHz mono float32 samples ``[N]`` (loudness-normalised) ->
        wav2vec2 features ``[T_a, L, C]`` at 25 fps (:func:`train.talk.wav2vec2_encoder`).
    """

    encode_video: Callable[[torch.Tensor], torch.Tensor] | None = None
    encode_text: Callable[[str], torch.Tensor] | None = None
    clip_features: Callable[[torch.Tensor], torch.Tensor] | None = None
    video_id: str = ""
    text_id: str = ""
    clip_id: str = ""
    audio_features: Callable[[np.ndarray], torch.Tensor] | None = None
    audio_id: str = ""


def module_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 (16 hex) of a module's class, parameter names, shapes and values."""
    h = hashlib.sha256(type(module).__name__.encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def file_fingerprint(path: str | Path) -> str:
    """Identity of a weights file without reading it: resolved path, size, mtime."""
    p = Path(path).resolve()
    st = p.stat()
    return hashlib.sha256(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def diffusers_vae_encoder(vae: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``encode_video`` for a diffusers ``AutoencoderKLWan``: float32, posterior mean (as the
    official pipeline), normalised with the Wan2.1 statistics."""
    from svi_core.latents import normalise

    @torch.no_grad()
    def encode(pixels: torch.Tensor) -> torch.Tensor:
        p = next(vae.parameters())
        raw = vae.encode(pixels.to(p.device, p.dtype)).latent_dist.mode()
        return normalise(raw.float()).cpu()

    return encode


def content_key(*parts: str | bytes | torch.Tensor) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            part = part.contiguous().numpy().tobytes()
        elif isinstance(part, str):
            part = part.encode()
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:32]


class FeatureCache:
    """Content-addressed tensors under ``root/<kind>/<key>.safetensors`` (atomic writes)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown cache kind {kind!r}")
        return self.root / kind / f"{key}.safetensors"

    def has(self, kind: str, key: str) -> bool:
        return self.path(kind, key).is_file()

    def get(self, kind: str, key: str) -> torch.Tensor:
        from safetensors.torch import load_file

        p = self.path(kind, key)
        try:
            return load_file(str(p))["value"]
        except (OSError, KeyError) as e:
            raise SVIError(
                f"cache file '{p}' is missing or damaged ({e}); delete the cache folder "
                f"'{self.root}' to rebuild it"
            ) from e

    def put(self, kind: str, key: str, value: torch.Tensor) -> None:
        self.put_tensors(kind, key, {"value": value})

    def get_tensors(self, kind: str, key: str) -> dict[str, torch.Tensor]:
        """Every tensor of an entry written by :meth:`put_tensors`."""
        from safetensors.torch import load_file

        p = self.path(kind, key)
        try:
            return load_file(str(p))
        except OSError as e:
            raise SVIError(
                f"cache file '{p}' is missing or damaged ({e}); delete the cache folder "
                f"'{self.root}' to rebuild it"
            ) from e

    def put_tensors(self, kind: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        p = self.path(kind, key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".tmp{os.getpid()}")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, p)


@dataclass(frozen=True)
class CachedSample:
    """Keys of one encoded sample in the cache (``clip`` None when there is no CLIP feature;
    ``audio`` + ``audio_start`` for talk: the recording's features and the clip's first frame;
    ``pose`` for dance)."""

    video: str
    draw: int
    latent: str
    cond: str
    text: str
    clip: str | None
    audio: str | None = None
    audio_start: int = 0
    pose: str | None = None


@dataclass(frozen=True)
class TrainSample:
    """Model inputs of one sample, loaded from the cache.

    latent: clean NORMALISED latent x0 ``[1, 16, T, h, w]``.
    y: image condition ``[1, 20, T, h, w]`` = mask (4 channels, 1 on latent frame 0) + cond latent.
    context: text ``[1, L, D]``; clip: CLIP feature ``[1, 257, C]`` or None.
    audio (talk): the MultiTalk windows ``(first [1, 1, 5, L, C], latter [1, T - 1, 8, L, C])``
        float32 (:func:`svi_core.talk.clip_audio_windows`); None otherwise.
    pose (dance): the pose frames uint8 ``[F, H, W, 3]``; None otherwise.
    """

    latent: torch.Tensor
    y: torch.Tensor
    context: torch.Tensor
    clip: torch.Tensor | None
    audio: tuple[torch.Tensor, torch.Tensor] | None = None
    pose: torch.Tensor | None = None


def load_sample(cache: FeatureCache, entry: CachedSample) -> TrainSample:
    from svi_core.conditioning import first_frames_mask

    latent = cache.get("latent", entry.latent)
    cond = cache.get("cond", entry.cond)
    mask = first_frames_mask(cond.shape[2], cond.shape[3], cond.shape[4], 1).to(cond.dtype)
    clip = cache.get("clip", entry.clip).unsqueeze(0) if entry.clip else None
    audio = pose = None
    if entry.audio:
        from .talk import sample_audio_windows

        frames = (latent.shape[2] - 1) * 4 + 1
        audio = sample_audio_windows(cache.get("audio", entry.audio), entry.audio_start, frames)
    if entry.pose:
        from .dance import unpack_pose_frames

        pose = unpack_pose_frames(cache.get_tensors("pose", entry.pose))
    return TrainSample(
        latent=latent,
        y=torch.cat([mask, cond], dim=1),
        context=cache.get("text", entry.text).unsqueeze(0),
        clip=clip,
        audio=audio,
        pose=pose,
    )


def sample_rng(config: TrainConfig, item: VideoItem, draw: int) -> random.Random:
    """Augmentation RNG of (seed, video, draw): the cache is reproducible."""
    digest = hashlib.sha256(f"{config.seed}|{item.path}|{draw}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def manifest_path(config: TrainConfig, items: list[VideoItem], encoders_id: str) -> Path:
    from .config import ADDED_FIELDS

    files = []
    for it in items:
        st = it.path.stat()
        entry: list = [str(it.path.resolve()), st.st_size, st.st_mtime_ns, it.caption]
        for extra in (it.audio, it.audio_features, it.pose):
            if extra is not None:
                xs = extra.stat()
                entry.append([str(extra.resolve()), xs.st_size, xs.st_mtime_ns])
        files.append(entry)
    fields = {f: getattr(config, f) for f in _DATA_FIELDS}
    for f in _LATER_DATA_FIELDS:
        if getattr(config, f) != ADDED_FIELDS[f]:
            fields[f] = getattr(config, f)
    data = {
        "data": fields,
        "encoders": encoders_id,
        "files": files,
    }
    key = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    return config.cache_path / f"manifest-{key}.json"


def read_manifest(path: Path, cache: FeatureCache) -> tuple[list[CachedSample], int] | None:
    """(samples, unreadable videos) of a complete manifest, or None when it is missing or a
    file it names is gone."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    samples = [CachedSample(**s) for s in data["samples"]]
    for s in samples:
        for kind, key in (("latent", s.latent), ("cond", s.cond), ("text", s.text)):
            if not cache.has(kind, key):
                return None
        if s.clip and not cache.has("clip", s.clip):
            return None
        if s.audio and not cache.has("audio", s.audio):
            return None
        if s.pose and not cache.has("pose", s.pose):
            return None
    return samples, int(data.get("skipped", 0))


def build_cache(
    config: TrainConfig,
    items: list[VideoItem],
    encoders: Encoders | Callable[[], Encoders],
    rank: int = 0,
    world: int = 1,
) -> tuple[list[CachedSample], int]:
    """Encode ``augment_draws`` samples of every video (skipping what the cache holds).

    ``encoders`` may be a zero-argument factory: it is called only when something must be
    encoded. Returns (samples, unreadable video count). Unreadable videos are skipped with a
    warning; SVIError if no video could be read. With ``world`` > 1 each rank encodes its
    share and all ranks return the full list (torch.distributed must be initialised).
    """
    cache = FeatureCache(config.cache_path)
    enc_id = (
        encoders.video_id + encoders.text_id + encoders.clip_id + encoders.audio_id
        if isinstance(encoders, Encoders)
        else _factory_id(config)
    )
    manifest = manifest_path(config, items, enc_id)
    found = read_manifest(manifest, cache)
    if found is not None:
        logger.info("training cache: %d samples from '%s'", len(found[0]), manifest)
        return found

    context_override = _load_context_file(config, cache)
    resolved: Encoders | None = encoders if isinstance(encoders, Encoders) else None
    local: list[dict] = []
    skipped = 0
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32

    def get_encoders() -> Encoders:
        nonlocal resolved
        if resolved is None:
            resolved = encoders() if callable(encoders) else encoders
        return resolved

    for idx, item in enumerate(items):
        if idx % world != rank:
            continue
        audio_key: str | None = None
        for draw in range(config.augment_draws):
            try:
                if draw == 0 and (item.audio is not None or item.audio_features is not None):
                    from .talk import cache_audio_features

                    audio_key = cache_audio_features(item, cache, get_encoders)
                sample = draw_sample(item, config, draw, sample_rng(config, item, draw))
            except VideoReadError as e:
                logger.warning("skipping unreadable video: %s", e)
                skipped += 1
                break
            encoded = _encode_sample(config, sample, get_encoders(), cache, dtype, context_override)
            if audio_key is not None:
                encoded = dataclasses.replace(encoded, audio=audio_key, audio_start=sample.start)
            local.append(asdict(encoded))
    all_samples, skipped = _merge_ranks(local, skipped, world)
    if not all_samples:
        raise SVIError(
            f"none of the {len(items)} videos in '{config.dataset}' could be read; check the "
            "files play (ffmpeg) and are not empty"
        )
    if skipped:
        logger.warning("%d unreadable video(s) skipped while building the cache", skipped)
    if rank == 0:
        manifest.parent.mkdir(parents=True, exist_ok=True)
        tmp = manifest.with_suffix(".tmp")
        tmp.write_text(json.dumps({"samples": all_samples, "skipped": skipped}, indent=1))
        os.replace(tmp, manifest)
    return [CachedSample(**s) for s in all_samples], skipped


def _factory_id(config: TrainConfig) -> str:
    ids = []
    paths = (config.vae_path, config.text_encoder_path, config.text_embeddings)
    extra = (config.wav2vec_path,) if config.mode == "talk" else ()
    for p in paths + (config.clip_vision_path, config.context_file) + extra:
        ids.append(file_fingerprint(p) if p and Path(p).exists() else p)
    return "|".join(ids)


def _load_context_file(config: TrainConfig, cache: FeatureCache) -> tuple[str, str | None] | None:
    if not config.context_file:
        return None
    from safetensors.torch import load_file

    from svi_core.checkpoints import check_safetensors_header

    p = Path(config.context_file)
    if not p.is_file():
        raise SVIError(f"context_file '{p}' does not exist; pass a safetensors file with 'context'")
    check_safetensors_header(p, "context_file")  # a pickle or a truncated file: one clear error
    try:
        data = load_file(str(p))
    except Exception as e:  # safetensors raises its own SafetensorError
        raise SVIError(f"context_file '{p}' cannot be read ({type(e).__name__}: {e})") from None
    if "context" not in data or data["context"].ndim != 2:
        raise SVIError(
            f"context_file '{p}' must hold 'context' [L, D] (and optionally 'clip_fea' "
            f"[257, C]); found {sorted(data)}"
        )
    tkey = content_key("context_file", data["context"].float())
    cache.put("text", tkey, data["context"])
    ckey = None
    if "clip_fea" in data:
        ckey = content_key("context_file", data["clip_fea"].float())
        cache.put("clip", ckey, data["clip_fea"])
    return tkey, ckey


def _encode_sample(
    config: TrainConfig,
    sample,
    enc: Encoders,
    cache: FeatureCache,
    dtype: torch.dtype,
    context_override: tuple[str, str | None] | None,
) -> CachedSample:
    from svi_core.conditioning import frames_to_pixels

    dt = str(dtype)
    lkey = content_key("latent", enc.video_id, dt, sample.frames)
    if not cache.has("latent", lkey):
        _need(enc.encode_video, "VAE (vae_path)")
        cache.put("latent", lkey, enc.encode_video(frames_to_pixels(sample.frames)).to(dtype))
    pad = sample.padding_frame if sample.padding_frame is not None else torch.zeros(0)
    ckey = content_key("cond", enc.video_id, dt, config.padding, str(config.num_frames))
    ckey = content_key(ckey, sample.motion, pad)
    if not cache.has("cond", ckey):
        _need(enc.encode_video, "VAE (vae_path)")
        cache.put("cond", ckey, enc.encode_video(conditioning_pixels(sample, config)).to(dtype))
    if context_override is not None:
        tkey, clip_key = context_override
    else:
        tkey = content_key("text", enc.text_id, sample.caption)
        if not cache.has("text", tkey):
            _need(enc.encode_text, "text encoder (text_encoder_path)")
            cache.put("text", tkey, enc.encode_text(sample.caption).float())
        clip_key = None
        if enc.clip_features is not None:
            clip_key = content_key("clip", enc.clip_id, sample.motion[0])
            if not cache.has("clip", clip_key):
                frame = frames_to_pixels(sample.motion[:1])[:, :, 0]
                cache.put("clip", clip_key, enc.clip_features(frame).float())
    pose_key = None
    if sample.pose is not None:
        from .dance import pack_pose_frames

        pose_key = content_key("pose", sample.pose)
        if not cache.has("pose", pose_key):
            cache.put_tensors("pose", pose_key, pack_pose_frames(sample.pose))
    return CachedSample(
        video=sample.video,
        draw=sample.draw,
        latent=lkey,
        cond=ckey,
        text=tkey,
        clip=clip_key,
        pose=pose_key,
    )


def _need(fn: object, what: str) -> None:
    if fn is None:
        raise SVIError(f"the training cache is incomplete and no {what} is configured to fill it")


def _merge_ranks(local: list[dict], skipped: int, world: int) -> tuple[list[dict], int]:
    """All ranks' sample lists (sent as JSON bytes in a uint8 tensor, no pickle)."""
    if world > 1:
        parts = all_gather_json({"samples": local, "skipped": skipped}, world)
        local = [s for part in parts for s in part["samples"]]
        skipped = sum(part["skipped"] for part in parts)
    return sorted(local, key=lambda s: (s["video"], s["draw"])), skipped


def all_gather_json(obj: object, world: int) -> list:
    """Gather one JSON-serialisable object from every rank (torch.distributed initialised)."""
    import torch.distributed as dist

    backend_gpu = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if backend_gpu else None
    data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8, device=device)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: data.numel()] = data
    bufs = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(bufs, padded)
    return [
        json.loads(bytes(b[: int(n)].cpu().tolist()).decode())
        for b, n in zip(bufs, sizes, strict=True)
    ]


_INPUT_FILES = (
    "dit_path",
    "vae_path",
    "text_encoder_path",
    "text_embeddings",
    "clip_vision_path",
    "context_file",
    "multitalk_path",
    "wav2vec_path",
    "init_lora",
)
_ALWAYS_SAFETENSORS = ("text_embeddings", "context_file")


def check_input_files(config: TrainConfig) -> None:
    """Up-front checks of the model and context files a run will read, before the DiT or any
    encoder loads: every path that is set exists, and the safetensors ones have a sound header
    (not a pickle, not truncated: :func:`svi_core.checkpoints.check_safetensors_header`).

    Raises:
        SVIError: listing every bad file (config key, path, what is wrong).
    """
    from svi_core.checkpoints import SAFETENSORS_SUFFIXES, check_safetensors_header

    problems: list[str] = []
    for name in _INPUT_FILES:
        value = getattr(config, name)
        if not value:
            continue
        p = Path(value)
        if not p.exists():
            problems.append(f"{name} '{p}' does not exist")
        elif p.is_file() and (
            name in _ALWAYS_SAFETENSORS or p.suffix.lower() in SAFETENSORS_SUFFIXES
        ):
            try:
                check_safetensors_header(p, name)
            except SVIError as e:
                problems.append(str(e))
    if len(problems) == 1:
        raise SVIError(problems[0])
    if problems:
        listed = "; ".join(f"({i}) {m}" for i, m in enumerate(problems, 1))
        raise SVIError(f"{len(problems)} problems: {listed}")
