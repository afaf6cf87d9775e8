"""SVI-Dance's inputs on the command line: checked before any model is loaded, then turned into the
run's :class:`~svi_core.pose_condition.PoseCondition` and the standalone backend's pose hook.

``python -m svi_core generate --mode dance --pose pose.mp4 --image dancer.png --lora
svi-dance.safetensors ...``. Checks (each names the file and the fix):

* mode dance has a ``--pose`` (a skeleton video, or a folder of skeleton images), and it decodes to
  at least one 8-bit RGB frame; frames of another aspect are letterboxed like the official code
  (nearest resize, black bars; ``utils/image_process.py:134-170``) and the log says so;
* exactly one ``--lora`` file holds the pose-embedding tensors (``dwpose_embedding.*``, official
  ``svi-dance.safetensors``: the LoRA and the embedding in one file, ``model_manager.py:516-518``);
  a Dance run without them would ignore the skeleton;
* the embedding is made for the DiT's width (read from both safetensors headers: the official
  embedding ends in a 5120-wide conv, Wan2.1 14B only, ``svi_video_dance.py:268``);
* the other modes refuse ``--pose`` and a LoRA file holding pose tensors (the skeleton would be
  ignored).

Palette (``--pose-palette``): ``official`` (default) for skeleton videos made by the official or
UniAnimate scripts (drawn through OpenCV, BGR); ``rgb`` for skeletons drawn in RGB (ComfyUI's pose
nodes, comfyui_controlnet_aux, ControlNet annotators): red and blue are swapped on reading. See
:data:`svi_core.pose_condition.PALETTES` for why this is a setting and not detected.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError, SVIError
from .log import logger
from .lora import LoraWeights, load_lora, normalise_lora_keys
from .modes import ModeConfig
from .pose import (
    LOOP_POLICIES,
    POSE_KEY_MARKER,
    LoopPolicy,
    PoseEmbedding,
    PoseSequence,
    load_dance_file,
    load_pose_embedding,
    prepare_pose_frames,
    read_pose_video,
    split_dance_state_dict,
)
from .pose_align import Palette
from .pose_condition import PALETTES, PoseCondition

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
"""Image files accepted in a folder of pose frames (sorted by name, numbers naturally)."""


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in a model file: from the header of a ``.safetensors`` file (no tensor
    read); other formats are loaded (``torch.load(weights_only=True)``).

    Raises:
        CheckpointError: a missing or unreadable file.
    """
    if path.suffix.lower() not in (".safetensors", ".sft") or not path.is_file():
        from .checkpoints import load_state_dict

        return {k: tuple(v.shape) for k, v in load_state_dict(path).items()}
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                raise ValueError(f"a header of {n} bytes")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as e:
        raise CheckpointError(f"'{path}' is not a readable safetensors file ({e})") from None
    return {
        k: tuple(int(d) for d in v["shape"])
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and "shape" in v
    }


def pose_width(shapes: dict[str, tuple[int, ...]]) -> int | None:
    """Output width of the pose embedding in a file's tensors (None: no pose tensors)."""
    pose = {k.split(POSE_KEY_MARKER, 1)[1]: s for k, s in shapes.items() if POSE_KEY_MARKER in k}
    if not pose:
        return None
    last = pose.get("12.weight")
    return int(last[0]) if last else -1


def dit_width(path: Path) -> int | None:
    """The DiT's width from its file header (its patch embedding), or None when that cannot be
    told without loading the model (not one safetensors file: the DiT loader checks later)."""
    try:
        shapes = tensor_shapes(path) if path.suffix.lower() in (".safetensors", ".sft") else {}
    except CheckpointError:
        return None
    width = next((s[0] for k, s in shapes.items() if k.endswith("patch_embedding.weight")), None)
    return None if width is None else int(width)


