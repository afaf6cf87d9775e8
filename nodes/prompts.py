"""SVI Prompt Stream: one text box of prompts -> the per-clip conditioning of a whole run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from comfy_api.latest import io

from ..svi_core import limits as L
from ..svi_core.errors import SVIError
from ..svi_core.modes import ModeConfig
from ..svi_core.prompts import parse_prompts

SVIPrompts = io.Custom("SVI_PROMPTS")


def encode_text(text_encoder: Any, text: str) -> list:
    """CONDITIONING of ``text`` with ComfyUI's text encoder (its CLIP object: what CLIP Text
    Encode does)."""
    return text_encoder.encode_from_tokens_scheduled(text_encoder.tokenize(text))


@dataclass(frozen=True)
class EncodedPrompts:
    """The prompts of a run, each encoded once, and the negative prompt (immutable: ComfyUI
    caches a node's output and hands the same object to every later run).

    ``texts[i]`` is encoded as ``positives[i]`` (ComfyUI CONDITIONING). ``repeat`` = 0 means
    the mode's own repeat. ``negative_text`` None means the mode's official negative prompt,
    which only the sampler knows (it depends on the mode): :meth:`negative_for` encodes it
    with ``text_encoder`` on each call. A given ``negative_text`` is encoded once, as
    ``negative``.
    """

    texts: tuple[str, ...]
    positives: tuple[Any, ...]
    repeat: int
    negative_text: str | None
    negative: Any = field(repr=False)
    text_encoder: Any = field(repr=False)

    def negative_for(self, mode: ModeConfig) -> tuple[str, Any]:
        """(text, CONDITIONING) of the negative prompt: the given one, else the mode's."""
        if self.negative_text is not None:
            return self.negative_text, self.negative
        return mode.negative_prompt, encode_text(self.text_encoder, mode.negative_prompt)


class SVIPromptStream(io.ComfyNode):
    """Encodes every prompt of a run once; the sampler picks clip k's prompt per mode."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SVIPromptStream",
            display_name="SVI Prompt Stream",
            category="SVI/conditioning",
            description=(
                "One prompt per line (blank lines only separate), '#' "
                "lines are comments; a 'prompts = [...]' list also works. Clip k uses prompt "
                "(k // repeat) mod count on Wan2.1 film/tom/v2, the first prompt on shot, and "
                "prompt k (last one held) on Wan2.2."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="The UMT5 text encoder (Load CLIP, type wan)."),
                io.String.Input(
                    "prompts",
                    multiline=True,
                    default="A person walks through a sunny park, camera following.",
                    tooltip="The prompts, one per line; '#' lines are comments.",
                ),
                io.Int.Input(
                    "repeat",
                    default=0,
                    min=0,
                    max=L.MAX_PROMPT_REPEAT,
                    tooltip="Clips per prompt; 0 = the mode's own value (2 for v2, else 1).",
                ),
                io.String.Input(
                    "negative_prompt",
                    multiline=True,
                    default="",
                    tooltip="Negative prompt; empty = the mode's official one (English for "
                    "Wan2.1 modes, the standard Chinese Wan prompt for Wan2.2).",
                ),
            ],
            outputs=[
                SVIPrompts.Output(
                    "prompt_stream",
                    display_name="prompt_stream",
                    tooltip="Encoded prompts for SVI Infinite Sampler / SVI Clip Conditioning.",
                )
            ],
        )

    @classmethod
    def execute(cls, clip, prompts: str, repeat: int, negative_prompt: str) -> io.NodeOutput:
        # "clip" is the input id (ComfyUI's name for a text encoder; renaming it would break
        # saved workflows); inside, it is the text encoder, never a video clip
        text_encoder = clip
        if text_encoder is None:
            raise SVIError(
                "SVI Prompt Stream: the clip input is empty; connect Load CLIP "
                "(umt5_xxl_fp8_e4m3fn_scaled.safetensors, type wan)."
            )
        texts = parse_prompts(prompts, source="SVI Prompt Stream text")
        cache: dict[str, Any] = {}
        for t in texts:
            if t not in cache:
                cache[t] = encode_text(text_encoder, t)
        negative = negative_prompt.strip() or None
        if negative is not None and negative not in cache:
            cache[negative] = encode_text(text_encoder, negative)
        encoded = EncodedPrompts(
            texts=tuple(texts),
            positives=tuple(cache[t] for t in texts),
            repeat=int(repeat),
            negative_text=negative,
            negative=None if negative is None else cache[negative],
            text_encoder=text_encoder,
        )
        return io.NodeOutput(encoded)
