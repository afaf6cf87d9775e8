"""How clip k is conditioned: the reference image, the carried motion, padding, mask, CLIP frame.

Two carry spaces (see :mod:`svi_core.modes`):

* pixel carry (SVI 1.0 / 2.0 on Wan2.1, and ``v2_w22``): the last m DECODED frames of the
  previous clip, quantised exactly as stored (uint8), build the conditioning video
  ``V = [M (m frames), P (F - m frames)]`` in [-1, 1]; ``cond_latent = encode(V)`` in ONE causal
  encode. The CLIP-vision frame is M[0]. Clip 0 uses the reference image as M (once, or m times).
* latent carry (SVI 2.0 Pro): ``cond_latent = [A, prev_latent[:, :, -k:], 0...]`` in NORMALISED
  space, A = encode(reference); never decoded and re-encoded.

In every mode the mask is 1 on latent frame 0 only (official convention: 1 = given).

Layouts: uint8 frames are ``[F, H, W, 3]``; pixels are ``[1, 3, F, H, W]`` float32 in [-1, 1];
latents are NORMALISED ``[1, 16, T, H/8, W/8]``; masks ``[1, 4, T, H/8, W/8]`` float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .backend import Backend
from .errors import SVIError
from .latents import LATENT_CHANNELS
from .limits import frames_problem, size_problem
from .modes import ModeConfig

_TWO_OVER_255 = 2.0 / 255.0


def quantise_frames(pixels: torch.Tensor) -> torch.Tensor:
    """Decoded pixels ``[1, 3, F, H, W]`` in [-1, 1] -> uint8 frames ``[F, H, W, 3]``.

    Exactly as the official scripts store frames: clamp to [-1, 1], ``(x + 1) * 127.5``,
    clip to [0, 255], truncate (float32 math).
    """
    if pixels.ndim != 5 or pixels.shape[:2] != (1, 3):
        raise ValueError(f"expected pixels [1, 3, F, H, W]; got {tuple(pixels.shape)}")
    x = pixels[0].detach().float().cpu().clamp(-1.0, 1.0)  # one float32 copy, then in place
    u = x.add_(1.0).mul_(127.5).clamp_(0.0, 255.0).to(torch.uint8)
    return u.permute(1, 2, 3, 0).contiguous()


def frames_to_pixels(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames ``[F, H, W, 3]`` -> pixels ``[1, 3, F, H, W]`` float32 in [-1, 1].

    The official preprocessing: ``u * (2 / 255) - 1`` in float32.
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 frames [F, H, W, 3]; got {frames.dtype} {tuple(frames.shape)}"
        )
    x = frames.float() * _TWO_OVER_255 - 1.0
    return x.permute(3, 0, 1, 2).unsqueeze(0).contiguous()


def first_frames_mask(latent_frames: int, height: int, width: int, given: int = 1) -> torch.Tensor:
    """Mask ``[1, 4, T, height, width]`` float32: 1 on the first ``given`` latent frames, else 0.

    ``height``/``width`` are LATENT sizes (pixels / 8). SVI uses ``given = 1`` in every mode.
    """
    mask = torch.zeros(1, 4, latent_frames, height, width, dtype=torch.float32)
    mask[:, :, :given] = 1.0
    return mask


@dataclass(frozen=True)
class ClipConditioning:
    """The image side of one clip's conditioning.

    Attributes:
        cond_latent: ``[1, 16, T, h, w]`` NORMALISED conditioning latent.
        mask: ``[1, 4, T, h, w]``, 1 on latent frame 0 only.
        clip_frame: ``[1, 3, H, W]`` in [-1, 1], the frame for CLIP vision (M[0]); None when
            the mode's model has no image embedding.
    """

    cond_latent: torch.Tensor
    mask: torch.Tensor
    clip_frame: torch.Tensor | None


@dataclass(frozen=True)
class Carry:
    """What the next clip needs from the previous one (None for clip 0).

    Attributes:
        motion_frames: pixel carry: the last m decoded frames, uint8 ``[m, H, W, 3]``.
        latent: latent carry: the previous clip's final NORMALISED latent ``[1, 16, T, h, w]``.
    """

    motion_frames: torch.Tensor | None = None
    latent: torch.Tensor | None = None


def carry_from_clip(mode: ModeConfig, latent: torch.Tensor, frames: torch.Tensor) -> Carry:
    """The carry a finished clip hands to the next one.

    Args:
        latent: the clip's denoised NORMALISED latent ``[1, 16, T, h, w]``.
        frames: the clip's decoded frames, uint8 ``[F, H, W, 3]``.
    """
    if mode.carry == "latent":
        return Carry(latent=latent.detach().float().cpu())
    return Carry(motion_frames=frames[-mode.motion_frames :].clone())


def conditioning_video(
    mode: ModeConfig, reference: torch.Tensor, motion: torch.Tensor | None
) -> torch.Tensor:
    """Pixel carry: the conditioning video ``V = [M, P]`` as pixels ``[1, 3, F, H, W]`` in [-1, 1].

    Args:
        reference: the resized reference image, uint8 ``[H, W, 3]``.
        motion: the previous clip's last m frames, uint8 ``[m, H, W, 3]``; None for clip 0
            (then M is the reference, once or m times per ``first_clip_repeat_reference``).
    """
    _check_reference(reference)
    if motion is None:
        reps = mode.motion_frames if mode.first_clip_repeat_reference else 1
        motion = reference.unsqueeze(0).expand(reps, -1, -1, -1)
    if motion.shape[1:] != reference.shape:
        raise SVIError(
            f"motion frames {tuple(motion.shape)} do not match the reference image "
            f"{tuple(reference.shape)}; resume with the same size settings"
        )
    m = motion.shape[0]
    if m >= mode.frames:
        raise SVIError(f"{m} motion frames leave no room in a {mode.frames}-frame clip")
    motion_px = frames_to_pixels(motion)
    h, w = reference.shape[:2]
    pad_len = mode.frames - m
    if mode.padding == "reference":
        pad = frames_to_pixels(reference.unsqueeze(0)).expand(-1, -1, pad_len, -1, -1)
    else:
        pad = torch.zeros(1, 3, pad_len, h, w, dtype=torch.float32)
    return torch.cat([motion_px, pad], dim=2)


def build_pixel_conditioning(
    backend: Backend, mode: ModeConfig, reference: torch.Tensor, carry: Carry | None
) -> ClipConditioning:
    """Pixel carry: ONE causal ``backend.encode`` of ``[M, P]``; mask latent frame 0; CLIP = M[0]."""
    motion = carry.motion_frames if carry is not None else None
    video = conditioning_video(mode, reference, motion)
    cond = backend.encode(video)
    _check_latent(cond, mode, reference, "backend.encode")
    clip_frame = video[:, :, 0].clone() if mode.clip_vision else None
    mask = first_frames_mask(cond.shape[2], cond.shape[3], cond.shape[4], mode.mask_frames)
    return ClipConditioning(cond_latent=cond.float(), mask=mask, clip_frame=clip_frame)


def anchor_latent(backend: Backend, reference: torch.Tensor) -> torch.Tensor:
    """Latent carry: A = encode(reference), NORMALISED ``[1, 16, 1, H/8, W/8]``."""
    _check_reference(reference)
    return backend.encode(frames_to_pixels(reference.unsqueeze(0))).float()


def build_latent_conditioning(
    mode: ModeConfig, anchor: torch.Tensor, carry: Carry | None
) -> ClipConditioning:
    """Latent carry: ``[A, prev[:, :, -k:], zeros]`` (NORMALISED; clip 0: ``[A, zeros]``)."""
    t = mode.latent_frames
    if anchor.ndim != 5 or anchor.shape[:3] != (1, LATENT_CHANNELS, 1):
        raise ValueError(f"expected an anchor latent [1, 16, 1, h, w]; got {tuple(anchor.shape)}")
    parts = [anchor.float()]
    if carry is not None and carry.latent is not None:
        prev = carry.latent
        if (
            prev.shape[0] != 1
            or prev.shape[1] != LATENT_CHANNELS
            or prev.shape[3:] != anchor.shape[3:]
        ):
            raise SVIError(
                f"previous latent {tuple(prev.shape)} does not match the anchor "
                f"{tuple(anchor.shape)}; resume with the same size settings"
            )
        parts.append(prev[:, :, -mode.motion_latents :].float())
    used = sum(p.shape[2] for p in parts)
    h, w = anchor.shape[3:]
    parts.append(torch.zeros(1, LATENT_CHANNELS, t - used, h, w, dtype=torch.float32))
    cond = torch.cat(parts, dim=2)
    mask = first_frames_mask(t, h, w, mode.mask_frames)
    return ClipConditioning(cond_latent=cond, mask=mask, clip_frame=None)


def build_conditioning(
    backend: Backend,
    mode: ModeConfig,
    reference: torch.Tensor,
    carry: Carry | None,
    anchor: torch.Tensor | None = None,
) -> ClipConditioning:
    """Clip conditioning for any mode (``carry`` None for clip 0).

    ``anchor`` (latent carry) may be passed to avoid re-encoding the reference every clip.
    """
    if mode.carry == "latent":
        if anchor is None:
            anchor = anchor_latent(backend, reference)
        return build_latent_conditioning(mode, anchor, carry)
    return build_pixel_conditioning(backend, mode, reference, carry)


# ----- reference image ---------------------------------------------------------------------


def reference_size(mode: ModeConfig, image_width: int, image_height: int) -> tuple[int, int]:
    """Target ``(width, height)`` of the reference image for ``mode``.

    ``fit_width`` (Wan2.1 scripts): keep the size if width <= max_width, else scale to that
    width (height truncated); floor both to multiples of 16. ``fixed``: ``mode.width x
    mode.height``.
    """
    if mode.resize == "fixed":
        return mode.width, mode.height
    w, h = image_width, image_height
    if w > mode.max_width:
        # official utils/image_process.py:63-65: int(width * (height / width)), in that order
        # (h * max_width / w rounds differently for some sizes, e.g. 845x975 -> 960 vs 944)
        h = int(mode.max_width * (h / w))
        w = mode.max_width
    w, h = (w // 16) * 16, (h // 16) * 16
    if w < 16 or h < 16:
        raise SVIError(
            f"reference image {image_width}x{image_height} is too small; it needs at least 16 "
            "pixels per side"
        )
    return w, h


def load_reference(
    path: str | Path, mode: ModeConfig, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Load an image file as the reference: RGB, stretched (PIL bicubic, never cropped) to
    ``size`` (``(width, height)``) or to :func:`reference_size`. Returns uint8 ``[H, W, 3]``.

    Raises:
        SVIError: the file is missing or not a readable image.
    """
    import numpy as np

    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:  # pragma: no cover - pillow is in the standalone extra
        raise SVIError("loading an image file needs pillow: pip install pillow") from e
    p = Path(path)
    if not p.is_file():
        raise SVIError(f"reference image {p} does not exist; pass an existing image file")
    try:
        with Image.open(p) as im:
            im.load()
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
        raise SVIError(
            f"reference image {p} cannot be read as an image ({e}); use a PNG/JPEG/WebP file"
        ) from None
    target = size if size is not None else reference_size(mode, *rgb.size)
    check_size(target[0], target[1])
    if rgb.size != target:
        rgb = rgb.resize(target, Image.BICUBIC)
    return torch.from_numpy(np.array(rgb, dtype=np.uint8).copy())


