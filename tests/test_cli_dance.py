"""``python -m svi_core generate --mode dance``: refusals before any model loads, and a tiny run."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_cli import base_args, tiny_models, write_image  # noqa: F401 (fixture)

from svi_core.cli import main
from svi_core.pose import PoseEmbedding
from svi_core.video_io import write_segment


@pytest.fixture(autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def dance_file(path, width: int, lora: dict | None = None, seed: int = 0):
    """An SVI-Dance file: LoRA tensors + ``dwpose_embedding.*`` (official names)."""
    torch.manual_seed(seed)
    emb = PoseEmbedding(width)
    sd = {f"dwpose_embedding.{k}": v.contiguous() for k, v in emb.state_dict().items()}
    if lora is None:
        lora = {
            "pipe.dit.blocks.0.self_attn.q.lora_A.default.weight": torch.randn(2, width),
            "pipe.dit.blocks.0.self_attn.q.lora_B.default.weight": torch.randn(width, 2) * 0.01,
        }
    sd.update(lora)
    save_file(sd, str(path))
    return path


def fake_dit(path, width: int):
    save_file({"patch_embedding.weight": torch.zeros(width, 36, 1, 2, 2)}, str(path))
    return path


def pose_video(path, n: int = 13, w: int = 48, h: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):  # a moving coloured bar: every frame differs
        x = int(rng.integers(0, w - 8))
        frames[i, 4 : h - 4, x : x + 6] = rng.integers(60, 256, 3)
    return write_segment(path, frames, fps=24, crf=0)


def check(tmp_path, extra, message, caplog, *, model="dit.safetensors", prompts=True):
    img, prompt_file = inputs_of(tmp_path)
    args = base_args(tmp_path, img, prompt_file, model=model) + extra
    if (tmp_path / "real_dit.safetensors").exists():
        args[args.index("--model") + 1] = str(tmp_path / "real_dit.safetensors")
    assert main(args) == 2
    assert re.search(message, caplog.text), caplog.text
    assert not (tmp_path / "out.run").exists()


def inputs_of(tmp_path):
    img = write_image(tmp_path / "dancer.png")
    p = tmp_path / "prompt.txt"
    p.write_text("the person is dancing\n", encoding="utf-8")
    return img, p


def test_dance_needs_a_pose_video(tmp_path, caplog):
    d = dance_file(tmp_path / "svi-dance.safetensors", 64)
    check(tmp_path, ["--mode", "dance", "--lora", str(d)], "needs a skeleton \\(pose\\) video",
          caplog)  # fmt: skip


def test_dance_needs_the_pose_embedding(tmp_path, caplog):
    plain = tmp_path / "svi-shot.safetensors"
    save_file({"blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, 64),
               "blocks.0.self_attn.q.lora_B.weight": torch.zeros(64, 2)}, str(plain))  # fmt: skip
    pose = pose_video(tmp_path / "pose.mp4")
    check(tmp_path, ["--mode", "dance", "--pose", str(pose), "--lora", str(plain)],
          "no --lora file holds pose-embedding tensors", caplog)  # fmt: skip
    check(tmp_path, ["--mode", "dance", "--pose", str(pose)],
          "needs the SVI-Dance file .*given: none", caplog)  # fmt: skip


def test_dance_file_for_another_width_is_refused(tmp_path, caplog):
    fake_dit(tmp_path / "real_dit.safetensors", 64)
    d = dance_file(tmp_path / "svi-dance.safetensors", 32)
    pose = pose_video(tmp_path / "pose.mp4")
    check(tmp_path, ["--mode", "dance", "--pose", str(pose), "--lora", str(d)],
          "pose embedding is 32 wide .* is 64 wide", caplog)  # fmt: skip


def test_pose_and_dance_file_belong_to_mode_dance(tmp_path, caplog):
    d = dance_file(tmp_path / "svi-dance.safetensors", 64)
    pose = pose_video(tmp_path / "pose.mp4")
    check(tmp_path, ["--mode", "shot", "--pose", str(pose)], "used by mode dance only", caplog)
    check(tmp_path, ["--mode", "shot", "--lora", str(d)],
          "holds SVI-Dance pose-embedding tensors .*mode shot would ignore", caplog)  # fmt: skip


def test_bad_pose_inputs_are_refused(tmp_path, caplog):
    d = dance_file(tmp_path / "svi-dance.safetensors", 64)
    base = ["--mode", "dance", "--lora", str(d), "--pose"]
    check(tmp_path, base + [str(tmp_path / "missing.mp4")], "does not exist", caplog)
    text = tmp_path / "pose.mp4"
    text.write_text("not a video")
    check(tmp_path, base + [str(text)], "cannot be read as a video", caplog)
    empty = tmp_path / "empty_pose"
    empty.mkdir()
    check(tmp_path, base + [str(empty)], "has no frames", caplog)
    folder = tmp_path / "frames"
    folder.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "0001.png")
    (folder / "notes.txt").write_text("hello")
    check(tmp_path, base + [str(folder)], "holds 'notes.txt', which is not an image", caplog)
    (folder / "notes.txt").unlink()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "0002.png")  # grey
    check(tmp_path, base + [str(folder)], "single-channel image", caplog)


def test_generate_dance_end_to_end_then_extend(tmp_path, caplog, tiny_models):  # noqa: F811
    from svi_core.modes import NEGATIVE_PROMPT_EN
    from svi_core.pose import load_dance_file
    from svi_core.standalone.backend import save_text_embeddings
    from svi_core.video_io import count_frames

    m = tiny_models
    from safetensors.torch import load_file

    from svi_core.pose_inputs import dit_width

    width = dit_width(m["wan21_i2v_dit"])  # the tiny fixture DiT's width
    lora = load_file(str(m["lora"]))
    dfile = dance_file(tmp_path / "svi-dance.safetensors", width, lora=lora, seed=3)
    assert load_dance_file(dfile, expected_dim=width).pose.dim == width
    g = torch.Generator().manual_seed(1)
    ctx = {}
    for p in ("the person is dancing", NEGATIVE_PROMPT_EN):
        c = torch.zeros(1, 512, m["text_dim"])
        c[:, :7] = torch.randn(1, 7, m["text_dim"], generator=g)
        ctx[p] = c
    emb = save_text_embeddings(tmp_path / "emb.safetensors", ctx)
    img = write_image(tmp_path / "dancer.png", 32, 32)
    pose = pose_video(tmp_path / "pose.mp4", n=13, w=48, h=32)  # another aspect: letterboxed
    out = tmp_path / "dance.mp4"
    args = [
        "generate", "--mode", "dance", "--model", str(m["wan21_i2v_dit"]),
        "--vae", str(m["wan21_vae"]), "--clip-vision", str(m["clip"]),
        "--text-embeddings", str(emb), "--lora", str(dfile), "--pose", str(pose),
        "--image", str(img), "--frames", "9", "--steps", "2", "--output", str(out),
        "--no-progress",
    ]  # fmt: skip
    assert main(args) == 0, caplog.text
    # no --clips: enough clips to play the 13 poses once (clip 0 = 0..8, clip 1 = [8, 8..15])
    assert count_frames(out) == 2 * 9 - 1
    assert "do not have the video's aspect" in caplog.text and "padded with black" in caplog.text
    manifest = json.loads((tmp_path / "dance.run" / "manifest.json").read_text())
    assert manifest["settings"]["clip_conditions"]["pose"]["palette"] == "official"
    assert (manifest["settings"]["width"], manifest["settings"]["height"]) == (32, 32)
    assert manifest["settings"]["cfg"] == 2.0 and manifest["settings"]["fps"] == 25.0
    # the skeleton reaches the model: the rgb palette (swapped colours) makes another clip 0
    other = [*args]
    other[other.index("--output") + 1] = str(tmp_path / "rgb.mp4")
    assert main(other + ["--pose-palette", "rgb", "--clips", "1"]) == 0, caplog.text
    a = load_file(str(tmp_path / "dance.run" / "clips" / "clip_00000.safetensors"))["latent"]
    b = load_file(str(tmp_path / "rgb.run" / "clips" / "clip_00000.safetensors"))["latent"]
    assert (a - b).abs().max() > 1e-4
    # extend the finished run: one more clip, the pose video loops (clip 2 = [15, 16..23] % 13)
    assert main(args + ["--clips", "3"]) == 0, caplog.text
    assert count_frames(out) == 3 * 9 - 2 and "1 generated now" in caplog.text
