"""Tier 1: the ComfyUI-free helpers of nodes/ (layouts, run names, prompt text, LoRA shapes)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _pack_module(name: str):
    """Import ``<pack>.<name>`` without running the pack's ComfyUI entry point."""
    pkg = "svi_pack_under_test"
    if pkg not in sys.modules:
        mod = types.ModuleType(pkg)
        mod.__path__ = [str(ROOT)]
        sys.modules[pkg] = mod
    return importlib.import_module(f"{pkg}.{name}")


convert = _pack_module("nodes.convert")
errors = _pack_module("svi_core.errors")


def test_image_pixels_round_trip_and_layout():
    image = torch.rand(5, 6, 7, 3)
    px = convert.image_to_pixels(image)
    assert px.shape == (1, 3, 5, 6, 7)
    # frame 2, row 3, col 4, channel 1 lands at [0, 1, 2, 3, 4], mapped to [-1, 1]
    assert px[0, 1, 2, 3, 4].item() == pytest.approx(image[2, 3, 4, 1].item() * 2 - 1)
    assert px.min() >= -1 and px.max() <= 1
    back = convert.pixels_to_image(px)
    assert torch.allclose(back, image, atol=1e-6)


def test_image_alpha_dropped_and_grey_expanded():
    rgba = torch.rand(1, 4, 4, 4)
    assert torch.equal(convert.image_to_pixels(rgba), convert.image_to_pixels(rgba[..., :3]))
    grey = torch.rand(2, 3, 3, 1)
    px = convert.image_to_pixels(grey)
    assert torch.equal(px[0, 0], px[0, 2])


def test_pixels_to_image_clamps_and_rejects_bad_layout():
    px = torch.full((1, 3, 1, 2, 2), 3.0)
    assert convert.pixels_to_image(px).max().item() == 1.0
    with pytest.raises(errors.SVIError, match=r"\[1, 3, F, H, W\]"):
        convert.pixels_to_image(torch.zeros(3, 1, 2, 2))
    with pytest.raises(errors.SVIError, match="IMAGE"):
        convert.image_to_pixels(torch.zeros(2, 2, 3))


def test_frame_to_image():
    frame = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1)
    img = convert.frame_to_image(frame)
    assert img.shape == (1, 1, 1, 3)
    assert img.flatten().tolist() == [0.0, 0.5, 1.0]


def test_mask_inverted_for_comfy():
    mask = torch.zeros(1, 4, 3, 2, 2)
    mask[:, :, 0] = 1
    comfy_mask = convert.official_mask_to_comfy(mask)
    assert comfy_mask[:, :, 0].eq(0).all() and comfy_mask[:, :, 1:].eq(1).all()


@pytest.mark.parametrize(
    "name,expected",
    [
        ("my run", "my_run"),
        ("../../etc/passwd", "_.._etc_passwd"),
        ("a/b\\c", "a_b_c"),
        ("..", None),
        ("", None),
        ("ok-name_1.2", "ok-name_1.2"),
    ],
)
def test_sanitise_run_name(name, expected):
    if expected is None:
        with pytest.raises(errors.SVIError, match="run name"):
            convert.sanitise_run_name(name)
    else:
        out = convert.sanitise_run_name(name)
        assert out == expected
        assert "/" not in out and "\\" not in out and not out.startswith(".")


def test_run_directory_stays_inside(tmp_path):
    for name in ["../../x", "/abs/path", "a/../../b", "..\\..\\c"]:
        path = convert.run_directory(str(tmp_path), name)
        root = os.path.realpath(tmp_path)
        assert os.path.commonpath([root, path]) == root
        assert path.startswith(os.path.join(root, "svi") + os.sep)


def test_module_shapes_strips_prefix_and_skips_non_weights():
    sd = {
        "blocks.0.self_attn.q.weight": torch.zeros(8, 4),
        "blocks.0.self_attn.q.bias": torch.zeros(8),
        "diffusion_model.head.head.weight": torch.zeros(2, 8),
    }
    assert convert.module_shapes(sd) == {"blocks.0.self_attn.q": (8, 4), "head.head": (2, 8)}


def test_image_to_pose_frames_round_trips_uint8() -> None:
    convert = _pack_module("nodes.convert")
    SVIError = convert.SVIError  # the pack's own class (imported under the test package name)
    u8 = torch.randint(0, 256, (3, 4, 5, 3), dtype=torch.uint8)
    image = u8.float() / 255.0  # what Load Video hands over
    assert torch.equal(convert.image_to_pose_frames(image), u8)
    rgba = torch.cat([image, torch.ones(3, 4, 5, 1)], dim=-1)
    assert torch.equal(convert.image_to_pose_frames(rgba), u8)
    with pytest.raises(SVIError, match="1 channels"):
        convert.image_to_pose_frames(torch.zeros(2, 4, 5, 1))
    with pytest.raises(SVIError, match="IMAGE batch"):
        convert.image_to_pose_frames(torch.zeros(4, 5, 3))
