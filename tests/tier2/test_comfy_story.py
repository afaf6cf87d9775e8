# ruff: noqa: F811  (the host / object_info fixtures are imported from test_comfy_host)
"""Tier 2: the story workflow (SVI Schedule -> SVI Infinite Sampler, SVI 2.0 Pro on two
experts) in a real ComfyUI server with tiny models: keyframes and a scene change end to end,
LoRA strengths re-patched per clip through ComfyUI's model patcher (no reload), bad schedules
refused before sampling."""

from __future__ import annotations

import copy
import json
import uuid

import pytest

from .comfy_host import error_message, write_example_png
from .test_comfy_host import (  # noqa: F401
    FRAMES,
    PATHS,
    _fails_before_sampling,
    _sampler_id,
    _twin,
    _video_info,
    _video_path,
    host,
    object_info,
)

pytestmark = [pytest.mark.tier2, pytest.mark.slow]

if PATHS is None:  # pragma: no cover - test_comfy_host already skips the module
    pytest.skip("tier 2 needs COMFYUI_PATH", allow_module_level=True)

STORY = "SVI-Story_keyframes_schedule"


def _node(api: dict, class_type: str) -> str:
    return next(k for k, v in api.items() if v["class_type"] == class_type)


def _manifest(host, api: dict) -> dict:
    run = api[_sampler_id(api)]["inputs"]["run_name"]
    return json.loads((host.base / "output" / "svi" / run / "manifest.json").read_text())


def _latents(host, api: dict):
    from safetensors.torch import load_file

    run = host.base / "output" / "svi" / api[_sampler_id(api)]["inputs"]["run_name"]
    m = _manifest(host, api)
    return [load_file(str(run / c["state"]))["latent"] for c in m["clips"]]


def test_story_workflow_runs_with_keyframes_and_a_scene_change(host, object_info):
    for i, size in ((1, (90, 60)), (2, (64, 64)), (3, (50, 80))):
        write_example_png(host.base / "input" / f"story_{i}.png", *size)
    api = _twin(STORY, object_info, clips=6)
    schedule = _node(api, "SVISchedule")
    images = api[schedule]["inputs"]
    for i in (1, 2, 3):  # distinct images for keyframe A, the scene-2 anchor, keyframe B
        api[images[f"image_{i}"][0]]["inputs"]["image"] = f"story_{i}.png"
    entry = host.run(api)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    sid = _sampler_id(api)
    n, _, size = _video_info(_video_path(host, entry, sid))
    assert n == FRAMES + 5 * (FRAMES - 5) and size == (64, 64)  # Pro: drop 1 + 4k per clip
    plans = [c["plan"] for c in _manifest(host, api)["clips"]]
    keyed = [i for i, p in enumerate(plans) if p["keyframe"] is not None]
    assert keyed == [2, 5] and plans[2]["keyframe"] != plans[5]["keyframe"]
    assert {p["keyframe_slot"] for p in (plans[2], plans[5])} == {"latent"}
    refs = [p["reference"] for p in plans]
    assert refs[:3] == [refs[0]] * 3 and refs[3:] == [refs[3]] * 3 and refs[3] != refs[0]
    assert [c["prompt_index"] for c in _manifest(host, api)["clips"]] == [0, 1, -1, -1, 1, -1]


def _pro(object_info, schedule: str | None, **sampler) -> dict:
    api = _twin(STORY, object_info, clips=2, **sampler)
    sid = _sampler_id(api)
    sched = _node(api, "SVISchedule")
    if schedule is None:
        del api[sid]["inputs"]["schedule"]
        for key in [k for k, v in api.items() if v["class_type"] in ("SVISchedule", "LoadImage")]:
            if key != api[sid]["inputs"]["reference_image"][0]:
                del api[key]
    else:
        api[sched]["inputs"]["text"] = schedule
    return api


def test_lora_strength_change_repatches_without_reloading(host, object_info):
    base = _pro(object_info, None)
    # run once so the loaders have run (ComfyUI caches their outputs)
    entry = host.run(base)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    constant = _latents(host, base)
    start = host.log_path.stat().st_size
    sched = _pro(object_info, "clip 2: lora.svi=0")
    entry = host.run(sched)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    log = host.log_path.read_text(errors="replace")[start:]
    assert "model weight dtype" not in log, "a model was loaded from disk again"
    changed = _latents(host, sched)
    # clip 1 at the loaded strength: the very same model, the same latent bit for bit
    assert (changed[0] - constant[0]).abs().max() == 0
    # clip 2 with the SVI LoRA at 0 on both experts differs from strength 1
    assert (changed[1] - constant[1]).abs().max() > 1e-3
    assert _manifest(host, sched)["clips"][1]["plan"]["lora_strengths"] == {
        "svi": 0.0,
        "svi@low": 0.0,
    }


def test_svi_lora_at_zero_on_the_first_clip_is_the_model_without_it(host, object_info):
    zero = _pro(object_info, "clip 1: lora.svi=0")
    entry = host.run(zero)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    none = _pro(object_info, None)
    loader = _node(none, "SVIModelLoader")
    none[loader]["inputs"].update(lora_name="none", low_noise_lora_name="none")
    entry = host.run(none)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    with_lora = _pro(object_info, None)
    entry = host.run(with_lora)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    z, n, w = _latents(host, zero)[0], _latents(host, none)[0], _latents(host, with_lora)[0]
    gap = (w - n).abs().max().item()
    assert gap > 1e-3
    assert (z - n).abs().max().item() < 1e-3 * gap  # strength 1 - 1 = 0 up to float rounding


def test_speed_lora_named_by_the_lora_loader_is_scheduled(host, object_info):
    api = _pro(object_info, "clip 2: lora.lightx2v.high=0.2, lora.lightx2v.low=0")
    # enable the two bypassed Speed LoRA loaders of the story workflow
    from .workflow_tools import WORKFLOWS, ui_to_api

    ui = json.loads((WORKFLOWS / f"{STORY}.json").read_text(encoding="utf-8"))
    for node in ui["nodes"]:
        if node["type"] == "SVILoraLoader":
            node["mode"] = 0
    enabled = ui_to_api(ui, object_info)
    sid = _sampler_id(api)
    for k, v in enabled.items():
        if v["class_type"] == "SVILoraLoader":
            api[k] = copy.deepcopy(v)
    api[sid]["inputs"]["model"] = enabled[_sampler_id(enabled)]["inputs"]["model"]
    api[sid]["inputs"]["low_noise_model"] = enabled[_sampler_id(enabled)]["inputs"][
        "low_noise_model"
    ]
    entry = host.run(api)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    plans = [c["plan"] for c in _manifest(host, api)["clips"]]
    assert plans[1]["lora_strengths"] == {"lightx2v": 0.2, "lightx2v@low": 0.0}


@pytest.mark.parametrize(
    "schedule,expect",
    [
        ("clip 1: lora.sv=0", "no LoRA named 'sv' is loaded; did you mean 'svi'"),
        ("clip 9: seed=3", "beyond the run"),
        ("clip 1: keyframe=image 7", "image 7 does not exist"),
        ("clip 1: promt=hi", "did you mean 'prompt'"),
        ("clips 1-2: seed=3\nclip 2: cfg=2", "line 1 (clips 1-2) and line 2 (clip 2) overlap"),
    ],
)
def test_bad_schedules_fail_before_sampling(host, object_info, schedule, expect):
    api = _pro(object_info, schedule)
    api[_sampler_id(api)]["inputs"]["run_name"] = f"bad_{uuid.uuid4().hex[:8]}"
    _fails_before_sampling(host, api, _sampler_id(api), expect)
