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
LORA_PRO_HIGH = "SVI_Wan2.2-I2V-A14B_high_noise_lora_v2.0_pro.safetensors"
LORA_PRO_LOW = "SVI_Wan2.2-I2V-A14B_low_noise_lora_v2.0_pro.safetensors"
SPEED_HIGH = "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors"
SPEED_LOW = "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors"
LORA_TALK = "svi-talk.safetensors"
MULTITALK = "multitalk.safetensors"
WAV2VEC = "wav2vec2-chinese-base_fp16.safetensors"
SPEECH = "speech.wav"
LORA_DANCE = "svi-dance.safetensors"
POSE_VIDEO = "dance_pose.mp4"

# Where the official pages host each file (ComfyUI's missing-models dialog offers these):
# Comfy-Org's repackaged Wan files and the SVI LoRAs of vita-video-gen/svi-model.
_WAN21 = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
_WAN22 = "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files"
_SVI = "https://huggingface.co/vita-video-gen/svi-model/resolve/main"
MODEL_SOURCES: dict[str, tuple[str, str]] = {  # file -> (models/ folder, download url)
    WAN21_MODEL: ("diffusion_models", f"{_WAN21}/diffusion_models/{WAN21_MODEL}"),
    HIGH_MODEL: ("diffusion_models", f"{_WAN22}/diffusion_models/{HIGH_MODEL}"),
    LOW_MODEL: ("diffusion_models", f"{_WAN22}/diffusion_models/{LOW_MODEL}"),
    VAE: ("vae", f"{_WAN21}/vae/{VAE}"),
    UMT5: ("text_encoders", f"{_WAN21}/text_encoders/{UMT5}"),
    CLIP_VISION: ("clip_vision", f"{_WAN21}/clip_vision/{CLIP_VISION}"),
    LORA_SHOT: ("loras", f"{_SVI}/version-1.0/{LORA_SHOT}"),
    LORA_FILM: ("loras", f"{_SVI}/version-1.0/{LORA_FILM}"),
    LORA_PRO_HIGH: ("loras", f"{_SVI}/version-2.0/{LORA_PRO_HIGH}"),
    LORA_PRO_LOW: ("loras", f"{_SVI}/version-2.0/{LORA_PRO_LOW}"),
    SPEED_HIGH: ("loras", f"{_WAN22}/loras/{SPEED_HIGH}"),
    SPEED_LOW: ("loras", f"{_WAN22}/loras/{SPEED_LOW}"),
    LORA_TALK: ("loras", f"{_SVI}/version-1.0/{LORA_TALK}"),
    LORA_DANCE: ("loras", f"{_SVI}/version-1.0/{LORA_DANCE}"),
    MULTITALK: (
        "model_patches",
        f"https://huggingface.co/MeiGen-AI/MeiGen-MultiTalk/resolve/main/{MULTITALK}",
    ),
    WAV2VEC: (
        "audio_encoders",
        f"https://huggingface.co/Kijai/wav2vec2_safetensors/resolve/main/{WAV2VEC}",
    ),
}
SPEED_SOURCE = "Comfy-Org/Wan_2.2_ComfyUI_Repackaged, split_files/loras"
TITLE_HEIGHT = 30  # LiteGraph's NODE_TITLE_HEIGHT: the title bar is drawn above a node's pos

