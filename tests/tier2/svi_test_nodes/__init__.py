"""TEST-ONLY ComfyUI nodes standing in for the two models that cannot be tiny.

UMT5-XXL (text) and ViT-H CLIP vision have fixed sizes in ComfyUI, so tier-2 tests replace
Load CLIP and Load CLIP Vision with these. Both are deterministic functions of their input:
different prompts / frames give different conditioning, the same ones the same.
Never shipped (tests/ is in .comfyignore).
"""

from __future__ import annotations

import hashlib

import torch


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


class FakeUMT5:
    """Quacks like ComfyUI's CLIP for CLIP Text Encode: [1, 512, 4096], padded rows zero."""

    def tokenize(self, text: str) -> str:
        return text

    def encode_from_tokens_scheduled(self, tokens: str) -> list:
        gen = torch.Generator().manual_seed(_seed(tokens))
        cond = torch.zeros(1, 512, 4096)
        n = max(1, min(512, len(tokens.split()) + 1))
        cond[:, :n] = torch.randn(1, n, 4096, generator=gen)
        return [[cond, {"pooled_output": None}]]


class FakeClipVisionH:
    """Quacks like ComfyUI's CLIP_VISION: penultimate_hidden_states [B, 257, 1280] from a fixed
    random projection of an 8x8 thumbnail of the image plus a fixed per-token pattern (2.3 MB
    of tables, so the stand-in does not weigh on memory measurements)."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(1234)
        self.proj = torch.randn(8 * 8 * 3, 1280, generator=gen) / 8.0
        self.tokens = torch.randn(257, 1280, generator=gen) * 0.5

    def encode_image(self, image: torch.Tensor, crop: bool = True):
        import comfy.clip_vision

        thumb = torch.nn.functional.interpolate(
            image.movedim(-1, 1).float(), size=(8, 8), mode="area"
        )
        feats = (thumb.flatten(1) @ self.proj)[:, None, :] + self.tokens
        out = comfy.clip_vision.Output()
        out["penultimate_hidden_states"] = feats
        out["last_hidden_state"] = feats
        out["image_embeds"] = feats[:, 0]
        return out


class SVITestCLIPLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip_name": ("STRING", {"default": "fake"}),
                "type": ("STRING", {"default": "wan"}),
            }
        }

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "SVI/test"

    def load(self, clip_name, type):
        return (FakeUMT5(),)


class SVITestCLIPVisionLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_name": ("STRING", {"default": "fake"})}}

    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load"
    CATEGORY = "SVI/test"

    def load(self, clip_name):
        return (FakeClipVisionH(),)


NODE_CLASS_MAPPINGS = {
    "SVITestCLIPLoader": SVITestCLIPLoader,
    "SVITestCLIPVisionLoader": SVITestCLIPVisionLoader,
}