def _natural(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _folder_frames(folder: Path) -> Iterator[np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    files = sorted(
        (p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: _natural(p.name)
    )
    for p in files:
        if p.is_dir() or p.suffix.lower() not in IMAGE_SUFFIXES:
            raise SVIError(
                f"pose folder {folder} holds '{p.name}', which is not an image; a pose folder "
                f"holds only the skeleton frames ({', '.join(IMAGE_SUFFIXES)}), one per video frame"
            )
        try:
            with Image.open(p) as im:
                im.load()
                arr = np.asarray(
                    im.convert("RGB") if im.mode in ("P", "RGBA", "LA", "CMYK") else im
                )
        except (OSError, UnidentifiedImageError) as e:
            raise SVIError(f"pose frame {p} cannot be read as an image ({e})") from None
        if arr.dtype != np.uint8:
            raise SVIError(
                f"pose frame {p} is a {arr.dtype} image; pose frames must be 8-bit RGB images"
            )
        yield arr


def read_poses(
    path: Path, width: int, height: int, *, palette: Palette = "official", loop: LoopPolicy = "loop"
) -> PoseSequence:
    """A skeleton video file, or a folder of skeleton images, fitted to ``width x height``.

    Raises:
        SVIError: missing path, not a video / not images, no frame, a frame that is not 8-bit RGB.
    """
    swap = palette == "rgb"
    if path.is_dir():
        frames = prepare_pose_frames(
            _folder_frames(path), width, height, swap_rb=swap, source=f"pose folder {path}"
        )
        logger.info("pose folder %s: %d frames fitted to %dx%d", path, len(frames), width, height)
        return PoseSequence(frames=frames, source=f"pose folder {path}", policy=loop)
    return read_pose_video(path, width, height, swap_rb=swap, policy=loop)


@dataclass(frozen=True)
class DanceInputs:
    """The checked SVI-Dance inputs of a run.

    Attributes:
        pose: the skeleton video (or folder of frames). palette, loop: how it is read and played.
        dance_file: the ``--lora`` file holding the pose embedding (and the Dance LoRA).
        width: the embedding's output width (the DiT width it was made for).
        poses: the fitted pose frames, once :meth:`read` has run.
    """

    pose: Path
    palette: Palette
    loop: LoopPolicy
    dance_file: Path
    width: int
    poses: PoseSequence | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def check(
        cls,
        mode: ModeConfig,
        *,
        pose: Path | None,
        palette: str,
        loop: str,
        loras: Sequence[Path],
        dit: Path | None = None,
    ) -> DanceInputs | None:
        """Check the Dance inputs of ``mode`` (None for a mode without the pose). No model loaded;
        LoRA and DiT files are read by their headers only (other formats: loaded once).

        Raises:
            SVIError / CheckpointError: see the module docstring.
        """
        with_pose = {}
        for p in loras:
            width = pose_width(tensor_shapes(p)) if p.is_file() else None
            if width is not None:
                with_pose[p] = width
        if "pose" not in mode.conditions:
            if pose is not None:
                raise SVIError(
                    f"--pose is used by mode dance only (this run is mode {mode.name}); add "
                    "--mode dance --lora svi-dance.safetensors, or drop --pose"
                )
            if with_pose:
                raise SVIError(
                    f"LoRA {next(iter(with_pose))} holds SVI-Dance pose-embedding tensors (dwpose_embedding.*): it is "
                    f"the SVI-Dance file, made for a skeleton video; mode {mode.name} would ignore "
                    "the pose. Use --mode dance --pose pose.mp4"
                )
            return None
        if palette not in PALETTES:
            raise SVIError(f"--pose-palette {palette!r} must be one of {', '.join(PALETTES)}")
        if loop not in LOOP_POLICIES:
            raise SVIError(f"--pose-loop {loop!r} must be one of {', '.join(LOOP_POLICIES)}")
        if pose is None:
            raise SVIError(
                "mode dance needs a skeleton (pose) video: pass --pose pose.mp4 (a DWPose / "
                "OpenPose skeleton video, or a folder of its frames); the README's SVI-Dance "
                "section says how to make one"
            )
        if not pose.exists():
            raise SVIError(f"pose video {pose} does not exist; pass a skeleton video with --pose")
        if not with_pose:
            given = ", ".join(str(p) for p in loras) or "none"
            raise SVIError(
                "mode dance needs the SVI-Dance file (its LoRA AND its pose embedding, "
                "dwpose_embedding.*) as --lora svi-dance.safetensors; no --lora file holds pose-"
                f"embedding tensors (given: {given}). A plain LoRA would ignore the skeleton."
            )
        if len(with_pose) > 1:
            raise SVIError(
                f"{len(with_pose)} --lora files hold pose-embedding tensors "
                f"({', '.join(map(str, with_pose))}); give one SVI-Dance file"
            )
        ((dance_file, width),) = with_pose.items()
        if width < 1:
            raise CheckpointError(
                f"'{dance_file}': its pose embedding has no 'dwpose_embedding.12.weight' (the "
                "last conv); the file is incomplete"
            )
        model_width = dit_width(dit) if dit is not None else None
        if model_width is not None and model_width != width:
            raise CheckpointError(
                f"'{dance_file}': its pose embedding is {width} wide (made for a DiT of width "
                f"{width}{' = Wan2.1 14B' if width == 5120 else ''}) but the DiT {dit} is "
                f"{model_width} wide. Use the Dance file made for this DiT "
                "(svi-dance.safetensors is for Wan2.1-I2V-14B)."
            )
        return cls(pose=pose, palette=palette, loop=loop, dance_file=dance_file, width=width)  # type: ignore[arg-type]

    def read(self, width: int, height: int) -> DanceInputs:
        """A copy holding the pose frames fitted to the video size (done before models load)."""
        poses = read_poses(self.pose, width, height, palette=self.palette, loop=self.loop)
        return replace(self, poses=poses, _cache={})

    @property
    def frames(self) -> int:
        """Number of pose frames (after :meth:`read`)."""
        if self.poses is None:
            raise RuntimeError("DanceInputs.read() first")
        return len(self.poses)

    def condition(self) -> PoseCondition:
        """The run's ``"pose"`` condition."""
        if self.poses is None:
            raise RuntimeError("DanceInputs.read() first")
        return PoseCondition(self.poses, palette=self.palette)

    def _weights(self, expected_dim: int | None):
        if "weights" not in self._cache:
            self._cache["weights"] = load_dance_file(self.dance_file, expected_dim=expected_dim)
        return self._cache["weights"]

    def load_lora(self, path: Path, expected_dim: int | None = None) -> LoraWeights:
        """The LoRA of ``path``: for the Dance file its LoRA part (the embedding is kept for
        :meth:`hook`), for any other file the file itself."""
        if Path(path) != self.dance_file:
            return load_lora(path)
        weights = self._weights(expected_dim)
        self._cache["pose"] = weights.pose
        lora = normalise_lora_keys(weights.lora, str(path))
        del self._cache["weights"]  # the LoRA tensors are no longer needed once applied
        return lora

    def hook(self, transformer: torch.nn.Module):
        """The diffusers backend's ``"pose"`` hook for ``transformer`` (width checked)."""
        from .standalone.pose import PoseHook

        pose = self._cache.get("pose")
        if pose is None:
            pose = self._weights(self.width).pose
            self._cache.pop("weights", None)
        hook = PoseHook(pose, str(self.dance_file))
        hook.check(transformer)
        return hook


def load_lora_and_pose(
    path: str | Path, *, expected_dim: int | None = None
) -> tuple[LoraWeights, PoseEmbedding | None]:
    """A LoRA file that may be the SVI-Dance file: its LoRA and, when it holds ``dwpose_embedding.*``
    tensors, the pose embedding (else None). The file is read once.

    Raises:
        CheckpointError: unreadable file, LoRA keys that cannot be read, a pose embedding of
            another layout or of another width than ``expected_dim``.
    """
    from .checkpoints import load_state_dict

    src = str(path)
    lora_sd, pose_sd = split_dance_state_dict(load_state_dict(path), src)
    if not pose_sd:
        return normalise_lora_keys(lora_sd, src), None
    pose = load_pose_embedding(pose_sd, src, expected_dim=expected_dim)
    if not lora_sd:
        raise CheckpointError(
            f"'{src}' holds a pose embedding but no LoRA tensors; an SVI-Dance file holds both "
            "(the DiT LoRA and dwpose_embedding). The file is incomplete."
        )
    return normalise_lora_keys(lora_sd, src), pose


def refuse_model_without_pose_support(
    *, dit_width: int, image_embedding: bool, pose_dim: int, source: str, model: str
) -> None:
    """Refuse a DiT the SVI-Dance pose embedding cannot drive (before anything is applied).

    SVI-Dance is Wan2.1-I2V-14B + the embedding (``svi_video_dance.py:254-275``): the DiT must
    take CLIP-vision features (Wan2.2 A14B experts have no ``img_emb``) and be as wide as the
    embedding's last conv (5120 in the official file).
    """
    if not image_embedding:
        raise CheckpointError(
            f"'{source}' is an SVI-Dance file (LoRA + pose embedding) for Wan2.1-I2V-14B, but "
            f"{model} has no image embedding (a Wan2.2 expert or a text-to-video DiT) and no pose "
            "support; load it on the Wan2.1 I2V 14B model (wan2.1_i2v_480p_14B_*.safetensors)"
        )
    if dit_width != pose_dim:
        raise CheckpointError(
            f"'{source}': its pose embedding is {pose_dim} wide but {model} is {dit_width} wide"
            f"{' (Wan2.1 1.3B?)' if dit_width == 1536 else ''}; the SVI-Dance file is made for "
            "Wan2.1-I2V-14B (5120). Load it on that model."
        )
