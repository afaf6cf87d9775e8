"""How clip k is conditioned: the reference image, the carried motion, padding, mask, CLIP frame.

Two carry spaces (see :mod:`svi_core.modes`):

* pixel carry (SVI 1.0 / 2.0 on Wan2.1, and ``v2_w22``): the last m DECODED frames of the
  previous clip, quantised exactly as stored (uint8), build the conditioning video
  ``V = [M (m frames), P (F - m frames)]`` in [-1, 1]; ``cond_latent = encode(V)`` in ONE causal
  encode. The CLIP-vision frame is M[0]. Clip 0 uses the reference image as M (once, or m times).
* latent carry (SVI 2.0 Pro): ``cond_latent = [A, prev_latent[:, :, -k:], 0...]`` in NORMALISED
  space, A = encode(reference); never decoded and re-encoded.

In every mode the mask is 1 on latent frame 0 only (official convention: 1 = given).

Keyframes (optional, per clip): the clip's LAST frame is conditioned on a target image the way
ComfyUI's ``WanFirstLastFrameToVideo`` (and the official Wan FLF2V pipeline) does it: the image
is the last frame of the conditioning video, and the mask marks it. Mask layout (official
``wan/image2video.py``): mask channel c of latent frame t stands for pixel frame ``4t + c - 3``
(frame 0 fills all four channels of t = 0), so the last pixel frame F - 1 is channel 3 of the
last latent frame. :data:`KeyframeSlot` chooses how much of the last latent frame the keyframe
fills. Pixel carry: the keyframe goes into the ONE causal encode of ``V``. Latent carry (SVI 2.0
Pro): the keyframe is encoded at the position it has in a clip (the last latent of a short
causal encode, see :func:`keyframe_latent`) and written into the LAST latent slot of
``cond_latent``. The SVI LoRAs were trained with first-frame masks only; see README
"Directing a long video" for what to expect.

Layouts: uint8 frames are ``[F, H, W, 3]``; pixels are ``[1, 3, F, H, W]`` float32 in [-1, 1];
latents are NORMALISED ``[1, 16, T, H/8, W/8]``; masks ``[1, 4, T, H/8, W/8]`` float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from .backend import Backend
from .errors import SVIError
from .latents import LATENT_CHANNELS
from .limits import frames_problem, size_problem
from .modes import ModeConfig

_TWO_OVER_255 = 2.0 / 255.0

KeyframeSlot = Literal["frame", "latent"]
"""How much of the clip's last latent frame a keyframe fills.

``latent`` (default): the keyframe fills the last latent frame (the last 4 pixel frames, all 4
mask channels: the same kind of mask the SVI LoRAs see on latent frame 0). On the toy world it
brings the last frame 2.8x closer to the keyframe than no keyframe, with the right colour
(README, "Directing a long video"); the clip may end on up to 4 still frames.
``frame`` (exactly ``WanFirstLastFrameToVideo``): the keyframe is the last pixel frame only;
the mask marks that frame (channel 3 of the last latent frame); the three frames before it stay
padding. On the toy it reaches the keyframe's layout less closely and shifts its colour.
"""

KEYFRAME_SLOTS: tuple[str, ...] = ("frame", "latent")
_SLOT_FRAMES = {"frame": 1, "latent": 4}
"""Pixel frames at the end of the clip that hold the keyframe, per slot."""


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
class Keyframe:
    """A target image for a clip's last frame.

    Attributes:
        image: uint8 ``[H, W, 3]`` at the video size.
        slot: see :data:`KeyframeSlot`.
    """

    image: torch.Tensor
    slot: KeyframeSlot = "latent"

    def __post_init__(self) -> None:
        _check_reference(self.image, "keyframe")
        if self.slot not in KEYFRAME_SLOTS:
            raise SVIError(
                f"keyframe slot {self.slot!r} must be one of {', '.join(KEYFRAME_SLOTS)}"
            )

    @property
    def frames(self) -> int:
        """Pixel frames at the end of the clip the keyframe fills (1 or 4)."""
        return _SLOT_FRAMES[self.slot]


def mark_keyframe(mask: torch.Tensor, slot: KeyframeSlot) -> torch.Tensor:
    """``mask`` ``[1, 4, T, h, w]`` (a copy) with the keyframe's frames marked given (1).

    ``frame``: channel 3 of the last latent frame (pixel frame F - 1; the official layout, as
    ``WanFirstLastFrameToVideo`` marks an end image). ``latent``: all 4 channels of it.
    """
    out = mask.clone()
    if slot == "frame":
        out[:, 3, -1] = 1.0
    else:
        out[:, :, -1] = 1.0
    return out


def check_keyframe_room(mode: ModeConfig, motion: int) -> None:
    """A keyframe needs the last latent frame free of motion frames: ``motion <= F - 4``."""
    if mode.latent_frames < 2 or motion > mode.frames - 4:
        lo = max(5, motion + 4)
        need = lo + (-(lo - 1)) % 4
        raise SVIError(
            f"a keyframe needs a clip whose last latent frame holds no motion frames: "
            f"{motion} motion frame(s) in a {mode.frames}-frame clip leave no room; use at "
            f"least {need} frames per clip"
        )


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
    mode: ModeConfig,
    reference: torch.Tensor,
    motion: torch.Tensor | None,
    keyframe: Keyframe | None = None,
) -> torch.Tensor:
    """Pixel carry: the conditioning video ``V = [M, P]`` as pixels ``[1, 3, F, H, W]`` in [-1, 1].

    Args:
        reference: the resized reference image, uint8 ``[H, W, 3]``.
        motion: the previous clip's last m frames, uint8 ``[m, H, W, 3]``; None for clip 0
            (then M is the reference, once or m times per ``first_clip_repeat_reference``).
        keyframe: replaces the last ``keyframe.frames`` frames of P (``WanFirstLastFrameToVideo``
            puts its end image at the last frame of the video the same way).
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
    parts = [motion_px, pad]
    if keyframe is not None:
        check_keyframe_room(mode, m)
        if keyframe.image.shape != reference.shape:
            raise SVIError(
                f"keyframe {tuple(keyframe.image.shape)} does not match the reference image "
                f"{tuple(reference.shape)}; resize it to the video size first"
            )
        n = keyframe.frames
        key = frames_to_pixels(keyframe.image.unsqueeze(0)).expand(-1, -1, n, -1, -1)
        parts = [motion_px, pad[:, :, : pad_len - n], key]
    return torch.cat(parts, dim=2)


