"""Keyframes: the clip's last frame conditioned on a target image (WanFirstLastFrameToVideo's
layout), in the pixel-carry single encode and in the SVI 2.0 Pro latent path."""

import importlib
import sys
import types
from pathlib import Path

import pytest
import torch
from _svi_fakes import FakeBackend

from svi_core.conditioning import (
    Carry,
    Keyframe,
    build_conditioning,
    frames_to_pixels,
    keyframe_latent,
    mark_keyframe,
    stretch_image,
)
from svi_core.errors import SVIError
from svi_core.modes import get_mode

H, W = 32, 48
REF_U8, MOTION_U8, KEY_U8 = 200, 40, 90


def frame(value, n=1):
    return torch.full((n, H, W, 3), value, dtype=torch.uint8)


def px(u):
    return float(torch.tensor(u, dtype=torch.float32) * (2.0 / 255.0) - 1.0)


def pack_module(name: str):
    """Import ``<pack>.<name>`` without running the pack's ComfyUI entry point."""
    pkg = "svi_pack_under_test"
    if pkg not in sys.modules:
        mod = types.ModuleType(pkg)
        mod.__path__ = [str(Path(__file__).resolve().parents[1])]
        sys.modules[pkg] = mod
    return importlib.import_module(f"{pkg}.{name}")


def flf_concat_mask(latent_frames, h, w):
    """ComfyUI's WanFirstLastFrameToVideo mask for one start and one end image, built from its
    documented rule (pixel-frame mask of 4T frames, ones; start image -> first 4 zero; end
    image -> last one zero; viewed as [T, 4] and transposed to channels)."""
    m = torch.ones(1, 1, latent_frames * 4, h, w)
    m[:, :, :4] = 0.0
    m[:, :, -1:] = 0.0
    return m.view(1, latent_frames, 4, h, w).transpose(1, 2)


@pytest.mark.parametrize("mode_name", ["shot", "film", "tom", "v2", "v2_w22"])
@pytest.mark.parametrize("slot", ["frame", "latent"])
def test_pixel_carry_keyframe_is_the_last_frame_of_the_one_encode(mode_name, slot):
    mode = get_mode(mode_name, frames=17)
    m = mode.motion_frames
    be = FakeBackend(clip_vision=mode.clip_vision)
    key = Keyframe(frame(KEY_U8)[0], slot)
    motion = frame(MOTION_U8, m)
    c = build_conditioning(be, mode, frame(REF_U8)[0], Carry(motion_frames=motion), keyframe=key)
    (video,) = be.encoded  # still ONE causal encode of all F frames
    assert video.shape == (1, 3, 17, H, W)
    n = 1 if slot == "frame" else 4
    assert torch.equal(video[:, :, :m], frames_to_pixels(motion))
    assert torch.all(video[:, :, -n:] == px(KEY_U8))
    pad = px(REF_U8) if mode.padding == "reference" else 0.0
    assert torch.all(video[:, :, m:-n] == pad)
    # mask: latent frame 0 as always; the keyframe's frames in the last latent frame
    mask = c.mask
    assert torch.all(mask[:, :, 0] == 1) and torch.all(mask[:, :, 1:-1] == 0)
    want_last = [0.0, 0.0, 0.0, 1.0] if slot == "frame" else [1.0] * 4
    assert [float(mask[0, ch, -1].mean()) for ch in range(4)] == want_last
    # the CLIP-vision frame stays M[0] (what the SVI LoRAs were trained with)
    if mode.clip_vision:
        assert torch.equal(c.clip_frame, frames_to_pixels(motion[:1])[:, :, 0])


def test_frame_slot_mask_equals_wan_first_last_frame_to_video_in_comfy_convention():
    official_mask_to_comfy = pack_module("nodes.convert").official_mask_to_comfy
    mode = get_mode("tom", frames=21)
    c = build_conditioning(
        FakeBackend(), mode, frame(REF_U8)[0], None, keyframe=Keyframe(frame(KEY_U8)[0], "frame")
    )
    t, h, w = c.mask.shape[2:]
    assert torch.equal(official_mask_to_comfy(c.mask), flf_concat_mask(t, h, w))
    # and without a keyframe the last latent frame is not marked (the SVI first-frame mask)
    plain = build_conditioning(FakeBackend(), mode, frame(REF_U8)[0], None)
    assert float(plain.mask[:, :, -1].sum()) == 0
    assert torch.equal(mark_keyframe(plain.mask, "frame"), c.mask)


