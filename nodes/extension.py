"""The ComfyUI extension object: which nodes the pack provides (V3 API)."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .clip_conditioning import SVIClipConditioning
from .dance import SVIPoseAlign
from .drift import SVIDriftReport
from .loaders import SVILoraLoader, SVIModelLoader
from .prompts import SVIPromptStream
from .sampler import SVIInfiniteSampler
from .schedule import SVISchedule
from .talk import SVITalkAudio
from .toy import SVIToyModels

NODE_CLASSES: list[type[io.ComfyNode]] = [
    SVIModelLoader,
    SVILoraLoader,
    SVIPromptStream,
    SVISchedule,
    SVIInfiniteSampler,
    SVIClipConditioning,
    SVIDriftReport,
    SVIToyModels,
    SVITalkAudio,
    SVIPoseAlign,
]


class SVIExtension(ComfyExtension):
    """The SVI node pack."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_CLASSES)


async def comfy_entrypoint() -> SVIExtension:
    """Called by ComfyUI when it loads the pack."""
    return SVIExtension()
