"""SVI-Dance in ComfyUI: the pose embedding on the MODEL, the sampler's pose input, pose alignment.

* The SVI loaders read ``svi-dance.safetensors`` (LoRA + ``dwpose_embedding.*``): the LoRA is
  applied as usual and the pose embedding is attached to the patched MODEL
  (:func:`attach_pose_embedding`, ``ModelPatcher`` attachments, copied by every ``clone()``), so
  the sampler finds it on whatever MODEL reaches it.
* The SVI Infinite Sampler's optional ``pose_video`` (an IMAGE batch: Load Video -> Get Video
  Components, or a DWPose / SDPose node) becomes the run's ``"pose"`` condition, and the backend
  gets the ``"pose"`` hook (:class:`ComfyPoseExtra`: ``nodes.pose_patch.with_pose_tokens`` per
  clip). All checks run before sampling: :func:`dance_parts`.
* SVI Pose Align draws a skeleton video from POSE_KEYPOINT data, aligned to the reference
  person (``svi_core.pose_align``, the official ``utils/run_align_pose.py`` rules).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from comfy_api.latest import io

from ..svi_core.conditions import ClipCondition
from ..svi_core.errors import SVIError
from ..svi_core.log import logger
from ..svi_core.modes import ModeConfig
from ..svi_core.pose import LOOP_POLICIES, PoseEmbedding
from ..svi_core.pose_align import aligned_skeleton_video
from ..svi_core.pose_condition import PALETTES, PoseCondition, window_frames
from ..svi_core.pose_inputs import refuse_model_without_pose_support
from ..svi_core.run_store import fingerprint
from .convert import image_to_pose_frames
from .pose_patch import dit_width, with_pose_tokens

POSE_ATTACHMENT = "svi_dance_pose_embedding"
"""Key of the pose embedding in a MODEL's attachments."""

PALETTE_CHOICES = ("rgb", "official")
PALETTE_TOOLTIP = (
    "How the skeleton was drawn. rgb: by a ComfyUI pose node (DWPose / OpenPose of "
    "comfyui_controlnet_aux, core SDPose, SVI Pose Align) or ControlNet tools. official: by the "
    "SVI / UniAnimate scripts (e.g. the official toy pose.mp4; their colours are BGR). A wrong "
    "choice swaps the left and right colours the model was trained on."
)
LOOP_TOOLTIP = (
    "Past the end of the pose video: loop (official: back to the first pose), pingpong (play "
    "it backwards, then forwards) or hold (keep the last pose)."
)


@dataclass(frozen=True)
class PoseAttachment:
    """The SVI-Dance pose embedding carried by a MODEL.

    Attributes:
        embedding: float32 ``PoseEmbedding`` (on the CPU between clips). source: its file.
        key: fingerprint of its weights (recorded in the run's inputs).
    """

    embedding: PoseEmbedding
    source: str
    key: str


def attach_pose_embedding(model: Any, embedding: PoseEmbedding, source: str) -> Any:
    """``model`` (a patched clone) now carries ``embedding``; refuses a DiT it cannot drive."""
    dm = model.model.diffusion_model
    refuse_model_without_pose_support(
        dit_width=dit_width(model),
        image_embedding=getattr(dm, "img_emb", None) is not None,
        pose_dim=embedding.dim,
        source=source,
        model="the model",
    )
    key = fingerprint({k: v for k, v in embedding.state_dict().items()})
    model.set_attachments(POSE_ATTACHMENT, PoseAttachment(embedding, source, key))
    logger.info("SVI-Dance pose embedding of '%s' attached to the model", source)
    return model


def pose_attachment(model: Any) -> PoseAttachment | None:
    """The pose embedding a MODEL carries, or None."""
    get = getattr(model, "get_attachment", None)
    return get(POSE_ATTACHMENT) if callable(get) else None


class ComfyPoseExtra:
    """The ComfyUI backend's ``"pose"`` hook: one pose-token wrapper per clip."""

    def __init__(self, embedding: PoseEmbedding) -> None:
        self.embedding = embedding

    def patch(self, model: Any, payload: Any, null_passes: frozenset[int]) -> Any:
        return with_pose_tokens(model, self.embedding, window_frames(payload), null_passes)