def check_size(width: int, height: int) -> None:
    """Raise SVIError unless the size follows :func:`svi_core.limits.size_problem` (multiples
    of 16 in [16, 4096]); the error names the nearest valid values."""
    problem = size_problem(width, height)
    if problem:
        raise SVIError(problem)


def check_frames(frames: int) -> None:
    """Raise SVIError unless ``frames`` follows :func:`svi_core.limits.frames_problem` (4k + 1
    in [5, 1001]); the error names the nearest valid values."""
    problem = frames_problem(frames)
    if problem:
        raise SVIError(problem)


def _check_reference(reference: torch.Tensor) -> None:
    if reference.dtype != torch.uint8 or reference.ndim != 3 or reference.shape[-1] != 3:
        raise ValueError(
            f"expected the reference as uint8 [H, W, 3]; got {reference.dtype} "
            f"{tuple(reference.shape)}"
        )


def _check_latent(lat: torch.Tensor, mode: ModeConfig, reference: torch.Tensor, who: str) -> None:
    h, w = reference.shape[:2]
    want = (1, LATENT_CHANNELS, mode.latent_frames, h // 8, w // 8)
    if tuple(lat.shape) != want:
        raise RuntimeError(f"{who} returned a latent {tuple(lat.shape)}; expected {want}")
