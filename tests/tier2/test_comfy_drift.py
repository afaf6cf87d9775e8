"""Tier 2: the SVI Drift Report node after the SVI Infinite Sampler in a real ComfyUI server.

Runs the Film workflow's API twin (test models, 2 clips of 9 frames, 5 overlap frames), then
two drift nodes: one fed the sampler's VIDEO (clip layout from the run manifest, anchor image
from Load Image), one given the run name with an explicit layout. Checks report.json has the
per-clip metrics, the PNG is shown in the UI, and the IMAGE / STRING outputs.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import pytest

from .comfy_host import error_message
from .test_comfy_host import FRAMES, PATHS, _sampler_id, _twin, host, object_info  # noqa: F401
from .workflow_tools import WORKFLOWS, ui_to_api

pytestmark = [pytest.mark.tier2, pytest.mark.slow]

if PATHS is None:  # pragma: no cover - test_comfy_host already skips the module
    pytest.skip("tier 2 needs COMFYUI_PATH", allow_module_level=True)

OVERLAP = 5
METRICS = ("brightness", "contrast", "sharpness", "flicker", "motion", "ssim_anchor", "delta_e")


def _load_image_id(api: dict) -> str:
    return next(k for k, v in api.items() if v["class_type"] == "LoadImage")


def test_drift_report_after_sampler(host, object_info):  # noqa: F811
    info = object_info["SVIDriftReport"]
    assert info["category"] == "SVI/analysis"
    api = _twin("SVI-Film_Wan2.1_prompt_stream", object_info)
    sid = _sampler_id(api)
    run_name = api[sid]["inputs"]["run_name"]
    api["900"] = {
        "class_type": "SVIDriftReport",
        "inputs": {
            "run_name": "",
            "clip_frames": 0,
            "overlap": 0,
            "first_clip_whole": False,
            "video": [sid, 0],
            "anchor": [_load_image_id(api), 0],
        },
    }
    entry = host.run(api)
    assert entry["status"]["status_str"] == "success", error_message(entry)

    item = entry["outputs"]["900"]["images"][0]
    png = host.base / "output" / item["subfolder"] / item["filename"]
    assert item["type"] == "output" and png.name == "report.png" and png.is_file()
    run_dir = png.parent
    assert run_dir.name == run_name and (run_dir / "manifest.json").is_file()
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    assert report["frames"] == 2 * FRAMES - OVERLAP
    assert report["anchor"] == "image"
    clips = report["clips"]
    assert [c["index"] for c in clips] == [0, 1]
    assert clips[0]["start"] == 0 and clips[-1]["end"] == report["frames"]
    for c in clips:
        for m in METRICS:
            assert isinstance(c[m], float) and math.isfinite(c[m]), (m, c[m])
    assert clips[0]["delta_e"] == 0.0
    assert clips[1]["seam_ratio"] is not None
    assert len(report["per_frame"]["brightness"]) == report["frames"]


def test_drift_report_by_run_name(host, object_info):  # noqa: F811
    api = _twin("SVI-Film_Wan2.1_prompt_stream", object_info)
    sid = _sampler_id(api)
    entry = host.run(api)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    run_name = api[sid]["inputs"]["run_name"]
    report_api = {
        "1": {
            "class_type": "SVIDriftReport",
            "inputs": {
                "run_name": run_name,
                "clip_frames": FRAMES,
                "overlap": OVERLAP,
                "first_clip_whole": False,
            },
        }
    }
    entry = host.run(report_api)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    item = entry["outputs"]["1"]["images"][0]
    run_dir = host.base / "output" / item["subfolder"]
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    assert Path(report["video"]).name == f"{run_name}.mp4"
    assert report["clip_frames"] == FRAMES and report["overlap"] == OVERLAP
    assert len(report["clips"]) == 2
    assert report["anchor"] == "first_frame"
    assert report["summary"]["clips"] == 2

    bad = {"1": dict(report_api["1"], inputs=dict(report_api["1"]["inputs"], run_name="nope"))}
    entry = host.run(bad)
    assert entry["status"]["status_str"] == "error"
    assert "has no video" in (error_message(entry) or "")


def _wan_vae_roundtrip(server, vae_name: str, prefix: str):
    """Load Image -> VAE Encode -> VAE Decode with core's Load VAE; the decoded PNG as uint8."""
    import numpy as np
    from PIL import Image

    api = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": vae_name}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["2", 0]}},
        "4": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["2", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": prefix}},
    }
    entry = server.run(api)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    item = entry["outputs"]["5"]["images"][0]
    path = server.base / "output" / item["subfolder"] / item["filename"]
    return np.asarray(Image.open(path).convert("RGB"))