def dance_parts(
    mode: ModeConfig,
    model: Any,
    pose_video: torch.Tensor | None,
    width: int,
    height: int,
    *,
    palette: str = "rgb",
    loop: str = "loop",
) -> tuple[tuple[ClipCondition, ...], dict[str, ComfyPoseExtra], dict[str, str]]:
    """The sampler's Dance parts: (conditions, backend extras, input fingerprints); all empty for
    a mode without the pose. Every check runs here, before sampling.

    Raises:
        SVIError: no pose video for mode dance, a MODEL without the pose embedding, a pose video
            or a Dance MODEL in another mode, pose frames that are not RGB images.
    """
    attached = pose_attachment(model)
    if "pose" not in mode.conditions:
        if pose_video is not None:
            raise SVIError(
                f"pose_video is used by mode dance only (this run is mode {mode.name}); pick "
                "mode dance with svi-dance.safetensors, or disconnect pose_video"
            )
        if attached is not None:
            raise SVIError(
                f"the model carries the SVI-Dance pose embedding ('{attached.source}'); mode "
                f"{mode.name} would ignore it. Pick mode dance and connect a pose video"
            )
        return (), {}, {}
    if pose_video is None:
        raise SVIError(
            "mode dance needs a skeleton video: connect pose_video (Load Video -> Get Video "
            "Components -> images, or a DWPose / SDPose node's image output)"
        )
    if attached is None:
        raise SVIError(
            "mode dance needs the SVI-Dance pose embedding on the model: load "
            "svi-dance.safetensors with SVI Model Loader (lora_name) or SVI LoRA Loader (ComfyUI's "
            "own LoRA loaders drop the pose embedding)"
        )
    if palette not in PALETTES:
        raise SVIError(f"pose_palette {palette!r} must be one of {', '.join(PALETTES)}")
    if loop not in LOOP_POLICIES:
        raise SVIError(f"pose_loop {loop!r} must be one of {', '.join(LOOP_POLICIES)}")
    frames = image_to_pose_frames(pose_video)
    cond = PoseCondition.from_frames(
        frames, width, height, palette=palette, loop=loop, source="pose_video"
    )
    logger.info(
        "pose_video: %d frames fitted to %dx%d (%s palette)", len(frames), width, height, palette
    )
    return (cond,), {"pose": ComfyPoseExtra(attached.embedding)}, {"pose_embedding": attached.key}


class SVIPoseAlign(io.ComfyNode):
    """Draws a skeleton video from keypoints, fitted to the reference person's proportions."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SVIPoseAlign",
            display_name="SVI Pose Align",
            category="SVI/dance",
            description=(
                "Draws the driving skeleton (POSE_KEYPOINT of a dance video, from DWPose / "
                "SDPose) at the video size, rescaled to the reference person's proportions and "
                "moved onto them as the official SVI-Dance utility does. Connect its image to "
                "the sampler's pose_video with pose_palette rgb."
            ),
            inputs=[
                io.Custom("POSE_KEYPOINT").Input(
                    "driving_pose", tooltip="Keypoints of every frame of the dance video."
                ),
                io.Int.Input(
                    "width",
                    default=640,
                    min=16,
                    max=4096,
                    step=16,
                    tooltip="Video width (the sampler's width; Dance keeps up to 640).",
                ),  # fmt: skip
                io.Int.Input(
                    "height",
                    default=832,
                    min=16,
                    max=4096,
                    step=16,
                    tooltip="Video height (the sampler's height).",
                ),  # fmt: skip
                io.Boolean.Input(
                    "hands", default=True, tooltip="Draw the hand keypoints (official: yes)."
                ),
                io.Custom("POSE_KEYPOINT").Input(
                    "reference_pose",
                    optional=True,
                    tooltip="Keypoints of the reference image (the dancer); without it the "
                    "skeleton is drawn as detected, not aligned.",
                ),
            ],
            outputs=[
                io.Image.Output(
                    "pose_video",
                    display_name="pose_video",
                    tooltip="The skeleton frames (RGB palette, black background).",
                )
            ],
        )

    @classmethod
    def execute(cls, driving_pose, width, height, hands, reference_pose=None) -> io.NodeOutput:
        frames = aligned_skeleton_video(
            driving_pose, reference_pose, width, height, palette="rgb", hands=hands
        )
        return io.NodeOutput(torch.from_numpy(frames).float() / 255.0)
