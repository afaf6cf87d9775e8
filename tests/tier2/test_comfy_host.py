"""Tier 2: the pack inside a real ComfyUI server with tiny models (DESIGN.md §8).

Runs when ``COMFYUI_PATH`` points at a ComfyUI checkout (``COMFYUI_PYTHON`` at its venv's
python); skips with the reason otherwise. Every shipped workflow runs through its API twin
(Load CLIP / Load CLIP Vision replaced by the test-only nodes, sizes shrunk); the mp4, the
progress events, cancel + resume over HTTP, the LoRA key fix and bad-input errors are checked.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from pathlib import Path

import pytest

from .comfy_host import ComfyHost, comfy_paths, error_message
from .workflow_tools import BUILDERS, WORKFLOWS, ui_to_api

pytestmark = [pytest.mark.tier2, pytest.mark.slow]

PATHS = comfy_paths()
if PATHS is None:
    pytest.skip(
        "tier 2 needs a ComfyUI checkout: set COMFYUI_PATH (and COMFYUI_PYTHON to its venv's "
        "python, with this pack's requirements.txt installed)",
        allow_module_level=True,
    )

SVI_NODES = [
    "SVIModelLoader",
    "SVILoraLoader",
    "SVIPromptStream",
    "SVISchedule",
    "SVIInfiniteSampler",
    "SVIClipConditioning",
    "SVIDriftReport",
    "SVIToyModels",
    "SVITalkAudio",
    "SVIPoseAlign",
]
FRAMES, WIDTH, HEIGHT, STEPS = 9, 64, 64, 2


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    root, python = PATHS
    h = ComfyHost(root, python, tmp_path_factory.mktemp("comfy_base"))
    h.prepare()
    h.start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def object_info(host):
    return host.get("/object_info")


def _video_info(path: Path) -> tuple[int, float, tuple[int, int]]:
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    n = sum(1 for _ in gen)
    return n, float(meta["fps"]), tuple(meta["size"])


def _twin(name: str, object_info: dict, **sampler: object) -> dict:
    """API twin of a shipped workflow with test models and small sizes."""
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
    api = ui_to_api(ui, object_info)
    for node in api.values():
        if node["class_type"] == "CLIPLoader":
            node["class_type"] = "SVITestCLIPLoader"
            node["inputs"] = {"clip_name": "fake", "type": "wan"}
        elif node["class_type"] == "CLIPVisionLoader":
            node["class_type"] = "SVITestCLIPVisionLoader"
            node["inputs"] = {"clip_name": "fake"}
        elif node["class_type"] == "SVIInfiniteSampler":
            node["inputs"].update(
                clips=2, frames=FRAMES, width=WIDTH, height=HEIGHT, steps=STEPS, cfg=2.0,
                run_name=f"t_{uuid.uuid4().hex[:8]}", on_existing_run="new",
            )  # fmt: skip
            node["inputs"].update(sampler)
    return api


def _sampler_id(api: dict) -> str:
    return next(k for k, v in api.items() if v["class_type"] == "SVIInfiniteSampler")


def _video_path(host: ComfyHost, entry: dict, node_id: str) -> Path:
    item = entry["outputs"][node_id]["images"][0]
    return host.base / "output" / item["subfolder"] / item["filename"]


# ----- the pack loads ------------------------------------------------------------------------


def test_nodes_registered_with_tooltips_and_category(object_info):
    for name in SVI_NODES:
        assert name in object_info, f"{name} missing from /object_info"
        info = object_info[name]
        assert info["category"].startswith("SVI/")
        for section in ("required", "optional"):
            for inp, spec in info["input"].get(section, {}).items():
                opts = spec[1] if len(spec) > 1 else {}
                assert opts.get("tooltip"), f"{name}.{inp} has no tooltip"
        tips = info.get("output_tooltips") or []
        assert len(tips) == len(info["output"]) and all(tips), f"{name} output tooltips"


def test_sampler_offers_comfy_sampler_and_scheduler_lists(object_info):
    req = object_info["SVIInfiniteSampler"]["input"]["required"]
    ks = object_info["KSampler"]["input"]["required"]

    def options(spec):
        return spec[0] if isinstance(spec[0], list) else spec[1]["options"]

    assert options(req["sampler_name"]) == options(ks["sampler_name"])
    assert options(req["scheduler"]) == options(ks["scheduler"])


def test_workflows_listed_as_templates(host):
    templates = host.get("/api/workflow_templates")
    names = set(templates.get("stable-video-infinity", []))
    assert names == set(BUILDERS), templates


# ----- every workflow runs -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,mode,overlap",
    [
        ("SVI-Shot_Wan2.1", None, 1),
        ("SVI-Film_Wan2.1_prompt_stream", None, 5),
        ("SVI-2.0-Pro_Wan2.2", None, 5),
        ("SVI-Film_Wan2.1_prompt_stream", "v2", 5),  # the other presets, same graphs
        ("SVI-2.0-Pro_Wan2.2", "v2_w22", 1),
    ],
)
def test_workflow_runs_and_streams_mp4(host, object_info, name, mode, overlap):
    api = _twin(name, object_info, **({"mode": mode} if mode else {}))
    sid = _sampler_id(api)
    t0 = len(host.ws.messages)
    pid = host.queue(api)
    entry = host.wait(pid)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    path = _video_path(host, entry, sid)
    n, fps, size = _video_info(path)
    # two clips of F frames stitched with `overlap` frames re-generated: 2F - overlap
    assert n == 2 * FRAMES - overlap
    assert fps == pytest.approx(16.0)
    assert size == (WIDTH, HEIGHT)
    progress = [
        m["data"] for m in host.ws.messages[t0:]
        if m.get("type") == "progress" and m["data"].get("node") == sid
    ]  # fmt: skip
    assert progress, "no progress events from the sampler"
    assert {p["max"] for p in progress} == {2 * STEPS}, "one bar over clips x steps"
    assert progress[-1]["value"] == 2 * STEPS


# ----- cancel and resume ---------------------------------------------------------------------


def test_interrupt_then_resume_same_run(host, object_info):
    run = f"resume_{uuid.uuid4().hex[:6]}"
    api = _twin("SVI-Film_Wan2.1_prompt_stream", object_info, clips=3, steps=3, run_name=run)
    api[_sampler_id(api)]["inputs"]["on_existing_run"] = "resume"
    sid = _sampler_id(api)
    t0 = len(host.ws.messages)
    pid = host.queue(api)
    deadline = time.time() + 600
    while time.time() < deadline:  # interrupt during clip 1 (after clip 0 is committed)
        vals = [
            m["data"]["value"] for m in host.ws.messages[t0:]
            if m.get("type") == "progress" and m["data"].get("node") == sid
        ]  # fmt: skip
        if vals and vals[-1] >= 4:
            break
        time.sleep(0.2)
    host.post("/interrupt")
    entry = host.wait(pid)
    assert entry["status"]["status_str"] == "error"
    assert error_message(entry) == "interrupted"
    manifest = json.loads((host.base / "output" / "svi" / run / "manifest.json").read_text())
    done = len(manifest["clips"])
    assert 1 <= done < 3
    # the partial video of the finished clips was written on cancel
    partial = host.base / "output" / "svi" / run / f"{run}.mp4"
    assert _video_info(partial)[0] == done * FRAMES - (done - 1) * 5

    t1 = len(host.ws.messages)
    entry = host.run(api)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    maxes = {
        m["data"]["max"] for m in host.ws.messages[t1:]
        if m.get("type") == "progress" and m["data"].get("node") == sid
    }  # fmt: skip
    assert maxes == {(3 - done) * 3}, "resume generates only the missing clips"
    n, _, _ = _video_info(_video_path(host, entry, sid))
    assert n == 3 * FRAMES - 2 * 5
    manifest = json.loads((host.base / "output" / "svi" / run / "manifest.json").read_text())
    assert [c["index"] for c in manifest["clips"]] == [0, 1, 2]


def test_prompt_stream_repeat_reaches_the_loop(host, object_info):
    """repeat = 2 on the Prompt Stream: clips 0 and 1 both use prompt 0, clip 2 prompt 1."""
    run = f"repeat_{uuid.uuid4().hex[:6]}"
    api = _twin("SVI-Film_Wan2.1_prompt_stream", object_info, clips=3, steps=1, run_name=run)
    stream = next(v for v in api.values() if v["class_type"] == "SVIPromptStream")
    stream["inputs"].update(prompts="a cat walks\n\na dog runs", repeat=2)
    entry = host.run(api)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    manifest = json.loads((host.base / "output" / "svi" / run / "manifest.json").read_text())
    assert [c["prompt_index"] for c in manifest["clips"]] == [0, 0, 1]


# ----- the LoRA key fix ----------------------------------------------------------------------


def _clip0_latent(host: ComfyHost, entry: dict, sid: str):
    from safetensors.torch import load_file

    item = entry["outputs"][sid]["images"][0]
    return load_file(
        str(host.base / "output" / item["subfolder"] / "clips" / "clip_00000.safetensors")
    )["latent"]


def test_bare_key_svi_lora_changes_output_where_stock_loader_does_not(host, object_info):
    base = _twin("SVI-Shot_Wan2.1", object_info, clips=1, frames=5)
    sid = _sampler_id(base)
    loader = next(k for k, v in base.items() if v["class_type"] == "SVIModelLoader")

    def run(api):
        entry = host.run(api)
        assert entry["status"]["status_str"] == "success", error_message(entry)
        return _clip0_latent(host, entry, sid)

    no_lora = copy.deepcopy(base)
    no_lora[loader]["inputs"]["lora_name"] = "none"
    ours = copy.deepcopy(base)  # SVI Model Loader with the bare-key svi-shot file
    stock = copy.deepcopy(no_lora)  # stock LoraLoaderModelOnly with the same file
    stock["90"] = {
        "class_type": "LoraLoaderModelOnly",
        "inputs": {
            "model": [loader, 0],
            "lora_name": "svi-shot.safetensors",
            "strength_model": 1.0,
        },
    }
    stock[sid]["inputs"]["model"] = ["90", 0]
    # ComfyUI's own loaders (Load Diffusion Model, Load VAE) + SVI LoRA Loader
    native = copy.deepcopy(no_lora)
    native["91"] = {
        "class_type": "UNETLoader",
        "inputs": {"unet_name": "wan2.1_i2v_480p_14B_fp16.safetensors", "weight_dtype": "default"},
    }
    native["92"] = {
        "class_type": "SVILoraLoader",
        "inputs": {"model": ["91", 0], "lora_name": "svi-shot.safetensors", "strength": 1.0},
    }
    native["93"] = {"class_type": "VAELoader", "inputs": {"vae_name": "wan_2.1_vae.safetensors"}}
    native[sid]["inputs"]["model"] = ["92", 0]
    native[sid]["inputs"]["vae"] = ["93", 0]
    lat_none, lat_ours, lat_stock = run(no_lora), run(ours), run(stock)
    assert (lat_ours - lat_none).abs().max() > 1e-3, "the SVI LoRA did not change the output"
    assert (lat_stock - lat_none).abs().max() == 0, "stock ComfyUI applied bare keys after all?"
    assert (run(native) - lat_ours).abs().max() == 0, "native loaders + SVI LoRA Loader differ"


# ----- bad input fails before sampling -------------------------------------------------------


def _fails_before_sampling(host, api, sid, expect: str) -> None:
    t0 = len(host.ws.messages)
    status, body = host.post("/prompt", {"prompt": api, "client_id": host.client_id})
    if status != 200:  # refused by ComfyUI's own validation
        assert expect.lower() in json.dumps(body).lower(), body
        return
    entry = host.wait(body["prompt_id"])
    msg = error_message(entry) or ""
    assert entry["status"]["status_str"] == "error"
    assert expect.lower() in msg.lower(), msg
    steps = [
        m for m in host.ws.messages[t0:]
        if m.get("type") == "progress" and m["data"].get("node") == sid and m["data"]["value"] > 0
    ]  # fmt: skip
    assert not steps, "sampling started before the error"
    run = api[sid]["inputs"]["run_name"]
    assert not (host.base / "output" / "svi" / run).exists()


def test_lora_for_another_model_is_refused(host, object_info):
    api = _twin("SVI-Shot_Wan2.1", object_info)
    loader = next(k for k, v in api.items() if v["class_type"] == "SVIModelLoader")
    api[loader]["inputs"]["lora_name"] = "lora_for_another_model.safetensors"
    _fails_before_sampling(host, api, _sampler_id(api), "lora_for_another_model.safetensors")


def test_wan21_mode_without_clip_vision_is_refused(host, object_info):
    api = _twin("SVI-Film_Wan2.1_prompt_stream", object_info)
    sid = _sampler_id(api)
    del api[sid]["inputs"]["clip_vision"]
    _fails_before_sampling(host, api, sid, "needs CLIP vision")


def test_wan22_mode_with_one_model_is_refused(host, object_info):
    api = _twin("SVI-2.0-Pro_Wan2.2", object_info)
    sid = _sampler_id(api)
    del api[sid]["inputs"]["low_noise_model"]
    _fails_before_sampling(host, api, sid, "needs both experts")


@pytest.mark.parametrize(
    "change,expect", [({"frames": 10}, "4k + 1"), ({"width": 72}, "multiples of 16")]
)
def test_bad_size_or_frames_is_refused(host, object_info, change, expect):
    api = _twin("SVI-Shot_Wan2.1", object_info, **change)
    _fails_before_sampling(host, api, _sampler_id(api), expect)


# ----- SVI Clip Conditioning in a hand-built KSampler graph ---------------------------------


def test_clip_conditioning_in_ksampler_graph_matches_the_sampler(host):
    """Clip 0 of film built by hand (SVI Clip Conditioning -> ModelSamplingSD3 -> KSampler)
    equals clip 0 of the Infinite Sampler: same conditioning code, same noise, same sampler."""
    from safetensors.torch import load_file

    from svi_core.latents import normalise
    from svi_core.modes import NEGATIVE_PROMPT_EN

    prompt, prefix = "a cat walks along a wall", f"manual_{uuid.uuid4().hex[:6]}"
    common = {
        "1": {"class_type": "SVIModelLoader", "inputs": {
            "model_name": "wan2.1_i2v_480p_14B_fp16.safetensors",
            "lora_name": "svi-film-opt-10212025.safetensors", "lora_strength": 1.0,
            "vae_name": "wan_2.1_vae.safetensors", "low_noise_model_name": "none",
            "low_noise_lora_name": "none", "weight_dtype": "default"}},
        "2": {"class_type": "SVITestCLIPLoader", "inputs": {"clip_name": "fake", "type": "wan"}},
        "3": {"class_type": "SVITestCLIPVisionLoader", "inputs": {"clip_name": "fake"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
    }  # fmt: skip
    manual = dict(common)
    manual.update({
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": prompt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": NEGATIVE_PROMPT_EN}},
        "7": {"class_type": "SVIClipConditioning", "inputs": {
            "positive": ["5", 0], "negative": ["6", 0], "vae": ["1", 2], "reference_image": ["4", 0],
            "mode": "film", "width": WIDTH, "height": HEIGHT, "frames": FRAMES,
            "clip_vision": ["3", 0]}},
        "8": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 5.0}},
        "9": {"class_type": "KSampler", "inputs": {
            "model": ["8", 0], "seed": 0, "steps": STEPS, "cfg": 2.0, "sampler_name": "euler",
            "scheduler": "simple", "positive": ["7", 0], "negative": ["7", 1],
            "latent_image": ["7", 2], "denoise": 1.0}},
        "10": {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": prefix}},
    })  # fmt: skip
    loop = dict(common)
    loop.update({
        "5": {"class_type": "SVIPromptStream", "inputs": {
            "clip": ["2", 0], "prompts": prompt, "repeat": 0, "negative_prompt": ""}},
        "6": {"class_type": "SVIInfiniteSampler", "inputs": {
            "model": ["1", 0], "vae": ["1", 2], "prompt_stream": ["5", 0],
            "reference_image": ["4", 0], "mode": "film", "clips": 1, "frames": FRAMES,
            "width": WIDTH, "height": HEIGHT, "steps": STEPS, "cfg": 2.0,
            "sampler_name": "euler", "scheduler": "simple", "shift": 5.0, "seed": 0,
            "seed_stride": 42, "fps": 16.0, "run_name": prefix, "on_existing_run": "new",
            "clip_vision": ["3", 0]}},
    })  # fmt: skip
    entry = host.run(manual)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    saved = entry["outputs"]["10"]["latents"][0]
    raw = load_file(str(host.base / "output" / saved["subfolder"] / saved["filename"]))
    entry = host.run(loop)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    ours = _clip0_latent(host, entry, "6")
    diff = (normalise(raw["latent_tensor"].float()) - ours).abs().max().item()
    assert diff < 1e-4, diff


def test_lora_on_fp8_weights_warns(host, object_info):
    api = _twin("SVI-Shot_Wan2.1", object_info, frames=10)  # the sampler then stops early
    loader = next(k for k, v in api.items() if v["class_type"] == "SVIModelLoader")
    api[loader]["inputs"]["weight_dtype"] = "fp8_e4m3fn"
    start = host.log_path.stat().st_size
    entry = host.run(api)
    assert entry["status"]["status_str"] == "error"
    log = host.log_path.read_text(errors="replace")[start:]
    assert "fp8 rounding loses most of an SVI LoRA" in log, log[-3000:]


# ----- the shipped workflows in the real frontend --------------------------------------------


def test_workflows_load_in_the_frontend(host, object_info):
    """Each workflow loads in ComfyUI's own web frontend (headless Chromium): the frontend's
    graphToPrompt equals ui_to_api (so the API twins above test what a user would run), no node
    is drawn larger than its stored size, no two drawn boxes (title bar included) overlap, and
    the missing-models dialog names every file the server lacks (this test server has no text
    encoder or CLIP-vision files) from the loaders' ``properties.models``."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium")
    chromium = next(
        (p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None
    )
    driver_bin = Path("/usr/bin/chromedriver")
    if chromium is None or not driver_bin.exists():
        pytest.skip(
            "needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver)"
        )
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    host.post("/settings/Comfy.TutorialCompleted", True)  # no template browser on first start
    workflows = {
        name: json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
        for name in BUILDERS
    }
    folders = {
        m["directory"]
        for ui in workflows.values()
        for n in ui["nodes"]
        for m in n.get("properties", {}).get("models", [])
    }
    present: dict[str, set[str]] = {}
    for folder in sorted(folders):  # every folder a workflow names (model_patches, ...)
        try:
            present[folder] = set(host.get(f"/models/{folder}"))
        except Exception:  # a folder this ComfyUI does not know: nothing is present there
            present[folder] = set()
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.binary_location = chromium
    drv = webdriver.Chrome(service=Service(str(driver_bin)), options=opts)
    try:
        drv.set_script_timeout(120)
        drv.get(host.url)
        deadline = time.time() + 120
        while not drv.execute_script("return !!(window.app && window.app.graph)"):
            assert time.time() < deadline, "the frontend did not start"
            time.sleep(0.5)
        for name, ui in workflows.items():
            absent = {n["type"] for n in ui["nodes"]} - set(object_info) - FRONTEND_NODES
            if absent:  # e.g. the Talk workflow on 0.3.64 (no core audio-encoder nodes)
                print(f"{name}: not loadable on this ComfyUI (no {', '.join(sorted(absent))})")
                continue
            res = drv.execute_async_script(
                """const [wf, done] = arguments;
                (async () => {
                  try {
                    await window.app.loadGraphData(wf);
                    await new Promise(r => setTimeout(r, 1000));
                    const p = await window.app.graphToPrompt();
                    const nodes = window.app.graph._nodes.map(n => ({
                      id: n.id, type: n.type, size: Array.from(n.size), min: Array.from(n.computeSize()),
                      box: Array.from(n.getBounding())}));
                    done({n: window.app.graph._nodes.length, output: p.output, nodes});
                  } catch (e) { done({error: String(e)}); }
                })();""",
                ui,
            )
            assert "error" not in res, res
            assert res["n"] == len(ui["nodes"])
            theirs = {
                k: {kk: vv for kk, vv in v.items() if kk != "_meta"}
                for k, v in res["output"].items()
            }
            for v in theirs.values():  # widgets only the frontend has (Load Video's preview)
                for key in FRONTEND_ONLY_INPUTS:
                    v.get("inputs", {}).pop(key, None)
            assert theirs == ui_to_api(ui, object_info), name
            for node in res["nodes"]:
                if node["type"] in PREVIEW_SIZED:
                    continue
                assert all(m <= s + 0.5 for m, s in zip(node["min"], node["size"], strict=True)), (
                    name,
                    node,
                )
            boxes = [(n["id"], n["box"]) for n in res["nodes"]]  # [x, y, w, h], title included
            for i, (a, (ax, ay, aw, ah)) in enumerate(boxes):
                for b, (bx, by, bw, bh) in boxes[i + 1 :]:
                    apart = ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay
                    assert apart, f"{name}: nodes {a} and {b} overlap in the frontend"
            # 0.3.64's frontend opens a Missing Models dialog ("text_encoders / umt5...",
            # Download); newer ones list them under Errors -> View details ("umt5...",
            # "text_encoders", Download).
            details = [
                b for b in drv.find_elements(By.TAG_NAME, "button") if "View details" in b.text
            ]
            if details:
                details[0].click()
                time.sleep(1.0)
            text = drv.execute_script("return document.body.innerText")
            declared = [m for n in ui["nodes"] for m in n["properties"].get("models", [])]
            missing = [m for m in declared if m["name"] not in present[m["directory"]]]
            if name != "SVI-Toy_CPU_demo":
                assert missing, f"{name}: the test server has every file, nothing to check"
            for m in missing:
                offered = (
                    f"{m['directory']} / {m['name']}" in text
                    or f"{m['name']}\n{m['directory']}\nDownload" in text
                )
                assert offered and "Download" in text, f"{name}: {m['name']} is not offered"
            ActionChains(drv).send_keys(Keys.ESCAPE).perform()  # close the dialog, if any
            time.sleep(0.5)
    finally:
        drv.quit()


FRONTEND_ONLY_INPUTS = ("video-preview",)
FRONTEND_NODES = {"MarkdownNote", "Note"}
"""Node types only the frontend knows (no server class)."""
PREVIEW_SIZED = ("LoadVideo",)
"""Nodes whose computeSize() follows their media preview (it grows with the node's own width),
so it is no minimum; the overlap check below still covers them."""
"""Widget values the frontend puts into an API prompt that the server ignores."""


def test_wan22_dit_sees_bfloat16_timesteps(host):
    """Wan2.2 modes: the DiT gets t rounded to bfloat16 (official svi_wan22), sigmas stay exact."""
    import subprocess

    import torch

    out = subprocess.run(
        [host.python, str(Path(__file__).parent / "check_bf16_timestep.py"), str(host.root),
         str(Path(__file__).parents[2]),
         str(host.base / "models" / "diffusion_models" / "wan2.2_i2v_high_noise_14B_fp16.safetensors")],
        capture_output=True, text=True, check=True, cwd=str(host.root),
    )  # fmt: skip
    rows = {
        r["dtype"]: r["timesteps"] for r in map(json.loads, out.stdout.strip().splitlines()[-2:])
    }
    exact, rounded = rows["float32"], rows["bfloat16"]
    assert len(exact) == len(rounded) == 4
    # shift 5, 4 steps (the official schedule): t = 1000 * 5 s / (1 + 4 s), s = 1, .75, .5, .25
    assert exact == pytest.approx([1000.0, 937.5, 2500 / 3, 625.0], abs=1e-3)
    assert rounded == [float(torch.tensor(t).to(torch.bfloat16)) for t in exact]
    assert rounded[1] != exact[1]


def test_prompt_stream_output_is_immutable(host):
    """The prompt node's output (cached by ComfyUI and shared by later runs) is frozen and is
    not written to when the sampler asks it for a mode's negative prompt: a given negative is
    encoded once in the node, the mode's official one on each request (English for Wan2.1,
    Chinese for Wan2.2)."""
    import subprocess

    out = subprocess.run(
        [host.python, str(Path(__file__).parent / "check_prompt_stream.py"), str(host.root),
         str(Path(__file__).parents[2])],
        capture_output=True, text=True, check=True, cwd=str(host.root),
    )  # fmt: skip
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    for case in seen.values():
        assert case["frozen"] and case["unchanged"]
    empty, given = seen["empty"], seen["blurry, static"]
    assert empty["encoded_at_execute"] == ["a cat", "a dog"]
    official = empty["official"]
    assert official["film"] != official["v2_pro"]
    assert empty["encoded_later"] == [official["film"], official["v2_pro"], official["film"]]
    for mode, calls in empty["negatives"].items():
        assert all(c == [official[mode], f"cond:{official[mode]}"] for c in calls)
    assert given["encoded_at_execute"] == ["a cat", "a dog", "blurry, static"]
    assert given["encoded_later"] == []
    for calls in given["negatives"].values():
        assert all(c == ["blurry, static", "cond:blurry, static"] for c in calls)
