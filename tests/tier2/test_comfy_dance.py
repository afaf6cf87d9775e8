"""Tier 2: the SVI-Dance workflow in a real ComfyUI server with tiny random models.

The test kit writes ``svi-dance.safetensors`` (a LoRA for the tiny Wan2.1 DiT + a random pose
embedding in the official layout, ``make_models.py``) and two small skeleton-like videos into
``input/`` (``comfy_host.write_pose_video``). The shipped ``SVI-Dance_Wan2.1`` workflow runs
end to end through its API twin (Load Video -> Get Video Components -> the sampler's
``pose_video``); its output changes with the pose video and repeats with the same one; bad
Dance input is refused before sampling.
"""

from __future__ import annotations

import copy
import json
import uuid

import pytest

from .comfy_host import ComfyHost, comfy_paths, error_message
from .test_comfy_host import (
    FRAMES,
    HEIGHT,
    WIDTH,
    _clip0_latent,
    _fails_before_sampling,
    _sampler_id,
    _twin,
    _video_info,
    _video_path,
)

pytestmark = [pytest.mark.tier2, pytest.mark.slow]

PATHS = comfy_paths()
if PATHS is None:
    pytest.skip(
        "tier 2 needs a ComfyUI checkout: set COMFYUI_PATH (and COMFYUI_PYTHON to its venv's "
        "python, with this pack's requirements.txt installed)",
        allow_module_level=True,
    )

WORKFLOW = "SVI-Dance_Wan2.1"


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    root, python = PATHS
    h = ComfyHost(root, python, tmp_path_factory.mktemp("comfy_dance"))
    h.prepare()
    h.start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def object_info(host):
    return host.get("/object_info")


def _node(api: dict, class_type: str) -> str:
    return next(k for k, v in api.items() if v["class_type"] == class_type)


def test_dance_nodes_and_inputs_registered(object_info):
    opt = object_info["SVIInfiniteSampler"]["input"]["optional"]
    assert {"pose_video", "pose_palette", "pose_loop"} <= set(opt)
    assert '"dance"' in json.dumps(object_info["SVIInfiniteSampler"]["input"]["required"]["mode"])
    assert object_info["SVIPoseAlign"]["category"] == "SVI/dance"


def test_dance_workflow_runs_and_follows_the_pose_video(host, object_info):
    api = _twin(WORKFLOW, object_info)
    sid = _sampler_id(api)
    assert api[sid]["inputs"]["mode"] == "dance" and api[sid]["inputs"]["pose_video"]
    entry = host.run(api)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    n, fps, size = _video_info(_video_path(host, entry, sid))
    assert n == 2 * FRAMES - 1 and fps == pytest.approx(25.0) and size == (WIDTH, HEIGHT)
    manifest = json.loads(
        (_video_path(host, entry, sid).parent / "manifest.json").read_text(encoding="utf-8")
    )
    assert manifest["settings"]["clip_conditions"]["pose"]["palette"] == "official"
    assert manifest["settings"]["cfg"] == 2.0
    first = _clip0_latent(host, entry, sid)

    same = copy.deepcopy(api)
    same[sid]["inputs"]["run_name"] = f"t_{uuid.uuid4().hex[:8]}"
    entry = host.run(same)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    assert (_clip0_latent(host, entry, sid) - first).abs().max() == 0, "not repeatable"

    other = copy.deepcopy(same)
    other[sid]["inputs"]["run_name"] = f"t_{uuid.uuid4().hex[:8]}"
    other[_node(other, "LoadVideo")]["inputs"]["file"] = "dance_pose_b.mp4"
    entry = host.run(other)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    diff = (_clip0_latent(host, entry, sid) - first).abs().max().item()
    assert diff > 1e-3, f"another pose video changed clip 0 by only {diff}"

    swapped = copy.deepcopy(same)  # the other palette swaps red and blue: another input
    swapped[sid]["inputs"].update(run_name=f"t_{uuid.uuid4().hex[:8]}", pose_palette="rgb")
    entry = host.run(swapped)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    assert (_clip0_latent(host, entry, sid) - first).abs().max().item() > 1e-4


def test_dance_without_pose_video_is_refused(host, object_info):
    api = _twin(WORKFLOW, object_info)
    sid = _sampler_id(api)
    del api[sid]["inputs"]["pose_video"]
    _fails_before_sampling(host, api, sid, "mode dance needs a skeleton video")


def test_dance_with_a_plain_lora_is_refused(host, object_info):
    api = _twin(WORKFLOW, object_info)
    api[_node(api, "SVIModelLoader")]["inputs"]["lora_name"] = "svi-shot.safetensors"
    _fails_before_sampling(host, api, _sampler_id(api), "needs the SVI-Dance pose embedding")


def test_pose_video_in_another_mode_is_refused(host, object_info):
    api = _twin(WORKFLOW, object_info, mode="shot")
    _fails_before_sampling(host, api, _sampler_id(api), "pose_video is used by mode dance only")


def test_dance_file_on_a_wan22_expert_is_refused(host, object_info):
    api = _twin("SVI-2.0-Pro_Wan2.2", object_info)
    loader = _node(api, "SVIModelLoader")
    api[loader]["inputs"]["lora_name"] = "svi-dance.safetensors"
    _fails_before_sampling(host, api, _sampler_id(api), "no image embedding")
