"""Fresh toy-world data for the ERFT study: scene seeds, clips, batched VAE encodes, datasets.

Seed ranges (every scene is one integer seed of :class:`svi_core.toy.world.ToyScene`):

* ``0 .. 9999``: held out. Test scenes ``TEST_SCENES``, validation scenes ``VAL_SCENES`` (lr
  choice), and the base model's one-clip validation clips ``BASE_VAL_SCENES``.
* ``10_000 .. 109_999``: what the shipped toy base was pretrained on (``pretrain.py``).
* ``1_000_000 ..``: fresh scenes for this study, drawn without replacement from a seeded
  generator: the base continuation pool and the LoRA training set are disjoint blocks.

Encoding is batched (8 clips per VAE call: ~3x less CPU than one at a time on one thread).
For the LoRA training set the trainer itself reads the videos (lossless RGB H.264 in .mkv, so
it sees exactly the rendered pixels) and asks an :class:`train.cache.Encoders` for latents;
:func:`lookup_encoders` answers from the batched encodes (a miss falls back to the VAE and is
counted, so the shortcut can be checked to change nothing).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from svi_core.latents import normalise
from svi_core.toy.models import TOY_FRAMES, TOY_HEIGHT, TOY_WIDTH
from svi_core.toy.world import ToyScene, WorldConfig

WORLD = WorldConfig(height=TOY_HEIGHT, width=TOY_WIDTH)
TEST_SCENES = tuple(range(100, 116))  # 16 held-out test scenes
VAL_SCENES = (1000, 1001, 1002, 1003)  # lr selection only
BASE_VAL_SCENES = tuple(range(2000, 2064))  # one-clip validation loss of the base
FRESH_SEED_BASE = 1_000_000
MAX_START = 400  # clips start at a frame drawn in [0, MAX_START)


def fresh_scenes(seed: int, block: str, n: int) -> list[tuple[int, int]]:
    """``n`` (scene seed, start frame) pairs of a named block (``"base"`` or ``"lora"``),
    disjoint between blocks and never in the held-out or pretraining ranges."""
    offset = {"base": 0, "lora": 10_000_000}[block]
    rng = np.random.default_rng([seed, len(block), offset])
    scenes = rng.choice(10_000_000, size=n, replace=False) + FRESH_SEED_BASE + offset
    starts = rng.integers(0, MAX_START, size=n)
    return [(int(s), int(t)) for s, t in zip(scenes, starts, strict=True)]


def render(scene: int, start: int = 0, frames: int = TOY_FRAMES) -> np.ndarray:
    """uint8 ``[frames, H, W, 3]`` of toy scene ``scene`` from frame ``start``."""
    return ToyScene(scene, WORLD).frames(start, frames)


def pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[F, H, W, 3]`` -> float32 ``[1, 3, F, H, W]`` in [-1, 1] (the project's rule)."""
    from svi_core.conditioning import frames_to_pixels

    return frames_to_pixels(torch.from_numpy(np.ascontiguousarray(frames)))


def cond_pixels(first: np.ndarray, frames: int = TOY_FRAMES) -> torch.Tensor:
    """The I2V / mode ``tom`` conditioning video ``[first frame, zeros x (F - 1)]`` as pixels
    ``[1, 3, F, H, W]`` (zeros = mid-grey in [-1, 1])."""
    p = torch.zeros(1, 3, frames, *first.shape[:2])
    p[:, :, :1] = pixels(first[None])
    return p


@torch.no_grad()
def encode_batched(vae, batch: list[torch.Tensor], size: int = 8) -> list[torch.Tensor]:
    """NORMALISED posterior-mean latents ``[1, 16, T, h, w]`` of pixel videos ``[1, 3, F, H, W]``,
    encoded ``size`` at a time."""
    out: list[torch.Tensor] = []
    for i in range(0, len(batch), size):
        x = torch.cat(batch[i : i + size])
        z = normalise(vae.encode(x).latent_dist.mean.float())
        out.extend(z[j : j + 1].clone() for j in range(z.shape[0]))
    return out


@torch.no_grad()
def decode_frames(vae, latents: list[torch.Tensor], size: int = 8) -> list[np.ndarray]:
    """NORMALISED latents ``[1, 16, T, h, w]`` -> uint8 frames ``[F, H, W, 3]`` each, decoded
    ``size`` at a time and quantised as the clip loop stores frames."""
    from svi_core.conditioning import quantise_frames
    from svi_core.latents import denormalise

    out: list[np.ndarray] = []
    for i in range(0, len(latents), size):
        x = vae.decode(denormalise(torch.cat(latents[i : i + size]))).sample.float()
        out.extend(quantise_frames(x[j : j + 1]).numpy() for j in range(x.shape[0]))
    return out


