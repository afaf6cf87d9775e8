"""Per-mode conditioning: which latent frames hold reference, motion, padding; mask; spaces."""

import pytest
import torch
from _svi_fakes import FakeBackend

from svi_core.conditioning import (
    Carry,
    build_conditioning,
    carry_from_clip,
    check_frames,
    check_size,
    frames_to_pixels,
    quantise_frames,
    reference_size,
)
from svi_core.errors import SVIError
from svi_core.latents import normalise
from svi_core.modes import get_mode

H, W = 32, 48
REF_U8, MOTION_U8 = 200, 40  # distinct constant colours


def frame(value, n=1):
    return torch.full((n, H, W, 3), value, dtype=torch.uint8)


def px(u):  # the official u8 -> [-1, 1] mapping, float32
    return torch.tensor(u, dtype=torch.float32) * (2.0 / 255.0) - 1.0


def lat_frames(cond):  # one value per latent frame (constant content)
    return [float(cond[0, :, j].mean()) for j in range(cond.shape[2])]


def test_quantise_is_floor_of_clamped_and_roundtrips():
    x = torch.tensor([-1.5, -1.0, -0.99999, 0.0, 0.00392, 0.999, 1.0, 2.0]).view(1, 1, 8, 1, 1)
    u = quantise_frames(x.expand(1, 3, 8, 1, 1))[:, 0, 0, 0].tolist()
    assert u == [0, 0, 0, 127, 127, 254, 255, 255]
    frames = torch.randint(0, 256, (5, 4, 4, 3), dtype=torch.uint8)
    back = quantise_frames(frames_to_pixels(frames))
    # float32 u * (2/255) - 1 then floor can land one below u: why the carry keeps the uint8
    # frames themselves and never re-quantises them
    assert (frames.int() - back.int()).abs().max() <= 1
    ends = frames_to_pixels(
        torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 1, 1, 3)
    )
    assert ends[0, 0, :, 0, 0].tolist() == [-1.0, 1.0]


