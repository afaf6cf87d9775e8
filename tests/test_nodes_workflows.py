"""Tier 1: the shipped drag-and-drop workflows are well-formed UI JSON and document their files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "workflows").glob("*.json"))
MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth")
CORE_TYPES = {"LoadImage", "CLIPLoader", "CLIPVisionLoader", "MarkdownNote", "Note"}
CORE_TYPES |= {"ModelPatchLoader", "AudioEncoderLoader", "LoadAudio"}  # SVI-Talk
CORE_TYPES |= {"LoadVideo", "GetVideoComponents"}  # SVI-Dance


def test_the_three_workflows_ship():
    names = {p.stem for p in FILES}
    assert {"SVI-Shot_Wan2.1", "SVI-Film_Wan2.1_prompt_stream", "SVI-2.0-Pro_Wan2.2"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_workflow_is_consistent_ui_json(path):
    wf = json.loads(path.read_text(encoding="utf-8"))
    assert wf["version"] == 0.4
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]) and wf["last_node_id"] >= max(nodes)
    assert wf["last_link_id"] >= max(link[0] for link in wf["links"])
    for n in nodes.values():
        assert n["type"].startswith("SVI") or n["type"] in CORE_TYPES, n["type"]
    for link_id, src, slot, dst, dst_slot, typ in wf["links"]:
        out = nodes[src]["outputs"][slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert link_id in out["links"] and inp["link"] == link_id
        assert out["type"] == inp["type"] == typ
    for n in nodes.values():  # no dangling link ids
        for inp in n.get("inputs", []):
            assert inp["link"] is None or any(lk[0] == inp["link"] for lk in wf["links"])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_note_lists_every_model_file_and_folder(path):
    wf = json.loads(path.read_text(encoding="utf-8"))
    notes = [n for n in wf["nodes"] if n["type"] in ("MarkdownNote", "Note")]
    assert notes, "each workflow holds a note listing the files it needs"
    text = "\n".join(str(v) for n in notes for v in n["widgets_values"])
    files = {
        v
        for n in wf["nodes"]
        if n["type"] not in ("MarkdownNote", "Note")
        for v in n.get("widgets_values", [])
        if isinstance(v, str) and v.endswith(MODEL_SUFFIXES)
    }
    if any(n["type"] == "SVIToyModels" for n in wf["nodes"]):  # the toy demo ships its models
        assert not files and "svi_core/assets" in text
        return
    assert files, "the workflow names its model files"
    for f in files:
        assert f in text, f"{f} is used but not listed in the note"
    for folder in ("diffusion_models", "loras", "text_encoders", "vae"):
        assert f"models/{folder}/" in text


def test_wan21_workflows_have_clip_vision_and_wan22_two_experts():
    for path in FILES:
        wf = json.loads(path.read_text(encoding="utf-8"))
        sampler = next(n for n in wf["nodes"] if n["type"] == "SVIInfiniteSampler")
        linked = {i["name"] for i in sampler["inputs"] if i["link"] is not None}
        mode = sampler["widgets_values"][0]
        if mode in ("v2_pro", "v2_w22"):
            assert {"model", "low_noise_model"} <= linked and "clip_vision" not in linked
        else:
            assert "clip_vision" in linked and "low_noise_model" not in linked


def test_ui_to_api_widgets_links_bypass_and_notes():
    from tier2.workflow_tools import ui_to_api

    info = {
        "Src": {"input": {"required": {"seed": ["INT", {"control_after_generate": True}],
                                       "name": [["a", "b"], {}]}},
                "input_order": {"required": ["seed", "name"]}},
        "Mid": {"input": {"required": {"model": ["MODEL", {}], "strength": ["FLOAT", {}]}},
                "input_order": {"required": ["model", "strength"]}},
        "Dst": {"input": {"required": {"model": ["MODEL", {}]},
                          "optional": {"extra": ["STRING", {"multiline": True}]}},
                "input_order": {"required": ["model"], "optional": ["extra"]}},
    }  # fmt: skip

    def node(i, typ, mode=0, inputs=(), widgets=()):
        return {"id": i, "type": typ, "mode": mode, "widgets_values": list(widgets),
                "inputs": [{"name": n, "type": t, "link": lk} for n, t, lk in inputs]}  # fmt: skip

    ui = {
        "nodes": [
            node(1, "Src", widgets=[7, "randomize", "b"]),
            node(2, "Mid", mode=4, inputs=[("model", "MODEL", 1)], widgets=[0.5]),
            node(3, "Dst", inputs=[("model", "MODEL", 2)], widgets=["hi"]),
            node(4, "MarkdownNote", widgets=["# note"]),
        ],
        "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"]],
    }
    api = ui_to_api(ui, info)
    assert api == {
        "1": {"class_type": "Src", "inputs": {"seed": 7, "name": "b"}},
        "3": {"class_type": "Dst", "inputs": {"extra": "hi", "model": ["1", 0]}},
    }


def _box(node: dict) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of a node as drawn: its title bar sits above ``pos``."""
    from tier2.workflow_tools import TITLE_HEIGHT

    (x, y), (w, h) = node["pos"], node["size"]
    return x, y - TITLE_HEIGHT, x + w, y + h


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_no_two_node_boxes_overlap(path):
    wf = json.loads(path.read_text(encoding="utf-8"))
    nodes = wf["nodes"]
    for i, a in enumerate(nodes):
        for b in nodes[i + 1 :]:
            al, at, ar, ab = _box(a)
            bl, bt, br, bb = _box(b)
            apart = ar <= bl or br <= al or ab <= bt or bb <= at
            assert apart, (
                f"{a['type']} #{a['id']} {_box(a)} overlaps {b['type']} #{b['id']} {_box(b)}"
            )


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_nodes_are_at_least_as_large_as_the_frontend_draws_them(path):
    """Stored sizes are honest: never below what ComfyUI's frontend computes for the node
    (``SIZES``, measured in the real frontends; tier 2 checks it there)."""
    from tier2.workflow_tools import SIZES

    for node in json.loads(path.read_text(encoding="utf-8"))["nodes"]:
        least = SIZES.get(node["type"])
        if least:
            assert node["size"][0] >= least[0] and node["size"][1] >= least[1], node["type"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_model_file_carries_its_download_source(path):
    """Each model file a loader names that the official pages host (``MODEL_SOURCES``) is listed
    in that node's ``properties.models`` (name, url, directory), so ComfyUI's missing-models
    dialog can offer it; every listed url is the official page's file (Comfy-Org repackaged Wan
    files, SVI LoRAs on vita-video-gen/svi-model, MeiGen's MultiTalk weights, the chinese
    wav2vec2 as the single safetensors file ComfyUI's audio-encoder loader reads)."""
    from tier2.workflow_tools import MODEL_SOURCES

    official = (
        "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/",
        "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/",
        "https://huggingface.co/vita-video-gen/svi-model/resolve/main/version-",
        "https://huggingface.co/MeiGen-AI/MeiGen-MultiTalk/resolve/main/",
        "https://huggingface.co/Kijai/wav2vec2_safetensors/resolve/main/",
    )
    folders = {
        "diffusion_models",
        "loras",
        "vae",
        "text_encoders",
        "clip_vision",
        "model_patches",
        "audio_encoders",
    }
    for node in json.loads(path.read_text(encoding="utf-8"))["nodes"]:
        if node["type"] in ("MarkdownNote", "Note"):
            continue
        files = [
            v
            for v in node.get("widgets_values", [])
            if isinstance(v, str) and v.endswith(MODEL_SUFFIXES)
        ]
        models = node.get("properties", {}).get("models", [])
        hosted = sorted(f for f in files if f in MODEL_SOURCES)
        assert sorted(m["name"] for m in models) == hosted, node["type"]
        for m in models:
            assert set(m) == {"name", "url", "directory"}
            assert m["url"].startswith(official) and m["url"].endswith("/" + m["name"]), m
            assert (
                m["directory"] in folders and (m["directory"], m["url"]) == MODEL_SOURCES[m["name"]]
            )
            # the folder in the url matches the models/ folder it goes to
            if "split_files/" in m["url"]:
                assert m["url"].split("split_files/")[1].split("/")[0] == m["directory"]
            elif "MultiTalk" in m["url"]:
                assert m["directory"] == "model_patches"
            elif "wav2vec2" in m["url"]:
                assert m["directory"] == "audio_encoders"
            else:
                assert m["directory"] == "loras"


def test_shipped_workflows_are_what_the_builders_write(tmp_path):
    """workflows/*.json are generated by tests/tier2/workflow_tools.py; rerun it after a change."""
    from tier2.workflow_tools import write_all

    for written in write_all(tmp_path):
        shipped = ROOT / "workflows" / written.name
        assert json.loads(shipped.read_text(encoding="utf-8")) == json.loads(
            written.read_text(encoding="utf-8")
        ), f"{shipped.name} differs from its builder: run python tests/tier2/workflow_tools.py"


def test_dance_workflow_follows_a_pose_video_with_the_official_settings():
    wf = json.loads((ROOT / "workflows" / "SVI-Dance_Wan2.1.json").read_text(encoding="utf-8"))
    nodes = {n["id"]: n for n in wf["nodes"]}
    sampler = next(n for n in nodes.values() if n["type"] == "SVIInfiniteSampler")
    w = sampler["widgets_values"]
    # mode, clips, frames, width, height, steps, cfg, ..., fps at 13, boundary at 16,
    # pose_palette, pose_loop, drift_guard, guard_window
    assert (w[0], w[1], w[3], w[4], w[5], w[6], w[9], w[13]) == (
        "dance",
        0,
        0,
        0,
        50,
        2.0,
        5.0,
        25.0,
    )
    assert w[17:19] == ["official", "loop"]
    pose = next(i for i in sampler["inputs"] if i["name"] == "pose_video")
    link = next(lk for lk in wf["links"] if lk[0] == pose["link"])
    src = nodes[link[1]]
    assert src["type"] == "GetVideoComponents" and link[2] == 0  # its images
    video = nodes[next(lk for lk in wf["links"] if lk[0] == src["inputs"][0]["link"])[1]]
    assert video["type"] == "LoadVideo"
    loader = next(n for n in nodes.values() if n["type"] == "SVIModelLoader")
    assert loader["widgets_values"][1] == "svi-dance.safetensors"
    note = next(n for n in nodes.values() if n["type"] == "MarkdownNote")["widgets_values"][0]
    for text in (video["widgets_values"][0], "pose_palette official", "pose_palette rgb",
                 "SVI Pose Align", "DWPose", "SDPose"):  # fmt: skip
        assert text in note, text
