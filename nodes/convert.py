"""Pure-torch translations between ComfyUI's data layouts and ``svi_core``'s.

Nothing here imports ComfyUI, so tier-1 tests cover it without a host.

Layouts:
- ComfyUI IMAGE: ``[B, H, W, C]`` float32 in [0, 1] (B = frames for video).
- ``svi_core`` pixels: ``[1, 3, F, H, W]`` float32 in [-1, 1].
- official I2V mask: ``[1, 4, T, h, w]``, 1 = latent frame given; ComfyUI's ``concat_mask``
  is its inverse (the Wan model sees ``1 - concat_mask``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

import torch

from ..svi_core.errors import SVIError

_WEIGHT = ".weight"


def image_to_pixels(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE ``[B, H, W, C]`` in [0, 1] -> pixels ``[1, 3, B, H, W]`` in [-1, 1].

    Only the first three channels are used (an alpha channel is dropped); a grey image
    (C = 1) is repeated to RGB.
    """
    if image.ndim != 4:
        raise SVIError(f"expected an IMAGE [B, H, W, C]; got shape {tuple(image.shape)}")
    if image.shape[-1] == 1:
        image = image.expand(-1, -1, -1, 3)
    elif image.shape[-1] < 3:
        raise SVIError(f"expected an RGB IMAGE with 3 channels; got {image.shape[-1]} channels")
    rgb = image[..., :3].float()
    return (rgb * 2.0 - 1.0).permute(3, 0, 1, 2).unsqueeze(0).contiguous()


def pixels_to_image(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels ``[1, 3, F, H, W]`` in [-1, 1] -> ComfyUI IMAGE ``[F, H, W, 3]`` in [0, 1]."""
    if pixels.ndim != 5 or pixels.shape[0] != 1 or pixels.shape[1] != 3:
        raise SVIError(f"expected pixels [1, 3, F, H, W]; got shape {tuple(pixels.shape)}")
    return ((pixels[0].float().clamp(-1.0, 1.0) + 1.0) * 0.5).permute(1, 2, 3, 0).contiguous()


def frame_to_image(frame: torch.Tensor) -> torch.Tensor:
    """One frame ``[1, 3, H, W]`` in [-1, 1] -> ComfyUI IMAGE ``[1, H, W, 3]`` in [0, 1]."""
    if frame.ndim != 4 or frame.shape[1] != 3:
        raise SVIError(f"expected a frame [1, 3, H, W]; got shape {tuple(frame.shape)}")
    return ((frame.float().clamp(-1.0, 1.0) + 1.0) * 0.5).permute(0, 2, 3, 1).contiguous()


def official_mask_to_comfy(mask: torch.Tensor) -> torch.Tensor:
    """Official I2V mask (1 = frame given) -> ComfyUI ``concat_mask`` (0 = frame given)."""
    return 1.0 - mask.float()


def sanitise_run_name(name: str) -> str:
    """A run name that is one safe folder name: letters, digits, ``-``, ``_``, ``.``.

    Other characters (path separators included) become ``_``; leading dots are removed so
    the name can never be ``.``, ``..`` or hidden. Raises SVIError if nothing is left.
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name).strip()).lstrip(".")[:120]
    if not cleaned.strip("_"):
        raise SVIError(
            f"run name {name!r} has no usable characters; use letters, digits, '-' or '_'"
        )
    return cleaned


def run_directory(output_root: str, run_name: str, subfolder: str = "svi") -> str:
    """``<output_root>/<subfolder>/<sanitised run name>``, guaranteed inside ``output_root``."""
    root = os.path.realpath(output_root)
    path = os.path.realpath(os.path.join(root, subfolder, sanitise_run_name(run_name)))
    if os.path.commonpath([root, path]) != root:
        raise SVIError(f"run name {run_name!r} points outside the output folder {root}")
    return path


def run_video(run_dir: str) -> str:
    """The stitched video of an SVI run folder: ``<run_dir>/<folder name>.mp4`` (where the
    SVI Infinite Sampler writes it and the Drift Report looks for it)."""
    return os.path.join(run_dir, os.path.basename(os.path.normpath(run_dir)) + ".mp4")


def module_shapes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Weight shapes by official module path (``blocks.0.self_attn.q`` -> ``(out, in)``).

    ``state_dict`` keys are the DiT's own (``blocks.0.self_attn.q.weight``); a
    ``diffusion_model.`` prefix is removed. Only ``.weight`` entries are kept.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for key, tensor in state_dict.items():
        if not key.endswith(_WEIGHT):
            continue
        module = key[: -len(_WEIGHT)]
        if module.startswith("diffusion_model."):
            module = module[len("diffusion_model.") :]
        shapes[module] = tuple(tensor.shape)
    return shapes


def first_missing(keys: Iterable[str], available: Iterable[str]) -> str | None:
    """The first of ``keys`` not in ``available`` (in sorted order), or None."""
    have = set(available)
    for key in sorted(keys):
        if key not in have:
            return key
    return None


def reference_from_image(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The first frame of a ComfyUI IMAGE as the reference: uint8 ``[height, width, 3]``.

    ``image``: ``[B, H, W, C]`` in [0, 1]. Rounded to uint8 (an image loaded from a file comes
    back exactly), then stretched to ``width x height`` with PIL bicubic, never cropped (the
    official preprocessing).
    """
    import numpy as np
    from PIL import Image

    px = image_to_pixels(image[:1])  # validates the layout
    u8 = ((px[0, :, 0].permute(1, 2, 0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    if tuple(u8.shape[:2]) == (height, width):
        return u8.contiguous()
    pil = Image.fromarray(u8.numpy()).resize((width, height), Image.BICUBIC)
    return torch.from_numpy(np.array(pil, dtype=np.uint8).copy())


def image_to_pose_frames(image: torch.Tensor) -> torch.Tensor:
    """A ComfyUI IMAGE batch of skeleton frames ``[B, H, W, C]`` in [0, 1] -> uint8 ``[B, H, W, 3]``.

    ``round(x * 255)``: frames loaded from a video come back exactly. An alpha channel is
    dropped. Fitting to the video size is ``svi_core.pose.prepare_pose_frames``' job.
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[0] < 1:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise SVIError(
            f"pose: expected an IMAGE batch [frames, H, W, 3] (a skeleton video from Load Video "
            f"or a pose-estimation node); got {shape}"
        )
    if image.shape[-1] not in (3, 4):
        raise SVIError(
            f"pose: the IMAGE has {image.shape[-1]} channels; SVI-Dance needs the coloured "
            "skeleton (RGB) drawn by DWPose / OpenPose"
        )
    x = image[..., :3].detach().float().cpu()
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8)