def build_pixel_conditioning(
    backend: Backend,
    mode: ModeConfig,
    reference: torch.Tensor,
    carry: Carry | None,
    keyframe: Keyframe | None = None,
) -> ClipConditioning:
    """Pixel carry: ONE causal ``backend.encode`` of ``[M, P]`` (the keyframe, if any, at the end
    of P); mask latent frame 0 (and the keyframe's frames); CLIP = M[0]."""
    motion = carry.motion_frames if carry is not None else None
    video = conditioning_video(mode, reference, motion, keyframe)
    cond = backend.encode(video)
    _check_latent(cond, mode, reference, "backend.encode")
    clip_frame = video[:, :, 0].clone() if mode.clip_vision else None
    mask = first_frames_mask(cond.shape[2], cond.shape[3], cond.shape[4], mode.mask_frames)
    if keyframe is not None:
        mask = mark_keyframe(mask, keyframe.slot)
    return ClipConditioning(cond_latent=cond.float(), mask=mask, clip_frame=clip_frame)


def anchor_latent(backend: Backend, reference: torch.Tensor) -> torch.Tensor:
    """Latent carry: A = encode(reference), NORMALISED ``[1, 16, 1, H/8, W/8]``."""
    _check_reference(reference)
    return backend.encode(frames_to_pixels(reference.unsqueeze(0))).float()