# node type -> (socket inputs [(name, type)], outputs [(name, type)])
SOCKETS: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]]]] = {
    "LoadImage": ([], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "LoadVideo": ([], [("VIDEO", "VIDEO")]),
    "GetVideoComponents": (
        [("video", "VIDEO")],
        [("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")],
    ),
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
            ("condition", "SVI_CONDITION"),
            ("schedule", "SVI_SCHEDULE"),
            ("pose_video", "IMAGE"),
            ("extend_video", "VIDEO"),
            ("extend_images", "IMAGE"),
        ],
        [("video", "VIDEO"), ("last_latent", "LATENT"), ("last_frames", "IMAGE")],
    ),
    "SVISchedule": (
        [(f"image_{i}", "IMAGE") for i in range(1, 9)],
        [("schedule", "SVI_SCHEDULE")],
    ),
    "ModelPatchLoader": ([], [("MODEL_PATCH", "MODEL_PATCH")]),
    "AudioEncoderLoader": ([], [("AUDIO_ENCODER", "AUDIO_ENCODER")]),
    "LoadAudio": ([], [("AUDIO", "AUDIO")]),
    "SVITalkAudio": (
        [
            ("model_patch", "MODEL_PATCH"),
            ("audio", "AUDIO"),
            ("audio_encoder", "AUDIO_ENCODER"),
            ("audio_encoder_output", "AUDIO_ENCODER_OUTPUT"),
        ],
        [("condition", "SVI_CONDITION")],
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
        "The loaders carry each file's download link: when a file is missing, ComfyUI offers "
        "to download it into the right folder as the workflow opens.\n\n"
        f"**models/diffusion_models/**\n{dit}\n\n"
        f"**models/loras/** (SVI LoRAs: vita-video-gen/svi-model on Hugging Face, version-1.0 / "
        f"version-2.0)\n{loras}\n\n"
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
        models = [
            {"name": v, "url": MODEL_SOURCES[v][1], "directory": MODEL_SOURCES[v][0]}
            for v in node["widgets_values"]
            if isinstance(v, str) and v in MODEL_SOURCES
        ]
        if models:
            node["properties"]["models"] = models
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


POSE_DEFAULTS = ["rgb", "loop"]  # the sampler's pose_palette, pose_loop (after boundary)
GUARD_DEFAULTS = ["off", 16]  # the sampler's drift_guard, guard_window (after pose_loop)


def _sampler_widgets(
    mode: str,
    clips: int,
    cfg: float,
    fps: float,
    run: str,
    *,
    size: tuple[int, int] = (832, 480),
    pose: list[str] = POSE_DEFAULTS,
) -> list[Any]:
    # mode, clips, frames, width, height, steps, cfg, sampler, scheduler, shift, seed,
    # control_after_generate, seed_stride, fps, run_name, on_existing_run, boundary,
    # pose_palette, pose_loop, drift_guard, guard_window
    return [mode, clips, 81, *size, 50, cfg, "euler", "simple", 5.0, 0, "fixed", 42, fps,
            run, "resume or new", 0.875, *pose, *GUARD_DEFAULTS]  # fmt: skip


# Stored node sizes: at least what ComfyUI's frontends draw for each node (LiteGraph's
# computeSize() measured on 0.3.64's and 0.33's frontends, rounded up), so the layout below is
# what a user sees. The tier-2 frontend test checks them.
SIZES: dict[str, list[int]] = {
    "SVIModelLoader": [400, 250],
    "CLIPLoader": [320, 110],
    "CLIPVisionLoader": [320, 60],
    "LoadImage": [320, 340],
    "SVILoraLoader": [320, 114],
    "SVIToyModels": [320, 150],
    "ModelPatchLoader": [320, 60],
    "AudioEncoderLoader": [320, 60],
    "LoadAudio": [320, 140],
}
GAP = 40  # between two boxes (title bar included)


def _stack(x: int, nodes: list[dict[str, Any]], y: int = 0) -> list[dict[str, Any]]:
    """Place ``nodes`` in one column at ``x`` from ``y`` down, each box (title bar + body)
    ``GAP`` below the previous one; sizes from the node spec, else ``SIZES``."""
    for node in nodes:
        if "size" not in node:
            node["size"] = list(SIZES[node["type"]])
        node["pos"] = [x, y]
        y += node["size"][1] + GAP + TITLE_HEIGHT
    return nodes


def _wan21(lora: str, prompt_stream: dict[str, Any], sampler: list[Any], note: str, lora_note: str):
    spec = [
        *_stack(0, [
            {"id": 1, "type": "SVIModelLoader",
             "widgets": [WAN21_MODEL, lora, 1.0, VAE, "none", "none", "default"]},
            {"id": 2, "type": "CLIPLoader", "widgets": [UMT5, "wan", "default"]},
            {"id": 3, "type": "CLIPVisionLoader", "widgets": [CLIP_VISION]},
            {"id": 4, "type": "LoadImage", "widgets": ["example.png", "image"]},
        ]),
        *_stack(440, [dict(prompt_stream, id=5, type="SVIPromptStream")],
                y=SIZES["SVIModelLoader"][1] + GAP + TITLE_HEIGHT),
        {"id": 6, "type": "SVIInfiniteSampler", "pos": [900, 0], "size": [420, 700],
         "widgets": sampler},
        {"id": 7, "type": "MarkdownNote", "pos": [-460, 0], "size": [420, 620], "title": "Model files",
         "widgets": [_note(False, [lora_note], note)]},
    ]  # fmt: skip
    links = [(1, 0, 6, 0), (1, 2, 6, 1), (5, 0, 6, 2), (4, 0, 6, 3), (3, 0, 6, 5), (2, 0, 5, 0)]
    return _build(spec, links)


def shot() -> dict[str, Any]:
    prompt = {
        "size": [420, 300],
        "widgets": [
            "A cinematic shot of the subject moving naturally, the camera slowly following, "
            "consistent lighting.",
            0,
            "",
        ],
    }
    note = (
        "SVI-Shot keeps one scene and subject for a long single shot: one prompt, every clip "
        "conditioned on the reference image. Official settings: 50 steps, CFG 5, shift 5."
    )
    sampler = _sampler_widgets("shot", 10, 5.0, 16.0, "svi_shot")
    return _wan21(LORA_SHOT, prompt, sampler, note, LORA_SHOT)


def film() -> dict[str, Any]:
    prompts = (
        "# One prompt per line; clip k uses prompt k (cycling).\n"
        "A woman walks along a beach at sunset, waves rolling in, warm light.\n\n"
        "She stops and looks at the sea, the wind moving her hair.\n\n"
        "She turns around and walks back towards the camera, smiling.\n\n"
        "The camera rises slowly to show the whole bay in golden light."
    )
    note = (
        "SVI-Film follows a story: one prompt per clip, 5 motion frames carried between clips. "
        "Set clips to the number of prompts (0 = min(10, prompts))."
    )
    sampler = _sampler_widgets("film", 4, 5.0, 16.0, "svi_film")
    prompt = {"size": [420, 360], "widgets": [prompts, 0, ""]}
    return _wan21(LORA_FILM, prompt, sampler, note, LORA_FILM + " (or svi-film.safetensors)")


def pro() -> dict[str, Any]:
    prompts = (
        "# SVI 2.0 Pro: clip k uses prompt k; the last prompt is held after the end.\n"
        "A red fox trots through a snowy forest, soft morning light.\n\n"
        "The fox pauses, sniffs the air, then leaps over a fallen log.\n\n"
        "The fox runs across a frozen clearing as snow begins to fall."
    )
    loader, clip, image = _stack(0, [
        {"id": 1, "type": "SVIModelLoader",
         "widgets": [HIGH_MODEL, LORA_PRO_HIGH, 1.0, VAE, LOW_MODEL, LORA_PRO_LOW, "default"]},
        {"id": 2, "type": "CLIPLoader", "widgets": [UMT5, "wan", "default"]},
        {"id": 4, "type": "LoadImage", "widgets": ["example.png", "image"]},
    ])  # fmt: skip
    speed_high, speed_low, stream = _stack(440, [
        {"id": 8, "type": "SVILoraLoader", "mode": 4, "title": "Speed LoRA high (0.5)",
         "widgets": [SPEED_HIGH, 0.5, ""]},
        {"id": 9, "type": "SVILoraLoader", "mode": 4, "title": "Speed LoRA low (1.0)",
         "widgets": [SPEED_LOW, 1.0, ""]},
        {"id": 5, "type": "SVIPromptStream", "size": [420, 320], "widgets": [prompts, 0, ""]},
    ])  # fmt: skip
    spec = [
        loader, speed_high, speed_low, clip, image, stream,
        {"id": 6, "type": "SVIInfiniteSampler", "pos": [900, 0], "size": [420, 700],
         "widgets": _sampler_widgets("v2_pro", 5, 5.0, 16.0, "svi_pro")},
        {"id": 7, "type": "MarkdownNote", "pos": [-480, 0], "size": [440, 660], "title": "Model files",
         "widgets": [_note(True, [LORA_PRO_HIGH, LORA_PRO_LOW,
                                  f"{SPEED_HIGH} (optional speed LoRA, {SPEED_SOURCE})",
                                  f"{SPEED_LOW} (optional speed LoRA, {SPEED_SOURCE})"],
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
    report."""
    widgets = ["tom", 20, 13, 64, 48, 10, 1.0, "euler", "simple", 5.0, 0, "fixed", 42, 16.0,
               "svi_toy_demo", "resume or new", 0.875, *POSE_DEFAULTS, *GUARD_DEFAULTS]  # fmt: skip
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
        *_stack(0, [
            {"id": 1, "type": "SVIToyModels", "widgets": [3]},
            {"id": 5, "type": "SVIPromptStream", "size": [380, 200], "widgets": ["toy world", 0, ""]},
        ]),
        {"id": 6, "type": "SVIInfiniteSampler", "pos": [420, 0], "size": [420, 700],
         "widgets": widgets},
        {"id": 8, "type": "SVIDriftReport", "pos": [880, 0], "size": [520, 520],
         "widgets": ["", 0, 5, False]},
        {"id": 7, "type": "MarkdownNote", "pos": [-440, 0], "size": [400, 420],
         "title": "Toy demo", "widgets": [note]},
    ]  # fmt: skip
    links = [(1, 0, 6, 0), (1, 1, 6, 1), (5, 0, 6, 2), (1, 4, 6, 3), (1, 3, 6, 5), (1, 2, 5, 0),
             (6, 0, 8, 0), (1, 4, 8, 1)]  # fmt: skip
    return _build(spec, links)


STORY_SCHEDULE = """# Directing the story clip by clip: clip 1 is the first (about 5 s per clip).
# Clips without a line use the Prompt Stream and the official settings.
clip 3: prompt="The fox reaches the shore of a frozen lake and stops.", keyframe=image 1
clip 4: anchor=image 2, prompt="Night in the pine forest: the fox curls up as snow falls."
clip 6: prompt="Dawn: the fox wakes up and looks into the camera.", keyframe=image 3
# With the two Speed LoRA nodes enabled (Ctrl+B), users make the first clip without the
# SVI LoRA (SVI issue 51) and can set the speed LoRA per clip:
# clip 1: lora.svi=0
# clip 2: lora.lightx2v.high=0.3
"""


def story() -> dict[str, Any]:
    """SVI 2.0 Pro directed by an SVI Schedule: two keyframes and a scene change."""
    prompts = (
        "# The Prompt Stream gives the clips without a schedule line their prompt.\n"
        "A red fox trots through a snowy forest at dawn, soft light.\n\n"
        "The fox follows a trail between the pines, snow glittering."
    )
    note_extra = (
        "**SVI Schedule** directs the video clip by clip (one line per clip or range; keys "
        "prompt, seed, cfg, lora.NAME, anchor, keyframe, keyframe_slot). Here: clip 3 ends on "
        "*Keyframe A*, clip 4 changes the scene (new anchor image, kept from then on), clip 6 "
        "ends on *Keyframe B*. Replace the three images with your own (they are stretched to "
        "the video size). A keyframe fills the clip's last latent frame (keyframe_slot=frame: "
        "only the last frame, as WanFirstLastFrameToVideo); the SVI LoRAs were trained without "
        "end frames, so a keyed clip may end on a few still frames: see the README section "
        "*Directing a long video*. Queue again with more lines for later clips to extend the "
        "story; lines for finished clips cannot change."
    )
    column = _stack(0, [
        {"id": 1, "type": "SVIModelLoader",
         "widgets": [HIGH_MODEL, LORA_PRO_HIGH, 1.0, VAE, LOW_MODEL, LORA_PRO_LOW, "default"]},
        {"id": 2, "type": "CLIPLoader", "widgets": [UMT5, "wan", "default"]},
        {"id": 4, "type": "LoadImage", "title": "Start image", "widgets": ["example.png", "image"]},
        {"id": 11, "type": "LoadImage", "title": "Keyframe A (end of clip 3)",
         "widgets": ["example.png", "image"]},
        {"id": 12, "type": "LoadImage", "title": "Scene 2 anchor (from clip 4)",
         "widgets": ["example.png", "image"]},
        {"id": 13, "type": "LoadImage", "title": "Keyframe B (end of clip 6)",
         "widgets": ["example.png", "image"]},
    ])  # fmt: skip
    middle = _stack(440, [
        {"id": 8, "type": "SVILoraLoader", "mode": 4, "title": "Speed LoRA high (lightx2v)",
         "widgets": [SPEED_HIGH, 0.5, "lightx2v"]},
        {"id": 9, "type": "SVILoraLoader", "mode": 4, "title": "Speed LoRA low (lightx2v)",
         "widgets": [SPEED_LOW, 1.0, "lightx2v"]},
        {"id": 5, "type": "SVIPromptStream", "size": [420, 260], "widgets": [prompts, 0, ""]},
        {"id": 10, "type": "SVISchedule", "size": [520, 320], "widgets": [STORY_SCHEDULE]},
    ])  # fmt: skip
    spec = [
        *column, *middle,
        {"id": 6, "type": "SVIInfiniteSampler", "pos": [1000, 0], "size": [420, 760],
         "widgets": _sampler_widgets("v2_pro", 6, 5.0, 16.0, "svi_story")},
        {"id": 7, "type": "MarkdownNote", "pos": [-480, 0], "size": [440, 720],
         "title": "Model files",
         "widgets": [_note(True, [LORA_PRO_HIGH, LORA_PRO_LOW,
                                  f"{SPEED_HIGH} (optional speed LoRA, {SPEED_SOURCE})",
                                  f"{SPEED_LOW} (optional speed LoRA, {SPEED_SOURCE})"], note_extra)]},
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
        (11, 0, 10, 0),
        (12, 0, 10, 1),
        (13, 0, 10, 2),
        (10, 0, 6, 7),
    ]
    return _build(spec, links)


def talk() -> dict[str, Any]:
    """SVI-Talk: one portrait + speech of any length -> a talking video (Wan2.1 + MultiTalk)."""
    widgets = ["talk", 0, 81, 0, 0, 50, 2.0, "euler", "simple", 5.0, 0, "fixed", 42, 25.0,
               "svi_talk", "resume or new", 0.875, *POSE_DEFAULTS, *GUARD_DEFAULTS]  # fmt: skip
    extra = (
        "**models/model_patches/**\n"
        f"- `{MULTITALK}` (MeiGen-AI/MeiGen-MultiTalk: the MultiTalk audio layers SVI-Talk was "
        "trained with; the InfiniteTalk patches have the same layout but other weights)\n\n"
        "**models/audio_encoders/**\n"
        f"- `{WAV2VEC}` (TencentGameMate/chinese-wav2vec2-base as one safetensors file: "
        "Kijai/wav2vec2_safetensors)\n\n"
        "**input/**: the speech (Load Audio: wav, mp3, flac, m4a) and the portrait.\n\n"
        "SVI-Talk (needs ComfyUI 0.11.0 or newer): clips = 0 makes enough clips to cover the "
        "speech (the official script always makes 50); every frame of every clip is kept; 25 "
        "fps; guidance text 2 (the sampler's cfg) and audio 5 (SVI Talk Audio); width/height 0 = "
        "from the portrait, at most 640 wide. The mp4 carries the speech."
    )
    spec = [
        *_stack(0, [
            {"id": 1, "type": "SVIModelLoader",
             "widgets": [WAN21_MODEL, LORA_TALK, 1.0, VAE, "none", "none", "default"]},
            {"id": 2, "type": "CLIPLoader", "widgets": [UMT5, "wan", "default"]},
            {"id": 3, "type": "CLIPVisionLoader", "widgets": [CLIP_VISION]},
            {"id": 4, "type": "LoadImage", "widgets": ["example.png", "image"]},
        ]),
        *_stack(440, [
            {"id": 5, "type": "SVIPromptStream", "size": [400, 200],
             "widgets": ["a person is talking", 0, ""]},
            {"id": 10, "type": "ModelPatchLoader", "widgets": [MULTITALK]},
            {"id": 11, "type": "AudioEncoderLoader", "widgets": [WAV2VEC]},
            {"id": 12, "type": "LoadAudio", "widgets": [SPEECH]},
        ]),
        *_stack(880, [{"id": 13, "type": "SVITalkAudio", "size": [340, 200],
                       "widgets": [5.0, "official"]}], y=560),
        {"id": 6, "type": "SVIInfiniteSampler", "pos": [1260, 0], "size": [420, 720],
         "widgets": widgets},
        {"id": 7, "type": "MarkdownNote", "pos": [-460, 0], "size": [420, 700], "title": "Model files",
         "widgets": [_note(False, [LORA_TALK], extra)]},
    ]  # fmt: skip
    links = [(1, 0, 6, 0), (1, 2, 6, 1), (5, 0, 6, 2), (4, 0, 6, 3), (3, 0, 6, 5), (2, 0, 5, 0),
             (10, 0, 13, 0), (12, 0, 13, 1), (11, 0, 13, 2), (13, 0, 6, 6)]  # fmt: skip
    return _build(spec, links)


def dance() -> dict[str, Any]:
    """SVI-Dance: one image of a person + a skeleton video -> that person dancing (Wan2.1 + the
    SVI-Dance LoRA and pose embedding)."""
    how = (
        f"`{LORA_DANCE}` (version-1.0) holds the SVI-Dance LoRA AND its pose embedding: load it "
        "with the SVI loaders (ComfyUI's Load LoRA drops the pose embedding).\n\n"
        "**input/** (Load Video and Load Image)\n"
        f"- `{POSE_VIDEO}`: the skeleton (pose) video the dancer follows, and `example.png`: the "
        "dancer (one person, full body; the video keeps the image's aspect, width up to 640).\n\n"
        "## Getting a pose video\n"
        "- The official example: `data/toy_test/dance/pose.mp4` in vita-epfl/Stable-Video-Infinity "
        "(drawn by the official scripts: set **pose_palette official**).\n"
        "- From any dance video, in ComfyUI: Load Video -> Get Video Components -> a pose node "
        "(DWPose Estimator of comfyui_controlnet_aux, or core SDPose: SDPose Keypoint Extractor -> "
        "SDPose Draw Keypoints), its image straight into **pose_video** (or saved with Save Video) "
        "with **pose_palette rgb** (ComfyUI pose nodes draw RGB colours).\n"
        "- Fitted to the dancer: **SVI Pose Align** draws the dance's POSE_KEYPOINT rescaled to the "
        "dancer's own keypoints (POSE_KEYPOINT of the dancer image), as the official "
        "run_align_pose.py does; connect it to pose_video with pose_palette rgb.\n\n"
        "One pose frame drives one video frame (the pose video's frame rate is ignored). Pose "
        "frames of another aspect are scaled and padded with black like the official code.\n\n"
        "## Settings\n"
        "Official: CFG 2 (the pose goes to both passes), 50 steps, shift 5, 25 fps, prompt "
        '"the person is dancing". width/height 0 = from the image (width up to 640). clips 0 '
        "= enough clips to play the pose video once (the official script makes 10 and loops the "
        "pose); pose_loop decides what happens past its end."
    )
    sampler = _sampler_widgets("dance", 0, 2.0, 25.0, "svi_dance", size=(0, 0),
                               pose=["official", "loop"])  # fmt: skip
    spec = [
        *_stack(0, [
            {"id": 1, "type": "SVIModelLoader",
             "widgets": [WAN21_MODEL, LORA_DANCE, 1.0, VAE, "none", "none", "default"]},
            {"id": 2, "type": "CLIPLoader", "widgets": [UMT5, "wan", "default"]},
            {"id": 3, "type": "CLIPVisionLoader", "widgets": [CLIP_VISION]},
            {"id": 4, "type": "LoadImage", "widgets": ["example.png", "image"]},
        ]),
        *_stack(440, [
            {"id": 5, "type": "SVIPromptStream", "size": [400, 200],
             "widgets": ["the person is dancing", 0, ""]},
            {"id": 8, "type": "LoadVideo", "size": [430, 340], "widgets": [POSE_VIDEO, "image"]},
            {"id": 9, "type": "GetVideoComponents", "size": [240, 100]},
        ]),
        {"id": 6, "type": "SVIInfiniteSampler", "pos": [900, 0], "size": [420, 760],
         "widgets": sampler},
        {"id": 7, "type": "MarkdownNote", "pos": [-480, 0], "size": [440, 900], "title": "Model files",
         "widgets": [_note(False, [LORA_DANCE], how)]},
    ]  # fmt: skip
    links = [(1, 0, 6, 0), (1, 2, 6, 1), (5, 0, 6, 2), (4, 0, 6, 3), (3, 0, 6, 5), (2, 0, 5, 0),
             (8, 0, 9, 0), (9, 0, 6, 8)]  # fmt: skip
    return _build(spec, links)


BUILDERS = {
    "SVI-Shot_Wan2.1": shot,
    "SVI-Film_Wan2.1_prompt_stream": film,
    "SVI-2.0-Pro_Wan2.2": pro,
    "SVI-Toy_CPU_demo": toy,
    "SVI-Talk_Wan2.1": talk,
    "SVI-Story_keyframes_schedule": story,
    "SVI-Dance_Wan2.1": dance,
}


def write_all(folder: Path = WORKFLOWS, names: list[str] | None = None) -> list[Path]:
    """Write the workflows (all, or those in ``names``) into ``folder``."""
    folder.mkdir(exist_ok=True)
    out = []
    for name, build in BUILDERS.items():
        if names and name not in names:
            continue
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
    # python tests/tier2/workflow_tools.py [FOLDER [NAME ...]]
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else WORKFLOWS
    for p in write_all(folder, sys.argv[2:] or None):
        print(p)
