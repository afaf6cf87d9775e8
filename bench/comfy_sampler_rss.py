"""Memory of the SVI Infinite Sampler vs a native chain of N stock Wan I2V clips, in ComfyUI.

Each graph runs in a fresh ComfyUI server (headless, ``--cpu``, 127.0.0.1) with the tiny random
Wan models of ``tests/tier2/make_models.py`` (a full-size Wan2.1 VAE) and the test-only text /
CLIP-vision stand-ins; the graph is queued through the HTTP API and the server process's memory
is read from ``/proc``: RSS idle before the run, the peak during the run (``VmHWM``, reset when
the run is queued) and RSS after the run. Both graphs use the same models, width, height,
frames per clip, steps, CFG, sampler, seeds and number of clips N:

- ``svi``: Load Diffusion Model + Load VAE -> SVI Infinite Sampler (mode ``tom``: the last frame
  of a clip starts the next one), the video streamed to one mp4;
- ``native``: per clip CLIP Vision Encode + WanImageToVideo (start image = the last frame of
  the previous clip) + ModelSamplingSD3 + KSampler + VAE Decode, the clips' frames joined with
  Image Batch (first frame of later clips dropped) -> Create Video -> Save Video.

``--toy`` instead times the shipped toy CPU demo workflow (workflows/SVI-Toy_CPU_demo.json,
its own settings) through the API.

    COMFYUI_PATH=... COMFYUI_PYTHON=... python bench/comfy_sampler_rss.py \\
        --clips 4 --width 256 --height 160 --frames 17 --steps 2
    COMFYUI_PATH=... COMFYUI_PYTHON=... python bench/comfy_sampler_rss.py --toy

Linux only (``/proc``). Not a test: it prints measurements (ratios last), it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from tier2.comfy_host import ComfyHost, comfy_paths, error_message  # noqa: E402
from tier2.workflow_tools import WORKFLOWS, ui_to_api  # noqa: E402

DIT = "wan2.1_i2v_480p_14B_fp16.safetensors"
VAE = "wan_2.1_vae.safetensors"
PROMPT = "a red car drives along a coastal road"
NEGATIVE = "blurry, static"
SHIFT, SEED, STRIDE = 5.0, 0, 42


def _proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/PID/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class MemoryWatch:
    """RSS of one process: ``VmHWM`` reset at start (``/proc/PID/clear_refs``), and a 0.1 s
    sampler of ``VmRSS`` as a cross-check where the reset is not allowed."""

    def __init__(self, pid: int) -> None:
        self.pid, self.samples, self._stop = pid, [], threading.Event()
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(_proc_kib(self.pid, "VmRSS"))
            time.sleep(0.1)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self.thread.join()
        sampled = max(self.samples) / 1024
        peak = _proc_kib(self.pid, "VmHWM") / 1024 if self.hwm_reset else sampled
        return {"peak_mb": peak, "sampled_peak_mb": sampled}


def _fill(object_info: dict, node: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` plus the default (or first option) of every other required widget of ``node``."""
    out = dict(inputs)
    _fill_section(object_info[node]["input"], out, "")
    return out


def _fill_section(section: dict, out: dict[str, Any], prefix: str) -> None:
    """Fill the required widgets of one input section; a dynamic combo (V3 nodes of newer
    ComfyUI, e.g. Save Video's ``format``) takes its first option, whose own inputs are named
    ``<combo>.<input>`` in an API prompt."""
    for name, spec in section.get("required", {}).items():
        key = prefix + name
        if key in out:
            continue
        kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
        if isinstance(kind, list):
            out[key] = opts.get("default", kind[0])
        elif kind == "COMBO":
            out[key] = opts.get("default", opts.get("options", [None])[0])
        elif kind == "COMFY_DYNAMICCOMBO_V3" and opts.get("options"):
            option = opts["options"][0]
            out[key] = option["key"]
            _fill_section(option.get("inputs", {}), out, key + ".")
        elif "default" in opts:
            out[key] = opts["default"]


def _common(api: dict[str, Any], info: dict, width: int, height: int) -> None:
    """Loaders shared by both graphs (ids 1-5)."""
    api["1"] = {"class_type": "UNETLoader", "inputs": _fill(info, "UNETLoader", {"unet_name": DIT})}
    api["2"] = {"class_type": "VAELoader", "inputs": {"vae_name": VAE}}
    api["3"] = {"class_type": "SVITestCLIPLoader", "inputs": {"clip_name": "fake", "type": "wan"}}
    api["4"] = {"class_type": "SVITestCLIPVisionLoader", "inputs": {"clip_name": "fake"}}
    api["5"] = {"class_type": "LoadImage", "inputs": {"image": "example.png"}}
    # the start image at the video size, so both graphs condition on the same pixels
    api["6"] = {
        "class_type": "ImageScale",
        "inputs": {"image": ["5", 0], "upscale_method": "bilinear", "width": width,
                   "height": height, "crop": "center"},
    }  # fmt: skip