def keyframe_latent(backend: Backend, keyframe: Keyframe) -> torch.Tensor:
    """Latent carry: the keyframe encoded as the LAST latent frame of a clip, NORMALISED
    ``[1, 16, 1, H/8, W/8]``.

    The Wan VAE encodes frame 0 alone and every later latent frame from 4 pixel frames with
    causal context, so an image encoded on its own (a first-frame latent, like the anchor)
    is not what the last slot of a clip holds. The keyframe is therefore encoded where it
    sits in a clip: ``frame`` slot: the last latent of one causal encode of
    ``[padding x 4, keyframe]`` (zeros = mid-grey, as ``WanFirstLastFrameToVideo`` pads);
    ``latent`` slot: of ``[keyframe x 5]`` (a still group of 4 frames).
    """
    key = frames_to_pixels(keyframe.image.unsqueeze(0))
    if keyframe.slot == "frame":
        video = torch.cat([torch.zeros_like(key).expand(-1, -1, 4, -1, -1), key], dim=2)
    else:
        video = key.expand(-1, -1, 5, -1, -1).contiguous()
    lat = backend.encode(video).float()
    h, w = keyframe.image.shape[:2]
    if tuple(lat.shape) != (1, LATENT_CHANNELS, 2, h // 8, w // 8):
        raise RuntimeError(
            f"backend.encode returned a latent {tuple(lat.shape)} for 5 frames; expected "
            f"{(1, LATENT_CHANNELS, 2, h // 8, w // 8)}"
        )
    return lat[:, :, 1:2].clone()


def build_latent_conditioning(
    mode: ModeConfig,
    anchor: torch.Tensor,
    carry: Carry | None,
    keyframe: torch.Tensor | None = None,
    keyframe_slot: KeyframeSlot = "latent",
) -> ClipConditioning:
    """Latent carry: ``[A, prev[:, :, -k:], zeros]`` (NORMALISED; clip 0: ``[A, zeros]``).

    ``keyframe``: the NORMALISED keyframe latent ``[1, 16, 1, h, w]`` (:func:`keyframe_latent`);
    it replaces the last zero slot and the mask marks it per ``keyframe_slot``.
    """
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
    if keyframe is not None:
        if used >= t:
            raise SVIError(
                f"a keyframe needs a free last latent slot: anchor + {used - 1} motion "
                f"latent(s) fill all {t} latent frames; use more frames per clip"
            )
        if tuple(keyframe.shape) != (1, LATENT_CHANNELS, 1, h, w):
            raise ValueError(
                f"expected a keyframe latent [1, 16, 1, {h}, {w}]; got {tuple(keyframe.shape)}"
            )
    zeros = t - used - (keyframe is not None)
    parts.append(torch.zeros(1, LATENT_CHANNELS, zeros, h, w, dtype=torch.float32))
    if keyframe is not None:
        parts.append(keyframe.float())
    cond = torch.cat(parts, dim=2)
    mask = first_frames_mask(t, h, w, mode.mask_frames)
    if keyframe is not None:
        mask = mark_keyframe(mask, keyframe_slot)
    return ClipConditioning(cond_latent=cond, mask=mask, clip_frame=None)


def build_conditioning(
    backend: Backend,
    mode: ModeConfig,
    reference: torch.Tensor,
    carry: Carry | None,
    anchor: torch.Tensor | None = None,
    keyframe: Keyframe | None = None,
    keyframe_lat: torch.Tensor | None = None,
) -> ClipConditioning:
    """Clip conditioning for any mode (``carry`` None for clip 0).

    ``anchor`` (latent carry) may be passed to avoid re-encoding the reference every clip;
    likewise ``keyframe_lat`` (:func:`keyframe_latent` of ``keyframe``).
    ``keyframe``: the clip's last frame is conditioned on it (see :data:`KeyframeSlot`).
    """
    if mode.carry == "latent":
        if anchor is None:
            anchor = anchor_latent(backend, reference)
        if keyframe is not None and keyframe_lat is None:
            keyframe_lat = keyframe_latent(backend, keyframe)
        slot = keyframe.slot if keyframe is not None else "latent"
        lat = keyframe_lat if keyframe is not None else None
        return build_latent_conditioning(mode, anchor, carry, lat, slot)
    return build_pixel_conditioning(backend, mode, reference, carry, keyframe)


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


def check_keyframe_fits(mode: ModeConfig) -> None:
    """Raise SVIError when no clip of ``mode`` has room for a keyframe (before any work)."""
    if mode.carry == "latent":
        if 1 + mode.motion_latents >= mode.latent_frames:
            raise SVIError(
                f"a keyframe needs a free last latent slot: anchor + {mode.motion_latents} "
                f"motion latent(s) fill all {mode.latent_frames} latent frames of a "
                f"{mode.frames}-frame clip; use more frames per clip"
            )
        return
    check_keyframe_room(mode, mode.motion_frames)


def stretch_image(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> uint8 ``[height, width, 3]``, stretched like the reference image
    (PIL bicubic, never cropped); returned unchanged when it already has that size."""
    import numpy as np

    _check_reference(image, "image")
    if tuple(image.shape[:2]) == (height, width):
        return image
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - pillow ships with ComfyUI and the extras
        raise SVIError("resizing an image needs pillow: pip install pillow") from e
    pil = Image.fromarray(image.contiguous().numpy()).resize((width, height), Image.BICUBIC)
    return torch.from_numpy(np.array(pil, dtype=np.uint8).copy())


def read_image(path: str | Path, what: str = "image") -> torch.Tensor:
    """An image file as uint8 ``[H, W, 3]`` RGB, at its own size (no resizing).

    Raises:
        SVIError: the file is missing or not a readable image (``what`` names it).
    """
    import numpy as np

    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:  # pragma: no cover - pillow is in the standalone extra
        raise SVIError("loading an image file needs pillow: pip install pillow") from e
    p = Path(path)
    if not p.is_file():
        raise SVIError(f"{what} {p} does not exist; pass an existing image file")
    try:
        with Image.open(p) as im:
            im.load()
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise SVIError(
            f"{what} {p} cannot be read as an image ({e}); use a PNG/JPEG/WebP file"
        ) from None
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


def _check_reference(reference: torch.Tensor, what: str = "reference") -> None:
    if reference.dtype != torch.uint8 or reference.ndim != 3 or reference.shape[-1] != 3:
        raise ValueError(
            f"expected the {what} as uint8 [H, W, 3]; got {reference.dtype} "
            f"{tuple(reference.shape)}"
        )


def _check_latent(lat: torch.Tensor, mode: ModeConfig, reference: torch.Tensor, who: str) -> None:
    h, w = reference.shape[:2]
    want = (1, LATENT_CHANNELS, mode.latent_frames, h // 8, w // 8)
    if tuple(lat.shape) != want:
        raise RuntimeError(f"{who} returned a latent {tuple(lat.shape)}; expected {want}")
