"""Tier 2: SVI-Talk inside a real ComfyUI (core's MultiTalk parts, 0.11.0+), and its refusal on
ComfyUI versions without them (0.3.64).

On a ComfyUI with core MultiTalk support:
- ``check_talk.py`` (ComfyUI's python) runs the pack's Talk code on core's own modules: the
  official-order features computed with core's wav2vec2 equal the transformers-based standalone
  features on the same weights; the three passes batched with per-chunk audio equal the passes run
  one by one; the pack's guider equals ComfyUI's KSampler for plain CFG;
- the shipped ``SVI-Talk_Wan2.1`` workflow runs end to end through core's Load Model Patch, Load
  Audio Encoder and Load Audio on tiny random models (``make_models.py --talk``, fp16) and its mp4
  carries the speech;
- a MultiTalk patch for another DiT width, a mode without speech, and a frame rate other than the
  features' are refused before sampling.
On ComfyUI without MultiTalk support the sampler refuses mode talk, naming the version needed.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from .comfy_host import ComfyHost, comfy_paths, error_message
from .workflow_tools import WORKFLOWS, ui_to_api

pytestmark = [pytest.mark.tier2, pytest.mark.slow]

PATHS = comfy_paths()
if PATHS is None:
    pytest.skip(
        "tier 2 needs a ComfyUI checkout: set COMFYUI_PATH (and COMFYUI_PYTHON to its venv's "
        "python, with this pack's requirements.txt installed)",
        allow_module_level=True,
    )

HERE = Path(__file__).resolve().parent
HAS_MULTITALK = (PATHS[0] / "comfy" / "ldm" / "wan" / "model_multitalk.py").is_file()
needs_multitalk = pytest.mark.skipif(
    not HAS_MULTITALK, reason="this ComfyUI has no core MultiTalk support (0.11.0+ needed)"
)
TALK_DIT = "wan2.1_i2v_talk_tiny_dim160_fp16.safetensors"
FRAMES, SIZE, STEPS = 9, 64, 2


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    root, python = PATHS
    h = ComfyHost(root, python, tmp_path_factory.mktemp("comfy_talk"))
    h.prepare()
    if HAS_MULTITALK:  # the Talk set, once per session, before the server lists the folders
        subprocess.run(
            [python, str(HERE / "make_models.py"), str(root), str(h.base / "models"), "--talk"],
            check=True, cwd=str(root),
        )  # fmt: skip
    from svi_core.talk import write_wav

    t = np.arange(int(1.2 * 44100)) / 44100
    tone = 0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 1.7 * t) > 0)
    write_wav(h.base / "input" / "speech.wav", np.stack([tone, 0.6 * tone]).astype("f4"), 44100)
    h.start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def object_info(host):
    return host.get("/object_info")


def _twin(object_info: dict, **sampler: object) -> dict:
    ui = json.loads((WORKFLOWS / "SVI-Talk_Wan2.1.json").read_text(encoding="utf-8"))
    api = ui_to_api(ui, object_info)
    for node in api.values():
        kind = node["class_type"]
        if kind == "CLIPLoader":
            node["class_type"], node["inputs"] = (
                "SVITestCLIPLoader",
                {"clip_name": "f", "type": "wan"},
            )
        elif kind == "CLIPVisionLoader":
            node["class_type"], node["inputs"] = "SVITestCLIPVisionLoader", {"clip_name": "f"}
        elif kind == "SVIModelLoader":
            node["inputs"]["model_name"] = TALK_DIT
        elif kind == "SVIInfiniteSampler":
            node["inputs"].update(frames=FRAMES, width=SIZE, height=SIZE, steps=STEPS,
                                  run_name=f"talk_{uuid.uuid4().hex[:8]}", on_existing_run="new")  # fmt: skip
            node["inputs"].update(sampler)
    return api


def _sampler_id(api: dict) -> str:
    return next(k for k, v in api.items() if v["class_type"] == "SVIInfiniteSampler")


def _fails_before_sampling(host: ComfyHost, api: dict, expect: str) -> None:
    sid = _sampler_id(api)
    t0 = len(host.ws.messages)
    status, body = host.post("/prompt", {"prompt": api, "client_id": host.client_id})
    assert status == 200, body
    entry = host.wait(body["prompt_id"])
    msg = error_message(entry) or ""
    assert entry["status"]["status_str"] == "error" and expect.lower() in msg.lower(), msg
    steps = [
        m for m in host.ws.messages[t0:]
        if m.get("type") == "progress" and m["data"].get("node") == sid and m["data"]["value"] > 0
    ]  # fmt: skip
    assert not steps, "sampling started before the error"


def test_talk_nodes_registered(object_info):
    info = object_info["SVITalkAudio"]
    assert info["category"] == "SVI/talk"
    assert "talk" in str(object_info["SVIInfiniteSampler"]["input"]["required"]["mode"])
    assert "condition" in object_info["SVIInfiniteSampler"]["input"]["optional"]


@pytest.mark.skipif(HAS_MULTITALK, reason="this ComfyUI has core MultiTalk support")
def test_talk_is_refused_without_core_multitalk(host, object_info):
    ui = json.loads((WORKFLOWS / "SVI-Shot_Wan2.1.json").read_text(encoding="utf-8"))
    api = ui_to_api(ui, object_info)
    for node in api.values():
        if node["class_type"] == "CLIPLoader":
            node["class_type"], node["inputs"] = (
                "SVITestCLIPLoader",
                {"clip_name": "f", "type": "wan"},
            )
        elif node["class_type"] == "CLIPVisionLoader":
            node["class_type"], node["inputs"] = "SVITestCLIPVisionLoader", {"clip_name": "f"}
        elif node["class_type"] == "SVIInfiniteSampler":
            node["inputs"].update(mode="talk", clips=1, frames=FRAMES, width=SIZE, height=SIZE,
                                  steps=1, fps=25.0, run_name="talk_old", on_existing_run="new")  # fmt: skip
    _fails_before_sampling(host, api, "SVI-Talk needs ComfyUI 0.11.0 or newer")


@pytest.fixture(scope="module")
def parts(host, tmp_path_factory):
    if not HAS_MULTITALK:
        pytest.skip("this ComfyUI has no core MultiTalk support")
    root, python = PATHS
    work = tmp_path_factory.mktemp("talk_parts")
    proc = subprocess.run(
        [python, str(HERE / "check_talk.py"), str(root), str(HERE.parents[1]),
         str(host.base / "models"), str(work)],
        capture_output=True, text=True, cwd=str(root), timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    from safetensors.torch import load_file

    return load_file(str(work / "out.safetensors")), host.base / "models"


def test_official_features_on_core_modules_equal_the_standalone_ones(parts, tmp_path):
    pytest.importorskip("transformers")
    import shutil

    from svi_core.standalone.wav2vec import load_wav2vec2, wav2vec2_features

    out, models = parts
    folder = tmp_path / "chinese-wav2vec2-base"
    folder.mkdir()
    shutil.copy(models / "audio_encoders" / "wav2vec2-chinese-base_fp16.safetensors",
                folder / "model.safetensors")  # fmt: skip
    # chinese-wav2vec2-base's config: base layout, group-norm CNN without conv bias
    config = dict(model_type="wav2vec2", hidden_size=768, num_hidden_layers=12,
                  num_attention_heads=12, intermediate_size=3072, conv_bias=False,
                  feat_extract_norm="group", do_stable_layer_norm=False, layerdrop=0.0)  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False}))
    ref = wav2vec2_features(load_wav2vec2(folder), out["samples"].numpy())
    diff = (out["features"] - ref).abs().max().item()
    print(f"features: core modules (official order) vs transformers {diff:.2e}")
    assert out["features"].shape == (25, 12, 768) and diff < 1e-4


def test_per_chunk_audio_and_the_guider_on_core_modules(parts):
    out, _ = parts
    batched = (out["fwd_batched"] - out["fwd_single"]).abs().max().item()
    print(f"3 passes batched vs one by one: {batched:.2e}")
    assert batched < 1e-4
    single = out["fwd_single"]
    assert (single[0:1] - out["fwd_noaudio"]).abs().max() > 1e-2  # the audio acts
    assert (single[1] - single[2]).abs().max() > 1e-2  # the null pass gets other audio
    assert torch.equal(out["cfg_guider"], out["cfg_ksampler"])
    assert torch.equal(out["talk"], out["talk_again"])
    assert (out["talk"] - out["talk_other"]).abs().max() > 1e-3


@needs_multitalk
def test_talk_workflow_runs_and_the_mp4_carries_the_speech(host, object_info):
    from svi_core.talk import load_audio
    from svi_core.video_io import mp4_frame_count, mp4_track_seconds

    api = _twin(object_info)
    sid = _sampler_id(api)
    t0 = len(host.ws.messages)
    entry = host.run(api, timeout=1800)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    item = entry["outputs"][sid]["images"][0]
    video = host.base / "output" / item["subfolder"] / item["filename"]
    run_dir = video.parent
    manifest = json.loads((run_dir / "manifest.json").read_text())
    clips = len(manifest["clips"])
    assert clips == 4  # clips = 0: 1.2 s = 30 feature frames -> ceil((30 + 1) / 9)
    assert manifest["settings"]["clip_conditions"]["audio"]["order"] == "official"
    assert manifest["settings"]["cfg_audio"] == 5.0 and manifest["settings"]["cfg"] == 2.0
    assert mp4_frame_count(video) == clips * FRAMES  # every frame kept
    tracks = mp4_track_seconds(video)
    assert tracks["vide"] == pytest.approx(clips * FRAMES / 25)
    assert abs(tracks["soun"] - clips * FRAMES / 25) < 0.1
    speech = load_audio(video, loudness_target=None)
    assert speech.channels == 2 and np.abs(speech.samples).max() > 0.05
    progress = [
        m["data"] for m in host.ws.messages[t0:]
        if m.get("type") == "progress" and m["data"].get("node") == sid
    ]  # fmt: skip
    assert progress and progress[-1]["value"] == clips * STEPS


@needs_multitalk
def test_a_multitalk_patch_for_another_dit_is_refused(host, object_info):
    api = _twin(object_info)
    loader = next(v for v in api.values() if v["class_type"] == "SVIModelLoader")
    loader["inputs"].update(model_name="wan2.1_i2v_480p_14B_fp16.safetensors", lora_name="none")
    _fails_before_sampling(host, api, "is for a DiT of width 160, but the MODEL is 256 wide")


@needs_multitalk
@pytest.mark.parametrize(
    "change,expect",
    [({"mode": "shot"}, "does not use it"), ({"fps": 16.0}, "set fps 25")],
)
def test_speech_with_another_mode_or_frame_rate_is_refused(host, object_info, change, expect):
    _fails_before_sampling(host, _twin(object_info, **change), expect)