def test_first_clip_keyframe_and_room_for_motion_frames():
    key = Keyframe(frame(KEY_U8)[0], "frame")
    assert Keyframe(frame(KEY_U8)[0]).slot == "latent"  # the default (README: measured)
    # film: 5 motion frames; at 9 frames the last latent frame (frames 5-8) is free
    mode = get_mode("film", frames=9)
    be = FakeBackend()
    build_conditioning(be, mode, frame(REF_U8)[0], Carry(motion_frames=frame(1, 5)), keyframe=key)
    assert torch.all(be.encoded[0][:, :, -1] == px(KEY_U8))
    assert torch.all(be.encoded[0][:, :, 5:-1] == 0.0)
    # at 5 frames the motion frames fill the last latent frame: refused, naming a length
    with pytest.raises(SVIError, match="no motion frames.*at least 9 frames"):
        build_conditioning(
            FakeBackend(),
            get_mode("film", frames=5, motion_frames=2),
            frame(REF_U8)[0],
            Carry(motion_frames=frame(1, 2)),
            keyframe=key,
        )
    # clip 0: the reference once, then padding, then the keyframe
    be = FakeBackend()
    build_conditioning(be, get_mode("tom", frames=9), frame(REF_U8)[0], None, keyframe=key)
    v = be.encoded[0]
    assert torch.all(v[:, :, 0] == px(REF_U8)) and torch.all(v[:, :, 1:-1] == 0.0)
    assert torch.all(v[:, :, -1] == px(KEY_U8))


def test_keyframe_size_and_slot_are_checked():
    with pytest.raises(SVIError, match="slot 'middle'"):
        Keyframe(frame(KEY_U8)[0], "middle")
    small = torch.zeros(16, 16, 3, dtype=torch.uint8)
    with pytest.raises(SVIError, match="keyframe .* does not match"):
        build_conditioning(
            FakeBackend(),
            get_mode("tom", frames=9),
            frame(REF_U8)[0],
            None,
            keyframe=Keyframe(small),
        )


@pytest.mark.parametrize("slot", ["frame", "latent"])
def test_pro_keyframe_in_the_last_latent_slot(slot):
    mode = get_mode("v2_pro", frames=17, width=W, height=H)  # T = 5
    be = FakeBackend(clip_vision=False)
    prev = torch.randn(1, 16, 5, H // 8, W // 8)
    anchor = torch.full((1, 16, 1, H // 8, W // 8), 0.25)
    key = Keyframe(frame(KEY_U8)[0], slot)
    c = build_conditioning(
        be, mode, frame(REF_U8)[0], Carry(latent=prev), anchor=anchor, keyframe=key
    )
    # the keyframe is encoded where it sits in a clip: the last latent of a 5-frame encode
    (video,) = be.encoded
    assert video.shape[2] == 5 and torch.all(video[:, :, -1] == px(KEY_U8))
    before = 0.0 if slot == "frame" else px(KEY_U8)  # grey padding vs a still group
    assert torch.all(video[:, :, :-1] == before)
    lat = c.cond_latent
    assert torch.equal(lat[:, :, :1], anchor)
    assert torch.equal(lat[:, :, 1:2], prev[:, :, -1:])
    assert torch.all(lat[:, :, 2:4] == 0)
    # the fake VAE averages the 4 frames of a later latent frame
    want = px(KEY_U8) if slot == "latent" else px(KEY_U8) / 4
    assert float(lat[:, :, 4].mean()) == pytest.approx(want, abs=1e-6)
    assert torch.equal(lat[:, :, 4:5], keyframe_latent(FakeBackend(), key))
    want_last = [0.0, 0.0, 0.0, 1.0] if slot == "frame" else [1.0] * 4
    assert [float(c.mask[0, ch, -1].mean()) for ch in range(4)] == want_last
    assert torch.all(c.mask[:, :, 0] == 1) and torch.all(c.mask[:, :, 1:-1] == 0)


def test_pro_keyframe_needs_a_free_slot():
    mode = get_mode("v2_pro", frames=9, width=W, height=H, motion_latents=2)  # T = 3
    with pytest.raises(SVIError, match="free last latent slot"):
        build_conditioning(
            FakeBackend(clip_vision=False),
            mode,
            frame(REF_U8)[0],
            Carry(latent=torch.zeros(1, 16, 3, H // 8, W // 8)),
            keyframe=Keyframe(frame(KEY_U8)[0]),
        )


def test_stretch_image_resizes_like_the_reference():
    img = torch.randint(0, 256, (20, 30, 3), dtype=torch.uint8)
    out = stretch_image(img, W, H)
    assert out.shape == (H, W, 3) and out.dtype == torch.uint8
    assert stretch_image(out, W, H) is out