@pytest.mark.parametrize("mode_name", ["shot", "film", "tom", "v2"])
def test_pixel_modes_first_clip(mode_name):
    mode = get_mode(mode_name, frames=17)
    be = FakeBackend()
    c = build_conditioning(be, mode, frame(REF_U8)[0], None)
    (video,) = be.encoded  # ONE encode of all F frames
    assert video.shape == (1, 3, 17, H, W)
    assert torch.equal(video[:, :, 0], torch.full((1, 3, H, W), float(px(REF_U8))))
    pad = float(px(REF_U8)) if mode.padding == "reference" else 0.0
    assert torch.all(video[:, :, 1:] == pad)  # clip 0: ONE reference frame, then padding
    assert c.cond_latent.shape == (1, 16, 5, H // 8, W // 8)
    assert lat_frames(c.cond_latent) == pytest.approx([float(px(REF_U8))] + [pad] * 4, abs=1e-6)
    assert c.mask.shape == (1, 4, 5, H // 8, W // 8)
    assert torch.all(c.mask[:, :, 0] == 1) and torch.all(c.mask[:, :, 1:] == 0)
    assert torch.equal(c.clip_frame, video[:, :, 0])


@pytest.mark.parametrize("mode_name", ["shot", "film", "tom", "v2"])
def test_pixel_modes_later_clip(mode_name):
    mode = get_mode(mode_name, frames=17)
    m = mode.motion_frames
    be = FakeBackend()
    motion = (
        torch.cat([frame(MOTION_U8), frame(MOTION_U8 + 10, m - 1)]) if m > 1 else frame(MOTION_U8)
    )
    c = build_conditioning(be, mode, frame(REF_U8)[0], Carry(motion_frames=motion))
    (video,) = be.encoded
    assert torch.equal(video[:, :, :m], frames_to_pixels(motion))
    pad = float(px(REF_U8)) if mode.padding == "reference" else 0.0
    assert torch.all(video[:, :, m:] == pad)  # padding is never a motion frame
    lf = lat_frames(c.cond_latent)
    assert lf[0] == pytest.approx(float(px(MOTION_U8)), abs=1e-6)
    if m == 5:  # latent 1 = motion frames 1..4
        assert lf[1] == pytest.approx(float(px(MOTION_U8 + 10)), abs=1e-6)
        assert lf[2:] == pytest.approx([pad] * 3, abs=1e-6)
    else:
        assert lf[1:] == pytest.approx([pad] * 4, abs=1e-6)
    # mask: latent frame 0 only, even when m = 5
    assert torch.all(c.mask[:, :, 0] == 1) and torch.all(c.mask[:, :, 1:] == 0)
    # CLIP vision sees the FIRST motion frame, quantised
    assert torch.equal(c.clip_frame, frames_to_pixels(motion[:1])[:, :, 0])


def test_repeat_reference_option():
    mode = get_mode("film", frames=17, first_clip_repeat_reference=True)
    be = FakeBackend()
    build_conditioning(be, mode, frame(REF_U8)[0], None)
    v = be.encoded[0]
    assert torch.all(v[:, :, :5] == px(REF_U8)) and torch.all(v[:, :, 5:] == 0)


def test_carry_keeps_last_m_uint8_frames():
    mode = get_mode("film", frames=17)
    frames = torch.arange(17, dtype=torch.uint8).view(17, 1, 1, 1).expand(17, H, W, 3)
    carry = carry_from_clip(mode, torch.zeros(1, 16, 5, 4, 6), frames)
    assert carry.motion_frames.dtype == torch.uint8
    assert carry.motion_frames[:, 0, 0, 0].tolist() == [12, 13, 14, 15, 16]


def test_pro_latent_carry():
    mode = get_mode("v2_pro", frames=17, width=W, height=H)
    be = FakeBackend(clip_vision=False)
    ref = frame(REF_U8)[0]
    c0 = build_conditioning(be, mode, ref, None)
    (anchor_px,) = be.encoded
    assert anchor_px.shape == (1, 3, 1, H, W)  # A = encode(reference) alone
    assert lat_frames(c0.cond_latent) == pytest.approx([float(px(REF_U8)), 0, 0, 0, 0], abs=1e-6)
    assert c0.clip_frame is None
    prev = torch.randn(1, 16, 5, H // 8, W // 8)
    anchor = c0.cond_latent[:, :, :1]
    be.encoded.clear()
    c1 = build_conditioning(be, mode, ref, Carry(latent=prev), anchor=anchor)
    assert be.encoded == []  # never decoded / re-encoded
    assert torch.equal(c1.cond_latent[:, :, 0:1], anchor)
    assert torch.equal(c1.cond_latent[:, :, 1:2], prev[:, :, -1:])
    assert torch.all(c1.cond_latent[:, :, 2:] == 0)  # zeros in NORMALISED space
    assert not torch.all(normalise(torch.zeros(1, 16, 1, 1, 1)) == 0)  # (raw zeros differ)
    assert torch.all(c1.mask[:, :, 0] == 1) and torch.all(c1.mask[:, :, 1:] == 0)
    k2 = get_mode("v2_pro", frames=17, width=W, height=H, motion_latents=2)
    c2 = build_conditioning(be, k2, ref, Carry(latent=prev), anchor=anchor)
    assert torch.equal(c2.cond_latent[:, :, 1:3], prev[:, :, -2:])


def test_v2_w22_uses_last_frame_and_anchor_padding():
    mode = get_mode("v2_w22", frames=17, width=W, height=H)
    be = FakeBackend(clip_vision=False)
    c = build_conditioning(be, mode, frame(REF_U8)[0], Carry(motion_frames=frame(MOTION_U8)))
    v = be.encoded[0]
    assert torch.all(v[:, :, 0] == px(MOTION_U8)) and torch.all(v[:, :, 1:] == px(REF_U8))
    assert c.clip_frame is None


def test_sizes_and_frames_validation():
    assert reference_size(get_mode("film"), 1920, 1080) == (832, 464)
    assert reference_size(get_mode("film"), 500, 300) == (496, 288)
    # official utils/image_process.py:63-65 computes int(832 * (975 / 845)) = 959 -> 944; the
    # algebraically equal int(975 * 832 / 845) = 960 would give another height
    assert int(975 * 832 / 845) // 16 * 16 == 960
    assert reference_size(get_mode("film"), 845, 975) == (832, 944)
    assert reference_size(get_mode("v2_pro"), 1920, 1080) == (832, 480)
    with pytest.raises(SVIError, match="width=500 \\(nearest valid: 496 or 512\\)"):
        check_size(500, 480)
    with pytest.raises(SVIError, match="frames=80 per clip.*try 77 or 81"):
        check_frames(80)
    check_frames(81)
    check_size(832, 480)
