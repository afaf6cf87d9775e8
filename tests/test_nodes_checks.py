"""Tier 1: the nodes' pre-flight checks (model set vs mode, run folder choice, expert switch)."""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _pack_module(name: str):
    """Import ``<pack>.<name>`` without running the pack's ComfyUI entry point."""
    pkg = "svi_pack_under_test"
    if pkg not in sys.modules:
        mod = types.ModuleType(pkg)
        mod.__path__ = [str(ROOT)]
        sys.modules[pkg] = mod
    return importlib.import_module(f"{pkg}.{name}")


checks = _pack_module("nodes.checks")
errors = _pack_module("svi_core.errors")
modes = _pack_module("svi_core.modes")
loop = _pack_module("svi_core.loop")


def fake_model(in_dim: int = 36, img_emb: bool = True):
    """Stands in for a ComfyUI MODEL: ``.model.diffusion_model`` with the two tensors checked."""
    dit = SimpleNamespace(
        patch_embedding=SimpleNamespace(weight=torch.zeros(8, in_dim, 1, 2, 2)),
        img_emb=object() if img_emb else None,
    )
    return SimpleNamespace(model=SimpleNamespace(diffusion_model=dit))


WAN21, EXPERT, CLIPV = fake_model(), fake_model(img_emb=False), object()


def test_valid_model_sets_pass():
    checks.check_models(modes.get_mode("film"), WAN21, None, CLIPV)
    checks.check_models(modes.get_mode("v2_pro"), EXPERT, EXPERT, None)


@pytest.mark.parametrize(
    "mode,model,low,clipv,match",
    [
        ("film", WAN21, None, None, "needs CLIP vision"),
        ("shot", WAN21, WAN21, CLIPV, "uses one model"),
        ("v2_pro", EXPERT, None, None, "needs both experts"),
        ("v2_w22", EXPERT, None, None, "needs both experts"),
        ("film", EXPERT, None, CLIPV, "no image embedding"),
        ("v2_pro", WAN21, EXPERT, None, "Wan2.1 I2V"),
        ("film", fake_model(in_dim=16), None, CLIPV, "16 input channels"),
        ("film", SimpleNamespace(model=None), None, CLIPV, "not a Wan DiT"),
    ],
)
def test_bad_model_sets_are_refused(mode, model, low, clipv, match):
    with pytest.raises(errors.SVIError, match=match):
        checks.check_models(modes.get_mode(mode), model, low, clipv)


def _run(seed: int = 0, prompt: str = "p"):
    mode = modes.get_mode("shot", frames=5, seed_base=seed)
    settings = loop.RunSettings(mode=mode, width=16, height=16, num_clips=1)
    reference = torch.zeros(16, 16, 3, dtype=torch.uint8)
    return loop.prepare_run(settings, loop.LoopInputs(reference, [prompt]))


def _pick(root, name, policy, run):
    store = checks.pick_run(root, name, policy, run)
    store.close()
    return str(store.root)


def test_pick_run_policies(tmp_path):
    root = str(tmp_path)
    first = _pick(root, "my run", "resume", _run())
    assert first == os.path.join(os.path.realpath(root), "svi", "my_run")
    # same settings: resumed in place under both resume policies
    assert _pick(root, "my run", "resume", _run()) == first
    assert _pick(root, "my run", "resume or new", _run()) == first
    # other settings: 'resume' refuses, 'resume or new' takes the next free numbered folder
    with pytest.raises(errors.RunStoreError, match="seed_base"):
        _pick(root, "my run", "resume", _run(seed=7))
    other = _pick(root, "my run", "resume or new", _run(seed=7))
    assert other.endswith("my_run_001")
    # and comes back to it for those settings
    assert _pick(root, "my run", "resume or new", _run(seed=7)) == other
    # 'new' never reuses a folder that holds a run
    fresh = _pick(root, "my run", "new", _run())
    assert fresh not in (first, other) and fresh.endswith("my_run_002")
    with pytest.raises(errors.SVIError, match="on_existing_run"):
        _pick(root, "my run", "overwrite", _run())


def test_pick_run_never_skips_a_damaged_or_busy_run(tmp_path):
    root = str(tmp_path)
    first = _pick(root, "busy", "resume", _run())
    # a run generating right now (its store is open) is refused, not silently replaced
    store = checks.pick_run(root, "busy", "resume or new", _run())
    try:
        with pytest.raises(errors.RunInUseError, match="in use by another run"):
            checks.pick_run(root, "busy", "resume or new", _run())
    finally:
        store.close()
    # a damaged manifest is named, not skipped to busy_001
    Path(first, "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(errors.RunStoreError, match="damaged"):
        checks.pick_run(root, "busy", "resume or new", _run())
    assert not os.path.exists(os.path.join(root, "svi", "busy_001"))


def test_pick_run_stays_inside_output(tmp_path):
    path = _pick(str(tmp_path), "../../escape", "new", _run())
    root = os.path.realpath(tmp_path)
    assert os.path.commonpath([root, path]) == root


def test_expert_switch_matches_the_official_rule():
    # official 50 steps, shift 5: t_i = 1000 * 5 s / (1 + 4 s), s = 1 - i / 50
    s = torch.linspace(1, 0, 51)[:-1]
    sigmas = torch.cat([5 * s / (1 + 4 * s), torch.zeros(1)])
    switch = checks.expert_switch(sigmas, 0.875)
    assert switch == 21  # DESIGN.md §3: steps 0-20 high, 21-49 low
    assert float(sigmas[20]) >= 0.875 > float(sigmas[21])
    assert checks.expert_switch(sigmas, None) == 50
    assert checks.expert_switch(sigmas, 1.5) == 0
    assert checks.expert_switch(sigmas, 0.0) == 50


def _patched(weight_value: float, strength: float | None, lora_value: float = 1.0):
    model = fake_model()
    model.model.diffusion_model.patch_embedding.weight = torch.full((8, 36, 1, 2, 2), weight_value)
    adapter = SimpleNamespace(weights=(torch.full((4, 4), lora_value), torch.ones(4, 4), None))
    model.patches = (
        {}
        if strength is None
        else {"diffusion_model.blocks.0.self_attn.q.weight": [(strength, adapter, 1.0, None, None)]}
    )
    return model


def test_model_fingerprint_tells_models_and_loras_apart():
    fp = checks.model_fingerprint
    assert fp(_patched(0.1, 1.0)) == fp(_patched(0.1, 1.0))
    assert fp(_patched(0.1, 1.0)) != fp(_patched(0.2, 1.0)), "another base model"
    assert fp(_patched(0.1, 1.0)) != fp(_patched(0.1, 0.5)), "another LoRA strength"
    assert fp(_patched(0.1, 1.0)) != fp(_patched(0.1, None)), "LoRA removed"
    assert fp(_patched(0.1, 1.0)) != fp(_patched(0.1, 1.0, lora_value=2.0)), "another LoRA file"
