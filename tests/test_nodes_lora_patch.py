"""Tier 1: per-clip LoRA strengths through a ComfyUI-style model patcher (the rules of
nodes/lora_patch.py with a stand-in ModelPatcher), and the schedule's image input."""

from __future__ import annotations

import pytest
import torch
from test_keyframes import pack_module

lora_patch = pack_module("nodes.lora_patch")
convert = pack_module("nodes.convert")
errors = pack_module("svi_core.errors")


class Patcher:
    """The parts of comfy.model_patcher.ModelPatcher the rules use: clone() shares the model
    and copies the patch lists and attachments; add_patches appends (strength, patch)."""

    loads = 0

    def __init__(self, model=None):
        self.model = model if model is not None else object()
        self.patches: dict[str, list] = {}
        self.attachments: dict[str, object] = {}

    def clone(self):
        n = Patcher(self.model)
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.attachments = dict(self.attachments)
        return n

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        for k, v in patches.items():
            self.patches.setdefault(k, []).append((strength_patch, v, strength_model, None, None))
        return list(patches)

    def set_attachments(self, key, value):
        self.attachments[key] = value

    def effective(self, key):
        """Sum of strength x patch value: what ComfyUI's weight patching adds for LoRA patches
        (linear in the strength)."""
        return sum(s * v for s, v, *_ in self.patches.get(key, []))


def loaded(name="svi", strength=1.0, base=None):
    """A model as the SVI loaders leave it: clone + add_patches + the record."""
    base = base or Patcher()
    patches = {"diffusion_model.blocks.0.self_attn.q.weight": 2.0}
    m = base.clone()
    if strength:
        m.add_patches(patches, strength)
    rec = lora_patch.PatchedLora(name, strength, patches, f"{name}.safetensors")
    lora_patch.record_lora(m, rec)
    return m


KEY = "diffusion_model.blocks.0.self_attn.q.weight"


def test_unchanged_strengths_keep_the_same_model():
    m = loaded()
    assert lora_patch.with_strengths(m, "high", {}) is m
    assert lora_patch.with_strengths(m, "high", {"svi": 1.0}) is m
    assert lora_patch.with_strengths(m, "high", {"svi@low": 0.0}) is m  # the other expert's


@pytest.mark.parametrize("new", [0.0, 0.5, 1.7])
def test_a_new_strength_is_one_clone_with_the_difference_added(new):
    m = loaded(strength=1.0)
    r = lora_patch.with_strengths(m, "high", {"svi": new})
    assert r is not m and r.model is m.model  # same weights object: nothing reloaded
    assert r.effective(KEY) == pytest.approx(2.0 * new)
    assert m.effective(KEY) == pytest.approx(2.0)  # the loaded model is untouched


def test_a_lora_loaded_at_zero_can_be_raised_per_clip():
    m = loaded(strength=0.0)
    assert m.patches == {}  # nothing patched at 0 (same fingerprint as no LoRA)
    r = lora_patch.with_strengths(m, "low", {"svi@low": 0.5})
    assert r.effective(KEY) == pytest.approx(1.0)


def test_schedule_names_experts_and_refusals():
    high, low = loaded("svi"), loaded("svi")
    low = lora_patch.with_strengths(low, "low", {})  # same object
    speed = loaded("lightx2v", 0.5, base=high)
    assert [(x.name, x.expert, x.strength) for x in lora_patch.schedule_loras(speed, low)] == [
        ("svi", "high", 1.0),
        ("lightx2v", "high", 0.5),
        ("svi", "low", 1.0),
    ]
    with pytest.raises(errors.SVIError, match="already has a LoRA named 'svi'"):
        loaded("svi", base=high)
    with pytest.raises(errors.SVIError, match=r"clip 3: a strength for LoRA 'speed@low'"):
        lora_patch.check_strength_keys({"speed@low": 1.0}, speed, low, 3)
    lora_patch.check_strength_keys({"lightx2v": 1.0, "svi@low": 0.0}, speed, low, 3)
    with pytest.raises(errors.SVIError, match="only letters, digits"):
        loaded("my lora")


def test_schedule_image_inputs_become_uint8_and_batches_are_refused():
    img = torch.randint(0, 256, (1, 6, 5, 3), generator=torch.Generator().manual_seed(0)) / 255.0
    u8 = convert.image_to_uint8(img, "image_1")
    assert u8.shape == (6, 5, 3) and u8.dtype == torch.uint8
    assert torch.equal(u8, (img[0] * 255).round().to(torch.uint8))
    assert convert.image_to_uint8(None, "image_2") is None
    with pytest.raises(errors.SVIError, match="SVI Schedule: image_3 holds 2 images"):
        convert.image_to_uint8(torch.rand(2, 6, 5, 3), "SVI Schedule: image_3")
