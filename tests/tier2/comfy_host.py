"""A real ComfyUI server for tier-2 tests: headless, CPU, loopback only, in a temp base folder.

The host checkout is ``COMFYUI_PATH`` and its interpreter ``COMFYUI_PYTHON`` (default: the
``python`` of a ``venv`` / ``.venv`` beside ``main.py``, else this interpreter). The server's
base directory is a temporary folder holding tiny model files (``make_models.py``), this pack
and the test-only nodes (symlinked into its ``custom_nodes``), and ``input/example.png``.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PACK_NAME = "stable-video-infinity"


def comfy_paths() -> tuple[Path, str] | None:
    """(ComfyUI checkout, its python) from the environment, or None when not configured."""
    root = os.environ.get("COMFYUI_PATH")
    if not root or not (Path(root) / "main.py").is_file():
        return None
    py = os.environ.get("COMFYUI_PYTHON")
    if not py:
        for cand in ("venv/bin/python", ".venv/bin/python"):
            if (Path(root) / cand).is_file():
                py = str(Path(root) / cand)
                break
    return Path(root), py or sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_example_png(path: Path, width: int = 120, height: int = 80) -> None:
    """A small colourful test image (gradient + a square), written with pillow."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
    img[height // 4 : height // 2, width // 4 : width // 2] = (250, 40, 40)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.astype("uint8")).save(path)


def write_pose_video(path: Path, seed: int, width: int = 96, height: int = 64, n: int = 12) -> None:
    """A small skeleton-like test video (coloured bars moving on black), written with
    imageio-ffmpeg; another seed gives another dance."""
    import imageio_ffmpeg
    import numpy as np

    rng = np.random.default_rng(seed)
    frames = np.zeros((n, height, width, 3), np.uint8)
    for i in range(n):
        for _ in range(3):
            x, y = int(rng.integers(0, width - 12)), int(rng.integers(0, height - 12))
            frames[i, y : y + 10, x : x + 4] = rng.integers(80, 256, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio_ffmpeg.write_frames(
        str(path), (width, height), fps=25, codec="libx264", pix_fmt_out="yuv420p",
        quality=None, output_params=["-crf", "10"], macro_block_size=2,
    )  # fmt: skip
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(f))
    writer.close()


class WSListener:
    """Minimal websocket client for ComfyUI's ``/ws`` (text frames only, no extensions)."""

    def __init__(self, port: int, client_id: str) -> None:
        self.messages: list[dict[str, Any]] = []
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"websocket upgrade refused: {head[:200]!r}")
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("websocket closed")
            buf += chunk
        return buf

    def _run(self) -> None:
        try:
            while not self._stop:
                b0, b1 = self._read(2)
                length = b1 & 0x7F
                if length == 126:
                    length = struct.unpack(">H", self._read(2))[0]
                elif length == 127:
                    length = struct.unpack(">Q", self._read(8))[0]
                payload = self._read(length)
                if b0 & 0x0F == 1:
                    self.messages.append(json.loads(payload.decode("utf-8")))
                elif b0 & 0x0F == 8:
                    return
        except (OSError, ConnectionError, ValueError):
            return

    def of_type(self, kind: str, prompt_id: str | None = None) -> list[dict[str, Any]]:
        out = []
        for m in list(self.messages):
            if m.get("type") != kind:
                continue
            if prompt_id is not None and m.get("data", {}).get("prompt_id") not in (
                None,
                prompt_id,
            ):
                continue
            out.append(m["data"])
        return out

    def close(self) -> None:
        self._stop = True
        try:
            self.sock.close()
        except OSError:
            pass


class ComfyHost:
    """A running ComfyUI server (see the module docstring)."""

    def __init__(self, comfy_root: Path, python: str, base: Path) -> None:
        self.root, self.python, self.base = comfy_root, python, base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id = uuid.uuid4().hex
        self.proc: subprocess.Popen | None = None
        self.ws: WSListener | None = None
        self.log_path = base / "server.log"

    def prepare(self) -> None:
        models = self.base / "models"
        subprocess.run(
            [self.python, str(HERE / "make_models.py"), str(self.root), str(models)],
            check=True,
            cwd=str(self.root),
        )
        nodes = self.base / "custom_nodes"
        nodes.mkdir(parents=True, exist_ok=True)
        for name, target in ((PACK_NAME, REPO), ("svi_test_nodes", HERE / "svi_test_nodes")):
            link = nodes / name
            if not link.exists():
                link.symlink_to(target, target_is_directory=True)
        write_example_png(self.base / "input" / "example.png")
        write_pose_video(self.base / "input" / "dance_pose.mp4", seed=1)
        write_pose_video(self.base / "input" / "dance_pose_b.mp4", seed=2)

    def start(self, timeout: float = 300) -> None:
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [
                self.python,
                "main.py",
                "--cpu",
                "--listen",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--base-directory",
                str(self.base),
                "--disable-auto-launch",
            ],  # fmt: skip
            cwd=str(self.root),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited early; see {self.log_path}")
            try:
                self.get("/object_info/SVIInfiniteSampler")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(1.0)
        else:
            raise RuntimeError(f"ComfyUI did not start in {timeout} s; see {self.log_path}")
        self.ws = WSListener(self.port, self.client_id)

    def stop(self) -> None:
        if self.ws is not None:
            self.ws.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "log", None):
            self.log.close()

    # ----- HTTP ----------------------------------------------------------------------------

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.loads(r.read().decode("utf-8"))

    def post(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = json.dumps(body or {}).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                text = r.read().decode("utf-8")
                return r.status, (json.loads(text) if text.strip() else None)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read().decode("utf-8") or "null")

    def queue(self, prompt: dict[str, Any]) -> str:
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200:
            raise AssertionError(f"prompt refused ({status}): {json.dumps(body)[:2000]}")
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 900) -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            if prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") is not None:
                entry = hist[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def run(self, prompt: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
        return self.wait(self.queue(prompt), timeout)


def error_message(entry: dict[str, Any]) -> str | None:
    """The exception message of a failed prompt's history entry (None if it succeeded)."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('exception_type')}: {data.get('exception_message')}"
        if kind == "execution_interrupted":
            return "interrupted"
    return None