def test_real_wan_vae_still_loads_after_the_toy_models(host, object_info):  # noqa: F811
    """SVI Toy Models builds a width-16 Wan VAE without patching ComfyUI: afterwards core's
    Load VAE still builds the full-size (width 96) random Wan VAE of the test models and
    decodes exactly as before the toy ran (a fresh load: the file is loaded under a new name)."""
    import os

    vae_dir = host.base / "models" / "vae"
    before = _wan_vae_roundtrip(host, "wan_2.1_vae.safetensors", "vae_before_toy")
    assert before.shape == (80, 120, 3) and before.std() > 1.0

    ui = json.loads((WORKFLOWS / "SVI-Toy_CPU_demo.json").read_text(encoding="utf-8"))
    api = ui_to_api(ui, object_info)
    api[_sampler_id(api)]["inputs"].update(clips=1, steps=2, run_name=f"toy_{uuid.uuid4().hex[:8]}")
    entry = host.run(api)
    assert entry["status"]["status_str"] == "success", error_message(entry)

    fresh = f"wan_2.1_vae_after_toy_{uuid.uuid4().hex[:6]}.safetensors"
    os.link(vae_dir / "wan_2.1_vae.safetensors", vae_dir / fresh)
    after = _wan_vae_roundtrip(host, fresh, "vae_after_toy")
    assert (after == before).all()


def test_toy_cpu_demo_workflow_runs_with_the_shipped_toy_models(host, object_info, tmp_path):  # noqa: F811
    """The shipped toy workflow as a user runs it (no model files: SVI Toy Models), 3 clips,
    matches the standalone toy demo (diffusers' Wan classes, same scene / seeds / settings)."""
    ui = json.loads((WORKFLOWS / "SVI-Toy_CPU_demo.json").read_text(encoding="utf-8"))
    api = ui_to_api(ui, object_info)
    sid = _sampler_id(api)
    run_name = f"toy_{uuid.uuid4().hex[:8]}"
    api[sid]["inputs"].update(clips=3, run_name=run_name)
    entry = host.run(api)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    drift = next(k for k, v in api.items() if v["class_type"] == "SVIDriftReport")
    item = entry["outputs"][drift]["images"][0]
    run_dir = host.base / "output" / item["subfolder"]
    assert run_dir.name == run_name
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    # tom: 13-frame clips, 1 motion frame -> 3 * 13 - 2 frames, at the toy size 64x48
    assert (report["frames"], report["width"], report["height"]) == (37, 64, 48)
    assert report["anchor"] == "image" and len(report["clips"]) == 3
    # the toy model makes a moving picture, not a frozen or blank one
    assert all(c["motion"] > 1e-3 for c in report["clips"])
    assert 0.05 < report["clips"][0]["brightness"] < 0.95

    # the standalone demo runs on diffusers' Wan classes: the TEST interpreter needs the
    # standalone extra (pip install -e ".[standalone,dev]"); skip the comparison without it
    pytest.importorskip(
        "diffusers", reason="comparing with the standalone toy demo needs diffusers in the "
        "test interpreter: pip install -e '.[standalone,dev]'"
    )  # fmt: skip
    from svi_core.toy.demo import run_demo

    ref = json.loads(Path(run_demo(tmp_path, clips=3, plot=False).report_json).read_text())
    assert ref["frames"] == report["frames"]
    for ours, theirs in zip(report["clips"], ref["clips"], strict=True):
        assert ours["delta_e"] == pytest.approx(theirs["delta_e"], abs=1.0)
        assert ours["brightness"] == pytest.approx(theirs["brightness"], abs=0.01)
        assert ours["motion"] == pytest.approx(theirs["motion"], rel=0.05)