def encode_clips(vae, clips: list[tuple[int, int]], log=None) -> dict[str, torch.Tensor]:
    """``x0`` (clip latents) and ``cond`` (conditioning latents) ``[N, 16, T, h, w]`` of the
    (scene, start) clips."""
    x0, cond = [], []
    t0 = time.time()
    for i in range(0, len(clips), 64):
        chunk = [render(s, t) for s, t in clips[i : i + 64]]
        x0 += encode_batched(vae, [pixels(v) for v in chunk])
        cond += encode_batched(vae, [cond_pixels(v[0]) for v in chunk])
        if log is not None:
            log(f"encoded {min(i + 64, len(clips))}/{len(clips)} clips ({time.time() - t0:.0f} s)")
    return {"x0": torch.cat(x0), "cond": torch.cat(cond)}


def encode_clips_cached(vae, clips: list[tuple[int, int]], folder: Path, log=None,
                        chunk: int = 256) -> dict[str, torch.Tensor]:  # fmt: skip
    """:func:`encode_clips` in chunks saved under ``folder`` (an interrupted run resumes)."""
    from safetensors.torch import load_file, save_file

    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in range(0, len(clips), chunk):
        p = folder / f"chunk_{i // chunk:04d}_{min(i + chunk, len(clips)) - i}.safetensors"
        if not p.is_file():
            save_file(encode_clips(vae, clips[i : i + chunk]), str(p))
            if log is not None:
                log(f"encoded {min(i + chunk, len(clips))}/{len(clips)} clips")
        parts.append(load_file(str(p)))
    return {k: torch.cat([q[k] for q in parts]) for k in ("x0", "cond")}


def dedupe_constant_rows(dit) -> None:
    """Speed-up for the toy's constant conditioning, exact: when every token row of the text
    context (or CLIP feature) is the same (the toy's all-zero context), the row-wise text and
    image embedders of the diffusers Wan DiT compute one row and repeat it instead of 512
    (257). The forward output is bit-identical; the embedders' gradients are the same sums.
    Patches the module instances' ``forward`` (state dict names unchanged)."""
    ce = dit.condition_embedder
    for name in ("text_embedder", "image_embedder"):
        module = getattr(ce, name, None)
        if module is None or getattr(module, "pos_embed", None) is not None:
            continue  # position-dependent embeddings are not row-wise
        inner = module.forward

        def forward(x, *args, _inner=inner, **kwargs):
            if x.dim() == 3 and x.shape[1] > 1 and bool((x == x[:, :1]).all()):
                y = _inner(x[:, :1], *args, **kwargs)
                return y.expand(-1, x.shape[1], *y.shape[2:])
            return _inner(x, *args, **kwargs)

        module.forward = forward


def write_lossless(path: Path, frames: np.ndarray, fps: int = 16) -> None:
    """uint8 ``[F, H, W, 3]`` -> lossless RGB H.264 (libx264rgb, crf 0) in ``path`` (.mkv):
    reading it back gives the same bytes."""
    import imageio_ffmpeg

    w = imageio_ffmpeg.write_frames(
        str(path),
        (frames.shape[2], frames.shape[1]),
        fps=fps,
        codec="libx264rgb",
        pix_fmt_out="rgb24",
        output_params=["-crf", "0"],
        macro_block_size=1,
        quality=None,
    )
    w.send(None)
    for f in frames:
        w.send(np.ascontiguousarray(f))
    w.close()


def write_dataset(root: Path, clips: list[tuple[int, int]], log=None) -> None:
    """One 13-frame lossless video per clip (``clip_00000.mkv`` + caption); skips what exists."""
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for i, (scene, start) in enumerate(clips):
        p = root / f"clip_{i:05d}.mkv"
        if not p.is_file():
            tmp = root / f".tmp_{i:05d}.mkv"
            write_lossless(tmp, render(scene, start))
            tmp.replace(p)
            p.with_suffix(".txt").write_text("toy world\n")
        if log is not None and (i + 1) % 500 == 0:
            log(f"dataset: {i + 1}/{len(clips)} videos ({time.time() - t0:.0f} s)")


def _key(p: torch.Tensor) -> str:
    return hashlib.sha256(p.contiguous().numpy().tobytes()).hexdigest()


class LatentLookup:
    """``encode_video`` for the trainer's cache: answers from batched encodes of known pixel
    videos, falls back to one VAE call (counted in ``misses``) for anything else."""

    def __init__(self, vae) -> None:
        self.vae = vae
        self.table: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def put(self, video: torch.Tensor, latent: torch.Tensor) -> None:
        """Answer ``latent`` [1, 16, T, h, w] for the pixel video ``video``."""
        self.table[_key(video)] = latent

    @torch.no_grad()
    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        z = self.table.get(_key(p))
        if z is not None:
            self.hits += 1
            return z
        self.misses += 1
        return normalise(self.vae.encode(p).latent_dist.mean.float())


def vae_identity(path: Path) -> str:
    """Content hash of the VAE file (the cache's encoder identity)."""
    return "toyvae-" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
