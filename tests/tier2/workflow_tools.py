"""Build the pack's drag-and-drop workflows (UI format) and turn UI JSON into API prompts.

``python tests/tier2/workflow_tools.py`` rewrites ``workflows/*.json`` from the specs below.
:func:`ui_to_api` converts a UI workflow into the API format ``/prompt`` takes, using the
server's ``/object_info`` for the widget order (notes dropped, bypassed nodes passed through,
muted nodes dropped) — the tier-2 tests run every shipped workflow through it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows"
NOTE_TYPES = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

WAN21_MODEL = "wan2.1_i2v_480p_14B_fp16.safetensors"
HIGH_MODEL = "wan2.2_i2v_high_noise_14B_fp16.safetensors"
LOW_MODEL = "wan2.2_i2v_low_noise_14B_fp16.safetensors"
VAE = "wan_2.1_vae.safetensors"
UMT5 = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
CLIP_VISION = "clip_vision_h.safetensors"
LORA_SHOT = "svi-shot.safetensors"
LORA_FILM = "svi-film-opt-10212025.safetensors"
LORA_PRO_HIGH = "SVI_v2_PRO_Wan2.2-I2V-A14B_HIGH_lora_rank_128_fp16.safetensors"
LORA_PRO_LOW = "SVI_v2_PRO_Wan2.2-I2V-A14B_LOW_lora_rank_128_fp16.safetensors"
SPEED_HIGH = "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors"
SPEED_LOW = "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors"

# node type -> (socket inputs [(name, type)], outputs [(name, type)])
SOCKETS: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]]]] = {
    "LoadImage": ([], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "CLIPLoader": ([], [("CLIP", "CLIP")]),
    "CLIPVisionLoader": ([], [("CLIP_VISION", "CLIP_VISION")]),
    "SVIModelLoader": ([], [("model", "MODEL"), ("low_noise_model", "MODEL"), ("vae", "VAE")]),
    "SVILoraLoader": ([("model", "MODEL")], [("model", "MODEL")]),
    "SVIPromptStream": ([("clip", "CLIP")], [("prompt_stream", "SVI_PROMPTS")]),
    "SVIInfiniteSampler": (
        [
            ("model", "MODEL"),
            ("vae", "VAE"),
            ("prompt_stream", "SVI_PROMPTS"),
            ("reference_image", "IMAGE"),
            ("low_noise_model", "MODEL"),
            ("clip_vision", "CLIP_VISION"),
            ("extend_video", "VIDEO"),
            ("extend_images", "IMAGE"),
        ],
        [("video", "VIDEO"), ("last_latent", "LATENT"), ("last_frames", "IMAGE")],
    ),
    "SVIToyModels": (
        [],
        [
            ("model", "MODEL"),
            ("vae", "VAE"),
            ("clip", "CLIP"),
            ("clip_vision", "CLIP_VISION"),
            ("start_image", "IMAGE"),
        ],
    ),  # fmt: skip
    "SVIDriftReport": (
        [("video", "VIDEO"), ("anchor", "IMAGE")],
        [("plot", "IMAGE"), ("summary", "STRING")],
    ),
    "MarkdownNote": ([], []),
}


def _note(wan22: bool, lora_lines: list[str], extra: str) -> str:
    text_enc = f"- `{UMT5}` (Comfy-Org/Wan_2.1_ComfyUI_repackaged, split_files/text_encoders)"
    if wan22:
        dit = (
            f"- `{HIGH_MODEL}`\n- `{LOW_MODEL}`\n  (Comfy-Org/Wan_2.2_ComfyUI_Repackaged, "
            "split_files/diffusion_models; the fp8_scaled files load too, but fp8 weights lose "
            "most of a LoRA's change: prefer fp16)"
        )
        clipv = ""
    else:
        dit = (
            f"- `{WAN21_MODEL}` (Comfy-Org/Wan_2.1_ComfyUI_repackaged, "
            "split_files/diffusion_models)"
        )
        clipv = (
            "\n**models/clip_vision/**\n"
            f"- `{CLIP_VISION}` (Comfy-Org/Wan_2.1_ComfyUI_repackaged, split_files/clip_vision)\n"
        )
    loras = "\n".join(f"- `{name}`" for name in lora_lines)
    return (
        "## Files this workflow needs\n\n"
        f"**models/diffusion_models/**\n{dit}\n\n"
        f"**models/loras/** (SVI LoRAs: vita-video-gen/svi-model on Hugging Face)\n{loras}\n\n"
        f"**models/text_encoders/**\n{text_enc}\n\n"
        f"**models/vae/**\n- `{VAE}` (Wan2.1 and Wan2.2 A14B share it)\n"
        f"{clipv}\n"
        "The video is streamed clip by clip to `output/svi/<run_name>/`; queue again with the "
        "same run name to resume after a stop or to add clips.\n\n"
        f"{extra}"
    )


def _build(spec: list[dict[str, Any]], links: list[tuple[int, int, int, int]]) -> dict[str, Any]:
    """UI workflow from node specs and links ``(from_id, from_slot, to_id, input_name_index)``."""
    nodes: dict[int, dict[str, Any]] = {}
    for order, s in enumerate(spec):
        ins, outs = SOCKETS[s["type"]]
        node = {
            "id": s["id"],
            "type": s["type"],
            "pos": s["pos"],
            "size": s.get("size", [320, 200]),
            "flags": {},
            "order": order,
            "mode": s.get("mode", 0),
            "inputs": [{"name": n, "type": t, "link": None} for n, t in ins],
            "outputs": [{"name": n, "type": t, "links": []} for n, t in outs],
            "properties": {"Node name for S&R": s["type"]},
            "widgets_values": s.get("widgets", []),
        }
        if "title" in s:
            node["title"] = s["title"]
        if s["type"] == "MarkdownNote":
            node["color"], node["bgcolor"] = "#432", "#653"
        nodes[s["id"]] = node
    ui_links = []
    for link_id, (src, slot, dst, dst_slot) in enumerate(links, start=1):
        out = nodes[src]["outputs"][slot]
        inp = nodes[dst]["inputs"][dst_slot]
        if out["type"] != inp["type"]:
            raise ValueError(
                f"link {src}:{slot} -> {dst}:{dst_slot} joins {out['type']} to {inp['type']}"
            )
        out["links"].append(link_id)
        inp["link"] = link_id
        ui_links.append([link_id, src, slot, dst, dst_slot, out["type"]])
    return {
        "last_node_id": max(nodes),
        "last_link_id": len(ui_links),
        "nodes": list(nodes.values()),
        "links": ui_links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.75, "offset": [480, 260]}},
        "version": 0.4,
    }


def _sampler_widgets(mode: str, clips: int, cfg: float, fps: float, run: str) -> list[Any]:
    # mode, clips, frames, width, height, steps, cfg, sampler, scheduler, shift, seed,
    # control_after_generate, seed_stride, fps, run_name, on_existing_run, boundary,
    # drift_guard, guard_window
    return [mode, clips, 81, 832, 480, 50, cfg, "euler", "simple", 5.0, 0, "fixed", 42, fps,
            run, "resume or new", 0.875, "off", 16]  # fmt: skip


def shot() -> dict[str, Any]:
    spec = [
        {"id": 1, "type": "SVIModelLoader", "pos": [0, 0], "size": [380, 220],
         "widgets": [WAN21_MODEL, LORA_SHOT, 1.0, VAE, "none", "none", "default"]},
        {"id": 2, "type": "CLIPLoader", "pos": [0, 260], "widgets": [UMT5, "wan", "default"]},
        {"id": 3, "type": "CLIPVisionLoader", "pos": [0, 400], "widgets": [CLIP_VISION]},
        {"id": 4, "type": "LoadImage", "pos": [0, 520], "size": [320, 320], "widgets": ["example.png", "image"]},
        {"id": 5, "type": "SVIPromptStream", "pos": [420, 260], "size": [400, 260],
         "widgets": ["A cinematic shot of the subject moving naturally, the camera slowly "
                     "following, consistent lighting.", 0, ""]},
        {"id": 6, "type": "SVIInfiniteSampler", "pos": [860, 0], "size": [420, 700],
         "widgets": _sampler_widgets("shot", 10, 5.0, 16.0, "svi_shot")},
        {"id": 7, "type": "MarkdownNote", "pos": [-420, 0], "size": [400, 560], "title": "Model files",
         "widgets": [_note(False, [LORA_SHOT], "SVI-Shot keeps one scene and subject for a "
                           "long single shot: one prompt, every clip conditioned on the "
                           "reference image. Official settings: 50 steps, CFG 5, shift 5.")]},
    ]  # fmt: skip
    links = [(1, 0, 6, 0), (1, 2, 6, 1), (5, 0, 6, 2), (4, 0, 6, 3), (3, 0, 6, 5), (2, 0, 5, 0)]
    return _build(spec, links)


def film() -> dict[str, Any]:
    prompts = (
        "# One prompt per paragraph; clip k uses prompt k (cycling).\n"
        "A woman walks along a beach at sunset, waves rolling in, warm light.\n\n"
        "She stops and looks at the sea, the wind moving her hair.\n\n"
        "She turns around and walks back towards the camera, smiling.\n\n"
        "The camera rises slowly to show the whole bay in golden light."
    )
    spec = [
        {"id": 1, "type": "SVIModelLoader", "pos": [0, 0], "size": [380, 220],
         "widgets": [WAN21_MODEL, LORA_FILM, 1.0, VAE, "none", "none", "default"]},
        {"id": 2, "type": "CLIPLoader", "pos": [0, 260], "widgets": [UMT5, "wan", "default"]},
        {"id": 3, "type": "CLIPVisionLoader", "pos": [0, 400], "widgets": [CLIP_VISION]},
        {"id": 4, "type": "LoadImage", "pos": [0, 520], "size": [320, 320], "widgets": ["example.png", "image"]},
        {"id": 5, "type": "SVIPromptStream", "pos": [420, 260], "size": [420, 360], "widgets": [prompts, 0, ""]},
        {"id": 6, "type": "SVIInfiniteSampler", "pos": [880, 0], "size": [420, 700],
         "widgets": _sampler_widgets("film", 4, 5.0, 16.0, "svi_film")},
        {"id": 7, "type": "MarkdownNote", "pos": [-420, 0], "size": [400, 560], "title": "Model files",
         "widgets": [_note(False, [LORA_FILM + " (or svi-film.safetensors)"],
                           "SVI-Film follows a story: one prompt per clip, 5 motion frames "
                           "carried between clips. Set clips to the number of prompts (0 = "
                           "min(10, prompts)).")]},
    ]  # fmt: skip
    links = [(1, 0, 6, 0), (1, 2, 6, 1), (5, 0, 6, 2), (4, 0, 6, 3), (3, 0, 6, 5), (2, 0, 5, 0)]
    return _build(spec, links)


def pro() -> dict[str, Any]:
    prompts = (
        "# SVI 2.0 Pro: clip k uses prompt k; the last prompt is held after the end.\n"
        "A red fox trots through a snowy forest, soft morning light.\n\n"
        "The fox pauses, sniffs the air, then leaps over a fallen log.\n\n"
        "The fox runs across a frozen clearing as snow begins to fall."
    )
    spec = [
        {"id": 1, "type": "SVIModelLoader", "pos": [0, 0], "size": [400, 240],
         "widgets": [HIGH_MODEL, LORA_PRO_HIGH, 1.0, VAE, LOW_MODEL, LORA_PRO_LOW, "default"]},
        {"id": 8, "type": "SVILoraLoader", "pos": [440, -200], "mode": 4, "title": "Speed LoRA high (0.5)",
         "widgets": [SPEED_HIGH, 0.5]},
        {"id": 9, "type": "SVILoraLoader", "pos": [440, -60], "mode": 4, "title": "Speed LoRA low (1.0)",
         "widgets": [SPEED_LOW, 1.0]},
        {"id": 2, "type": "CLIPLoader", "pos": [0, 280], "widgets": [UMT5, "wan", "default"]},
        {"id": 4, "type": "LoadImage", "pos": [0, 420], "size": [320, 320], "widgets": ["example.png", "image"]},
        {"id": 5, "type": "SVIPromptStream", "pos": [440, 280], "size": [420, 320], "widgets": [prompts, 0, ""]},
        {"id": 6, "type": "SVIInfiniteSampler", "pos": [900, 0], "size": [420, 700],
         "widgets": _sampler_widgets("v2_pro", 5, 5.0, 16.0, "svi_pro")},
        {"id": 7, "type": "MarkdownNote", "pos": [-440, 0], "size": [420, 620], "title": "Model files",
         "widgets": [_note(True, [LORA_PRO_HIGH, LORA_PRO_LOW,
                                  f"{SPEED_HIGH} (optional speed LoRA)",
                                  f"{SPEED_LOW} (optional speed LoRA)"],
                           "Speed: select the two bypassed 'Speed LoRA' nodes and press Ctrl+B "
                           "to enable them, then set steps 6 and cfg 1.5. LightX2V at 0.5 on the "
                           "high-noise expert keeps the motion (full strength slows it).")]},
    ]  # fmt: skip
    links = [
        (1, 0, 8, 0),
        (1, 1, 9, 0),
        (8, 0, 6, 0),
        (1, 2, 6, 1),
        (5, 0, 6, 2),
        (4, 0, 6, 3),
        (9, 0, 6, 4),
        (2, 0, 5, 0),
    ]
    return _build(spec, links)


def toy() -> dict[str, Any]:
    """The toy CPU demo: shipped toy models, 20 clips of 13 frames at 64x48, then the drift
    report (about a minute on a CPU)."""
    widgets = ["tom", 20, 13, 64, 48, 10, 1.0, "euler", "simple", 5.0, 0, "fixed", 42, 16.0,
               "svi_toy_demo", "resume or new", 0.875, "off", 16]  # fmt: skip
    note = (
        "## Toy CPU demo (no download)\n\n"
        "**SVI Toy Models** loads the tiny toy Wan2.1 I2V models shipped with the pack "
        "(svi_core/assets) and the toy world's start frame. The sampler runs the real SVI clip "
        "loop (mode tom, 20 clips of 13 frames at 64x48, 10 steps, CFG 1) on a CPU in about a "
        "minute, then **SVI Drift Report** measures how the video drifts clip by clip and "
        "writes report.json / report.png into output/svi/svi_toy_demo/.\n\n"
        "The toy pictures are blocky and drift visibly in colour: it shows the pipeline and "
        "the report working, not a real model.\n\n"
        "**Drift guard switch:** set the sampler's drift_guard to `carry` (or `output`) and "
        "queue again: the colour is matched to the start image at every seam and the report's "
        "colour ΔE stays low (a new run folder is made; `off` is the official SVI)."
    )
    spec = [
        {"id": 1, "type": "SVIToyModels", "pos": [0, 0], "size": [320, 200], "widgets": [3]},
        {"id": 5, "type": "SVIPromptStream", "pos": [0, 260], "size": [380, 200],
         "widgets": ["toy world", 0, ""]},
        {"id": 6, "type": "SVIInfiniteSampler", "pos": [420, 0], "size": [420, 700],
         "widgets": widgets},
        {"id": 8, "type": "SVIDriftReport", "pos": [880, 0], "size": [520, 520],
         "widgets": ["", 0, 5, False]},
        {"id": 7, "type": "MarkdownNote", "pos": [-420, 0], "size": [400, 420],
         "title": "Toy demo", "widgets": [note]},
    ]  # fmt: skip
    links = [(1, 0, 6, 0), (1, 1, 6, 1), (5, 0, 6, 2), (1, 4, 6, 3), (1, 3, 6, 5), (1, 2, 5, 0),
             (6, 0, 8, 0), (1, 4, 8, 1)]  # fmt: skip
    return _build(spec, links)


BUILDERS = {
    "SVI-Shot_Wan2.1": shot,
    "SVI-Film_Wan2.1_prompt_stream": film,
    "SVI-2.0-Pro_Wan2.2": pro,
    "SVI-Toy_CPU_demo": toy,
}


def write_all(folder: Path = WORKFLOWS) -> list[Path]:
    folder.mkdir(exist_ok=True)
    out = []
    for name, build in BUILDERS.items():
        path = folder / f"{name}.json"
        path.write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        out.append(path)
    return out


# ----- UI -> API ------------------------------------------------------------------------


def _widget_inputs(info: dict[str, Any]) -> list[tuple[str, bool]]:
    """(name, has control_after_generate) of the widget inputs, in widget order."""
    out = []
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    for section in ("required", "optional"):
        defs = info["input"].get(section, {})
        for name in order.get(section, []):
            spec = defs[name]
            kind = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if isinstance(kind, list) or kind in WIDGET_TYPES:
                if opts.get("forceInput"):
                    continue
                out.append((name, bool(opts.get("control_after_generate"))))
    return out


def ui_to_api(ui: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """API prompt (``{id: {class_type, inputs}}``) of a UI workflow."""
    nodes = {n["id"]: n for n in ui["nodes"]}
    link_by_id = {link[0]: link for link in ui["links"]}

    def source(link_id: int) -> list[Any] | None:
        _, src, slot, _, _, typ = link_by_id[link_id]
        node = nodes[src]
        if node.get("mode") == 4:  # bypassed: pass the matching input through
            for inp in node.get("inputs", []):
                if inp["type"] == typ and inp.get("link") is not None:
                    return source(inp["link"])
            return None
        if node.get("mode") == 2:
            return None
        return [str(src), slot]

    api: dict[str, Any] = {}
    for node in ui["nodes"]:
        if node["type"] in NOTE_TYPES or node.get("mode", 0) in (2, 4):
            continue
        info = object_info[node["type"]]
        inputs: dict[str, Any] = {}
        values = list(node.get("widgets_values") or [])
        linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
        pos = 0
        for name, control in _widget_inputs(info):
            if pos >= len(values):
                break
            if name not in linked:
                inputs[name] = values[pos]
            pos += 2 if control else 1
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                src = source(inp["link"])
                if src is not None:
                    inputs[inp["name"]] = src
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


if __name__ == "__main__":
    for p in write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else WORKFLOWS):
        print(p)
