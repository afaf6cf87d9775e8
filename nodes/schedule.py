"""SVI Schedule: a per-clip schedule (text) plus the images it refers to, for the sampler."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from comfy_api.latest import io

from ..svi_core.clip_schedule import (
    LoadedLora,
    Schedule,
    ScheduleCondition,
    parse_schedule,
)
from ..svi_core.run_store import sha256_json
from .convert import image_to_uint8

SVISchedulePort = io.Custom("SVI_SCHEDULE")
MAX_IMAGES = 8

EXAMPLE = """# One line per clip or clip range (clip 1 is the first); '#' starts a comment.
# Remove the '#' in front of a line to use it, e.g.:
# clip 1: lora.svi=0
# clips 2-3: prompt="the fox jumps over the river", seed=7, cfg=4
# clip 4: keyframe=image 1
# clip 5: anchor=image 2, prompt="night falls in the forest"
"""


@dataclass(frozen=True)
class ScheduleInput:
    """What the SVI Schedule node hands the sampler: the parsed schedule and its images
    (uint8 ``[H, W, 3]``; ``images[N - 1]`` is input ``image_N``, None when not connected)."""

    schedule: Schedule
    images: tuple[torch.Tensor | None, ...]

    def condition(self, text_encoder: Any, loras: tuple[LoadedLora, ...]) -> ScheduleCondition:
        """The per-clip condition for a run: scheduled prompts encoded once with the Prompt
        Stream's text encoder and keyed like the stream's prompts."""
        texts = {}
        prompts = self.schedule.prompts()
        if prompts:
            from .prompts import encode_text

            texts = {t: encode_text(text_encoder, t) for t in prompts}
        return ScheduleCondition(
            self.schedule, images=self.images, loras=loras, texts=texts, prompt_key=sha256_json
        )


class SVISchedule(io.ComfyNode):
    """A per-clip schedule for SVI Infinite Sampler: prompt, seed, CFG, LoRA strengths,
    anchor (scene change) and keyframe per clip or clip range."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        images = [
            io.Image.Input(
                f"image_{i}",
                optional=True,
                tooltip=f"Image {i} of the schedule (anchor=image {i} or keyframe=image {i}); "
                "stretched to the video size like the reference.",
            )
            for i in range(1, MAX_IMAGES + 1)
        ]
        return io.Schema(
            node_id="SVISchedule",
            display_name="SVI Schedule",
            category="SVI/conditioning",
            description=(
                "Directs a long video clip by clip: one line per clip or range, e.g. "
                "'clips 2-4: prompt=\"...\", seed=7, cfg=4, lora.svi=0.5, keyframe=image 1'. "
                "Keys: prompt, seed, cfg, lora.NAME (or lora.NAME.high / .low), anchor "
                "(a scene change from that clip on), keyframe (the clip ends on that image), "
                "keyframe_slot (latent, the default, or frame). Unscheduled clips keep the mode's values."
            ),
            inputs=[
                io.String.Input(
                    "text",
                    multiline=True,
                    default=EXAMPLE,
                    tooltip="One line per clip ('clip 3: ...') or range ('clips 2-5: ...', "
                    "'clips 6-: ...' to the end); key=value pairs separated by commas; '#' "
                    "starts a comment. Ranges may not overlap.",
                ),
                *images,
            ],
            outputs=[
                SVISchedulePort.Output(
                    "schedule",
                    display_name="schedule",
                    tooltip="Connect to SVI Infinite Sampler's schedule input.",
                )
            ],
        )

    @classmethod
    def execute(cls, text: str, **images: Any) -> io.NodeOutput:
        parsed = parse_schedule(text, source="SVI Schedule")
        converted = tuple(
            image_to_uint8(images.get(f"image_{i}"), f"SVI Schedule: image_{i}")
            for i in range(1, MAX_IMAGES + 1)
        )
        last = max((i for i, img in enumerate(converted, start=1) if img is not None), default=0)
        return io.NodeOutput(ScheduleInput(parsed, converted[:last]))
