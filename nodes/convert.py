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


def image_to_uint8(image: torch.Tensor | None, name: str) -> torch.Tensor | None:
    """One ComfyUI IMAGE (``[1, H, W, C]`` in [0, 1]) -> uint8 ``[H, W, 3]`` (rounded: an image
    loaded from a file comes back exactly); None stays None. A batch of several images is
    refused, naming the input."""
    if image is None:
        return None
    if image.ndim != 4 or image.shape[0] != 1:
        n = image.shape[0] if image.ndim == 4 else "?"
        raise SVIError(
            f"{name} holds {n} images; connect one image per input (pick one with ImageFromBatch)"
        )
    px = image_to_pixels(image)[0, :, 0]  # [3, H, W] in [-1, 1]
    return ((px.permute(1, 2, 0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


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


def frames_to_uint8(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE ``[B, H, W, C]`` in [0, 1] -> uint8 frames ``[B, H, W, 3]`` (rounded, as
    :func:`reference_from_image` rounds the first frame)."""
    px = image_to_pixels(image)  # validates the layout, drops alpha, greys -> RGB
    return ((px[0].permute(1, 2, 3, 0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def video_file_path(video) -> str | None:
    """The file behind a ComfyUI VIDEO when it is a whole file on disk (so it can be read as
    it is and joined by stream copy), else None (in memory, trimmed, or made of frames)."""
    get_source = getattr(video, "get_stream_source", None)
    if get_source is None:
        return None
    source = get_source()
    if not isinstance(source, str) or not os.path.isfile(source):
        return None
    trim = getattr(video, "get_active_trim_window", None)
    if trim is not None and tuple(trim()) != (0.0, 0.0):
        return None
    return source


def start_from_inputs(video, images, mode, size: tuple[int, int] | None):
    """The :class:`~svi_core.extend.VideoStart` of the sampler's ``extend_video`` (a ComfyUI
    VIDEO) or ``extend_images`` (an IMAGE batch) input, or None when neither is connected.

    ``size`` ``(W, H)``: the run size, or None to derive it from the video per the mode.
    A VIDEO that is a file on disk is read from the file (one frame in memory at a time, and
    it can be joined by stream copy); any other VIDEO is taken from its frames.

    Raises:
        SVIError: both inputs connected, or a video that cannot be decoded or is too short.
    """
    from fractions import Fraction

    from ..svi_core.conditioning import reference_size
    from ..svi_core.extend import load_video_start, video_start_from_frames

    if video is not None and images is not None:
        raise SVIError("connect either extend_video or extend_images to continue a video, not both")
    if video is None and images is None:
        return None
    if video is not None:
        path = video_file_path(video)
        if path is not None:
            return load_video_start(path, mode, size)
        try:
            parts = video.get_components()
        except Exception as e:  # the VIDEO's own decoder (PyAV) failed
            raise SVIError(
                f"extend_video cannot be decoded ({e}); connect a readable video"
            ) from None
        frames, rate = parts.images, parts.frame_rate
        name = "extend_video"
    else:
        frames, rate, name = images, None, "extend_images"
    if frames is None or frames.ndim != 4 or frames.shape[0] == 0:
        raise SVIError(f"{name} has no frames; connect a video with frames")
    u8 = frames_to_uint8(frames)
    if size is None:
        size = reference_size(mode, int(u8.shape[2]), int(u8.shape[1]))
    fps = float(Fraction(rate)) if rate else None
    return video_start_from_frames(u8, mode, size, fps=fps, name=name)
