"""Test helper, run with ComfyUI's python: is SVI Prompt Stream's output immutable?

Usage: ``python check_prompt_stream.py <comfyui_path> <pack_root>``. Runs the node with a text
encoder that counts its calls, asks the output for the negative prompt of two modes (as the
sampler does), and prints one JSON line with what it saw.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import os
import sys


class CountingClip:
    """Stands in for ComfyUI's CLIP: records every text it encodes."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def tokenize(self, text: str) -> str:
        return text

    def encode_from_tokens_scheduled(self, tokens: str) -> list:
        self.texts.append(tokens)
        return [[f"cond:{tokens}", {}]]


def main(comfy: str, pack: str) -> None:
    sys.path.insert(0, comfy)
    os.chdir(comfy)
    from comfy.cli_args import args

    args.cpu = True
    spec = importlib.util.spec_from_file_location(
        "svi_pack", os.path.join(pack, "__init__.py"), submodule_search_locations=[pack]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["svi_pack"] = module
    spec.loader.exec_module(module)
    from svi_pack.nodes.prompts import SVIPromptStream
    from svi_pack.svi_core.modes import get_mode

    out = {}
    for given in ("", "blurry, static"):
        clip = CountingClip()
        stream = SVIPromptStream.execute(
            clip=clip, prompts="a cat\n\na dog\n\na cat", repeat=0, negative_prompt=given
        ).args[0]
        at_execute = list(clip.texts)
        names = [f.name for f in dataclasses.fields(stream) if f.name != "text_encoder"]
        before = copy.deepcopy([getattr(stream, n) for n in names])
        try:
            stream.negative = None
            frozen = False
        except dataclasses.FrozenInstanceError:
            frozen = True
        seen = {}
        for mode in ("film", "v2_pro", "film"):
            text, cond = stream.negative_for(get_mode(mode))
            seen.setdefault(mode, []).append([text, cond[0][0]])
        out[given or "empty"] = {
            "encoded_at_execute": at_execute,
            "encoded_later": clip.texts[len(at_execute) :],
            "frozen": frozen,
            "unchanged": [getattr(stream, n) for n in names] == before,
            "negatives": seen,
            "official": {m: get_mode(m).negative_prompt for m in ("film", "v2_pro")},
        }
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main(*sys.argv[1:3])