def svi_graph(info: dict, a: argparse.Namespace) -> dict[str, Any]:
    api: dict[str, Any] = {}
    _common(api, info, a.width, a.height)
    api["10"] = {
        "class_type": "SVIPromptStream",
        "inputs": {"clip": ["3", 0], "prompts": PROMPT, "repeat": 0, "negative_prompt": NEGATIVE},
    }
    api["11"] = {
        "class_type": "SVIInfiniteSampler",
        "inputs": _fill(info, "SVIInfiniteSampler", {
            "model": ["1", 0], "vae": ["2", 0], "prompt_stream": ["10", 0],
            "reference_image": ["6", 0], "clip_vision": ["4", 0], "mode": "tom",
            "clips": a.clips, "frames": a.frames, "width": a.width, "height": a.height,
            "steps": a.steps, "cfg": a.cfg, "sampler_name": "euler", "scheduler": "simple",
            "shift": SHIFT, "seed": SEED, "seed_stride": STRIDE, "fps": 16.0,
            "run_name": f"rss_{uuid.uuid4().hex[:8]}", "on_existing_run": "new",
        }),
    }  # fmt: skip
    return api


def native_graph(info: dict, a: argparse.Namespace) -> dict[str, Any]:
    """N stock I2V clips chained on the last frame; clip k uses seed SEED + k * STRIDE."""
    api: dict[str, Any] = {}
    _common(api, info, a.width, a.height)
    api["7"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["3", 0], "text": PROMPT}}
    api["8"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["3", 0], "text": NEGATIVE}}
    api["9"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": SHIFT}}
    start, joined = ["6", 0], None
    for k in range(a.clips):
        n = 100 + 10 * k
        ids = {name: str(n + i) for i, name in enumerate(("cv", "i2v", "ks", "dec", "last", "tail", "cat"))}  # fmt: skip
        api[ids["cv"]] = {
            "class_type": "CLIPVisionEncode",
            "inputs": _fill(info, "CLIPVisionEncode", {"clip_vision": ["4", 0], "image": start,
                                                       "crop": "none"}),
        }  # fmt: skip
        api[ids["i2v"]] = {
            "class_type": "WanImageToVideo",
            "inputs": {"positive": ["7", 0], "negative": ["8", 0], "vae": ["2", 0],
                       "width": a.width, "height": a.height, "length": a.frames, "batch_size": 1,
                       "clip_vision_output": [ids["cv"], 0], "start_image": start},
        }  # fmt: skip
        api[ids["ks"]] = {
            "class_type": "KSampler",
            "inputs": {"model": ["9", 0], "seed": SEED + k * STRIDE, "steps": a.steps,
                       "cfg": a.cfg, "sampler_name": "euler", "scheduler": "simple",
                       "positive": [ids["i2v"], 0], "negative": [ids["i2v"], 1],
                       "latent_image": [ids["i2v"], 2], "denoise": 1.0},
        }  # fmt: skip
        api[ids["dec"]] = {
            "class_type": "VAEDecode", "inputs": {"samples": [ids["ks"], 0], "vae": ["2", 0]}
        }  # fmt: skip
        api[ids["last"]] = {
            "class_type": "ImageFromBatch",
            "inputs": {"image": [ids["dec"], 0], "batch_index": a.frames - 1, "length": 1},
        }
        start = [ids["last"], 0]
        if joined is None:
            joined = [ids["dec"], 0]
            continue
        api[ids["tail"]] = {
            "class_type": "ImageFromBatch",
            "inputs": {"image": [ids["dec"], 0], "batch_index": 1, "length": a.frames - 1},
        }
        api[ids["cat"]] = {
            "class_type": "ImageBatch", "inputs": {"image1": joined, "image2": [ids["tail"], 0]}
        }  # fmt: skip
        joined = [ids["cat"], 0]
    api["90"] = {"class_type": "CreateVideo", "inputs": _fill(info, "CreateVideo", {"images": joined, "fps": 16.0})}  # fmt: skip
    api["91"] = {
        "class_type": "SaveVideo",
        "inputs": _fill(info, "SaveVideo", {"video": ["90", 0], "filename_prefix": "native_chain"}),
    }
    return api


def measure(root: Path, python: str, models: Path, build, a: argparse.Namespace) -> dict:
    """One fresh server: idle RSS, then the graph's peak and after-run RSS and wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "models").symlink_to(models, target_is_directory=True)
        host = ComfyHost(root, python, base)
        host.prepare()
        host.start(timeout=1800)
        try:
            prompt = build(host.get("/object_info"), a)
            time.sleep(2.0)
            idle = _proc_kib(host.proc.pid, "VmRSS") / 1024
            watch = MemoryWatch(host.proc.pid)
            t0, cpu0 = time.time(), _cpu_seconds(host.proc.pid)
            entry = host.run(prompt, timeout=7200)
            seconds, cpu = time.time() - t0, _cpu_seconds(host.proc.pid) - cpu0
            mem = watch.stop()
            if entry["status"]["status_str"] != "success":
                raise RuntimeError(f"{build.__name__} failed: {error_message(entry)}")
            after = _proc_kib(host.proc.pid, "VmRSS") / 1024
        finally:
            host.stop()
    return {"idle_mb": idle, "after_mb": after, "seconds": seconds, "cpu_s": cpu, **mem}


def time_toy(root: Path, python: str, models: Path) -> None:
    ui = json.loads((WORKFLOWS / "SVI-Toy_CPU_demo.json").read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "models").symlink_to(models, target_is_directory=True)
        host = ComfyHost(root, python, base)
        host.prepare()
        host.start(timeout=1800)
        try:
            api = ui_to_api(ui, host.get("/object_info"))
            time.sleep(2.0)
            load = os.getloadavg()[0]
            t0, cpu0 = time.time(), _cpu_seconds(host.proc.pid)
            entry = host.run(api, timeout=7200)
            seconds, cpu = time.time() - t0, _cpu_seconds(host.proc.pid) - cpu0
            if entry["status"]["status_str"] != "success":
                raise RuntimeError(f"toy demo failed: {error_message(entry)}")
        finally:
            host.stop()
    sampler = next(v for v in api.values() if v["class_type"] == "SVIInfiniteSampler")["inputs"]
    print(f"toy CPU demo workflow ({sampler['clips']} clips of {sampler['frames']} frames at "
          f"{sampler['width']}x{sampler['height']}, {sampler['steps']} steps, + drift report), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"{os.cpu_count()} CPUs, load average {load:.1f} before the run")  # fmt: skip
    print(f"queue -> done through the API: {seconds:.1f} s wall, {cpu:.1f} s CPU (server process)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=4, help="clips N in both graphs (default 4)")
    ap.add_argument("--width", type=int, default=256, help="video width (multiple of 16)")
    ap.add_argument("--height", type=int, default=160, help="video height (multiple of 16)")
    ap.add_argument("--frames", type=int, default=17, help="frames per clip, 4k + 1")
    ap.add_argument("--steps", type=int, default=2, help="sampling steps per clip")
    ap.add_argument("--cfg", type=float, default=5.0, help="CFG in both graphs (default 5)")
    ap.add_argument("--toy", action="store_true", help="time the toy demo workflow instead")
    a = ap.parse_args()
    paths = comfy_paths()
    if paths is None:
        sys.exit("set COMFYUI_PATH (and COMFYUI_PYTHON) to a ComfyUI checkout and its python")
    root, python = paths
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        ComfyHost(root, python, Path(tmp)).prepare()  # writes the tiny models once
        if a.toy:
            time_toy(root, python, models)
            return
        rows = {}
        for name, build in (("svi", svi_graph), ("native", native_graph)):
            rows[name] = measure(root, python, models, build, a)
            # each graph takes minutes on a CPU: show its row as soon as it is measured
            print(f"{name}: {json.dumps({k: round(v, 1) for k, v in rows[name].items()})}",
                  flush=True)  # fmt: skip
    frames = a.clips * a.frames - (a.clips - 1)
    image_mb = frames * a.width * a.height * 3 * 4 / 2**20
    print(f"N = {a.clips} clips of {a.frames} frames at {a.width}x{a.height}, {a.steps} steps, "
          f"CFG {a.cfg}: {frames} frames ({image_mb:.1f} MB as a float32 IMAGE batch)")  # fmt: skip
    print(f"{'graph':>7} {'idle RSS MB':>12} {'peak RSS MB':>12} {'after RSS MB':>13} "
          f"{'peak-idle MB':>13} {'seconds':>8} {'CPU s':>7}")  # fmt: skip
    for name, r in rows.items():
        print(f"{name:>7} {r['idle_mb']:>12.0f} {r['peak_mb']:>12.0f} {r['after_mb']:>13.0f} "
              f"{r['peak_mb'] - r['idle_mb']:>13.0f} {r['seconds']:>8.1f} {r['cpu_s']:>7.1f}")  # fmt: skip
    s, n = rows["svi"], rows["native"]
    print(f"native / svi: peak RSS {n['peak_mb'] / s['peak_mb']:.2f}, after-run RSS "
          f"{n['after_mb'] / s['after_mb']:.2f}, peak above idle "
          f"{(n['peak_mb'] - n['idle_mb']) / max(s['peak_mb'] - s['idle_mb'], 1e-9):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
