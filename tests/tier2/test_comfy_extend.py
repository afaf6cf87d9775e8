"""Tier 2: the SVI Infinite Sampler extending a VIDEO (and an IMAGE batch) in a real ComfyUI.

One prompt on the shipped toy models (no model files): sampler A makes 2 clips; sampler B
continues A's VIDEO output by 2 clips with the drift guard on; sampler C continues A's
last_frames IMAGE output. B's mp4 must be A's video unchanged (stream copy) followed by the new
clips, as long as a 4-clip run; a VIDEO that is not a video is refused before sampling.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from .comfy_host import error_message
from .test_comfy_host import PATHS, host, object_info  # noqa: F401
from .workflow_tools import WORKFLOWS, ui_to_api

pytestmark = [pytest.mark.tier2, pytest.mark.slow]

if PATHS is None:  # pragma: no cover - test_comfy_host already skips the module
    pytest.skip("tier 2 needs COMFYUI_PATH", allow_module_level=True)

F = 13  # the toy clip length; tom carries and drops 1 frame


def _frames(path):
    from svi_core.video_io import read_video_frames

    return np.stack(list(read_video_frames(path)))


def _toy_graph(info):
    ui = json.loads((WORKFLOWS / "SVI-Toy_CPU_demo.json").read_text(encoding="utf-8"))
    api = ui_to_api(ui, info)
    sid = next(k for k, v in api.items() if v["class_type"] == "SVIInfiniteSampler")
    for k in [k for k, v in api.items() if v["class_type"] == "SVIDriftReport"]:
        del api[k]
    api[sid]["inputs"].update(clips=2, steps=2, run_name=f"a_{uuid.uuid4().hex[:8]}")
    return api, sid


def _continuation(api, sid, node_id, run_name, **inputs):
    node = json.loads(json.dumps(api[sid]))
    node["inputs"].update(run_name=run_name, on_existing_run="new", **inputs)
    api[node_id] = node


def _video_of(comfy, entry, node_id):
    item = entry["outputs"][node_id]["images"][0]
    return comfy.base / "output" / item["subfolder"] / item["filename"]


def test_sampler_extends_a_video_and_an_image_batch(host, object_info):  # noqa: F811
    api, sid = _toy_graph(object_info)
    _continuation(api, sid, "901", f"b_{uuid.uuid4().hex[:8]}", extend_video=[sid, 0],
                  drift_guard="carry", guard_window=4)  # fmt: skip
    _continuation(api, sid, "902", f"c_{uuid.uuid4().hex[:8]}", extend_images=[sid, 2])
    entry = host.run(api)
    assert entry["status"]["status_str"] == "success", error_message(entry)

    a = _frames(_video_of(host, entry, sid))
    b_path = _video_of(host, entry, "901")
    b = _frames(b_path)
    assert len(a) == 2 * F - 1
    assert len(b) == 4 * F - 3  # as long as a 4-clip run
    assert np.array_equal(b[: len(a)], a)  # the original, untouched
    manifest = json.loads((b_path.parent / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["prefix"]["stream_copy"] is True
    assert manifest["settings"]["drift_guard"]["mode"] == "carry"
    assert "extend" in manifest["inputs"]

    c_path = _video_of(host, entry, "902")
    c = _frames(c_path)
    assert len(c) == 1 + (F - 2) + F  # the one last frame, then 2 clips
    manifest = json.loads((c_path.parent / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["prefix"]["stream_copy"] is False  # frames are encoded once


def test_extend_video_and_images_together_are_refused(host, object_info):  # noqa: F811
    api, sid = _toy_graph(object_info)
    _continuation(api, sid, "901", f"b_{uuid.uuid4().hex[:8]}", extend_video=[sid, 0],
                  extend_images=[sid, 2])  # fmt: skip
    entry = host.run(api)
    assert entry["status"]["status_str"] == "error"
    assert "not both" in (error_message(entry) or "")
