"""Drift guard: the colour statistics on synthetic frames with known shifts, the seam weights,
and the guard in the clip loop (carry, resume, segment repair, identity)."""

import json

import numpy as np
import pytest
import torch
from _svi_fakes import FakeBackend
from safetensors.torch import load_file

from svi_core.conditioning import frames_to_pixels, quantise_frames
from svi_core.drift import mean_lab_u8
from svi_core.drift_guard import (
    ColourStats,
    ColourTransfer,
    DriftGuard,
    apply_transfers,
    colour_stats,
    guard_clip,
    lab_to_u8,
    seam_weights,
    u8_to_lab,
)
from svi_core.errors import Cancelled, RunMismatchError, SVIError
from svi_core.loop import LoopInputs, RunSettings, run_clips
from svi_core.modes import get_mode
from svi_core.video_io import read_video_frames

RNG = np.random.default_rng(7)


def scene(n=6, h=32, w=48, seed=0):
    """A textured toy scene: smooth colour gradients plus noise, uint8 [n, h, w, 3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([60 + 2 * xx, 90 + 3 * yy, 140 - xx - yy], -1).astype(np.float64)
    frames = base[None] + rng.normal(0, 12, (n, h, w, 3))
    return np.clip(frames, 0, 255).astype(np.uint8)


def shifted(frames, lab_shift):
    """Frames with a known colour shift in Lab (a warm cast: +a, +b, darker)."""
    return lab_to_u8(u8_to_lab(frames) + np.asarray(lab_shift, dtype=np.float64))


def lab_mean(frames):
    return np.mean([mean_lab_u8(f) for f in frames], axis=0)


# ----- statistics ---------------------------------------------------------------------------


def test_lab_round_trip_is_exact_for_every_grey_and_random_colours():
    grey = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, 1)
    colours = RNG.integers(0, 256, (20000, 3), dtype=np.uint8)
    for px in (grey, colours):
        assert np.array_equal(lab_to_u8(u8_to_lab(px)), px)


def test_stats_of_flat_and_two_colour_frames():
    flat = np.full((3, 8, 8, 3), (200, 120, 40), np.uint8)
    s = colour_stats(flat)
    assert np.allclose(s.mean, u8_to_lab(np.array([200, 120, 40], np.uint8)))
    assert np.allclose(s.std, 0.0, atol=1e-6)
    half = np.zeros((2, 8, 8, 3), np.uint8)
    half[:, :, 4:] = 255  # half black, half white: L mean 50, L std 50
    s = colour_stats(half)
    assert s.mean[0] == pytest.approx(50.0, abs=1e-4) and s.std[0] == pytest.approx(50.0, abs=1e-4)
    assert np.allclose(s.mean[1:], 0.0, atol=1e-3) and np.allclose(s.std[1:], 0.0, atol=1e-3)


def test_a_known_shift_is_measured_and_undone():
    anchor = scene(1)[0]
    drifted = shifted(scene(6, seed=1), [-6.0, 4.0, 9.0])
    before = colour_stats(drifted).mean - colour_stats(anchor).mean
    assert before == pytest.approx([-6.0, 4.0, 9.0], abs=1.5)  # what was put in is measured
    t = ColourTransfer.matching(colour_stats(drifted), colour_stats(anchor))
    assert np.allclose(t.gain, 1.0)  # mean only by default
    fixed = apply_transfers(drifted, [t] * len(drifted))
    assert np.linalg.norm(lab_mean(fixed) - lab_mean(anchor[None])) < 1.0
    assert np.linalg.norm(lab_mean(drifted) - lab_mean(anchor[None])) > 10.0
    half = ColourTransfer.matching(colour_stats(drifted), colour_stats(anchor), strength=0.5)
    assert half.offset == pytest.approx(0.5 * t.offset)


def test_contrast_matching_only_when_asked_and_clamped():
    anchor = scene(1)[0]
    lab = u8_to_lab(scene(4, seed=2))
    flat = lab_to_u8((lab - lab.mean((0, 1, 2))) * 0.5 + lab.mean((0, 1, 2)))  # half contrast
    src, dst = colour_stats(flat), colour_stats(anchor)
    assert np.allclose(ColourTransfer.matching(src, dst).gain, 1.0)
    t = ColourTransfer.matching(src, dst, contrast=True)
    fixed = colour_stats(apply_transfers(flat, [t] * len(flat)))
    assert fixed.std[0] == pytest.approx(dst.std[0], rel=0.05)
    tiny = ColourStats(mean=dst.mean, std=np.full(3, 1e-3))
    assert np.all(ColourTransfer.matching(tiny, dst, contrast=True).gain <= 2.0)


def test_identity_and_none_leave_frames_bit_identical():
    frames = scene(3)
    out = apply_transfers(frames, [None, ColourTransfer.identity(), None])
    assert np.array_equal(out, frames)


# ----- where the guard corrects --------------------------------------------------------------


def test_seam_weights_ramp_to_the_seam_and_leave_the_middle_alone():
    w_in, w_out = seam_weights(81, first_kept=0, seam=76, window=16, ramp_in=True)
    assert w_out[75] == 1.0 and np.all(w_out[76:] == 1.0)  # last kept frame and the tail
    assert w_out[59] == 0.0 and 0 < w_out[60] < w_out[61] < 1.0  # 16 frames before the seam
    assert w_in[0] == 1.0 and w_in[16] == 0.0 and 0 < w_in[15] < 1.0
    assert np.all(w_in[16:60] + w_out[16:60] == 0.0)  # far from both seams: untouched
    assert np.all(w_in + w_out <= 1.0 + 1e-12)
    # a short clip: the ramps meet and are scaled to sum to 1
    w_in, w_out = seam_weights(13, first_kept=1, seam=13, window=16, ramp_in=True)
    assert np.allclose((w_in + w_out)[1:], 1.0) and w_in[1] == 1.0 and w_out[12] == 1.0
    assert w_out[1] == 0.0 and w_in[12] == 0.0  # each seam gets its own transfer exactly
    _, w_out = seam_weights(13, first_kept=0, seam=12, window=16, ramp_in=False)
    assert w_out[0] == 0.0 and w_out[11] == 1.0 and np.all(np.diff(w_out[:12]) > 0)


def test_guard_clip_modes():
    anchor = scene(1)[0]
    frames = shifted(scene(41, seed=3), [0.0, 5.0, 8.0])
    for mode in ("output", "carry"):
        g = guard_clip(
            DriftGuard(mode, window=8), frames, anchor, first_kept=0, seam=36, transfer_in=None
        )
        assert np.array_equal(g.frames[:27], frames[:27])  # only the window before the seam
        assert np.linalg.norm(lab_mean(g.frames[36:]) - lab_mean(anchor[None])) < 1.5
        carried = g.frames if mode == "carry" else frames
        assert np.array_equal(g.carry_frames, carried)
    # output: the previous seam's transfer ramps out over the clip's start
    t_in = ColourTransfer(np.ones(3), np.array([3.0, -2.0, 1.0]))
    g = guard_clip(
        DriftGuard("output", window=8), frames, anchor, first_kept=5, seam=36, transfer_in=t_in
    )
    expect = apply_transfers(frames[5:6], [t_in])
    assert np.array_equal(g.frames[5], expect[0]) and g.transfer_in is t_in
    g = guard_clip(
        DriftGuard("carry", window=8), frames, anchor, first_kept=5, seam=36, transfer_in=t_in
    )
    assert np.array_equal(g.frames[:27], frames[:27]) and g.transfer_in is None


@pytest.mark.parametrize(
    "bad, message",
    [
        (DriftGuard("always"), "off, output, carry"),
        (DriftGuard("carry", window=0), "window"),
        (DriftGuard("carry", strength=1.5), "strength"),
    ],
)
def test_bad_guard_settings_are_refused(bad, message):
    with pytest.raises(SVIError, match=message):
        bad.validate()


# ----- in the clip loop -----------------------------------------------------------------------

H, W = 32, 48


class WarmingBackend(FakeBackend):
    """Decodes every clip a little warmer than its conditioning: colour drift that compounds
    through the pixel carry, like the creep users report."""

    def decode(self, latent):
        x = super().decode(latent)
        shift = torch.tensor([0.06, 0.0, -0.06]).view(1, 3, 1, 1, 1)
        return (x + shift).clamp(-1, 1)


def settings(guard="off", clips=4, name="tom", **over):
    over.setdefault("frames", 9)
    over.setdefault("steps", 2)
    if name in ("v2_pro", "v2_w22"):
        over.setdefault("width", W)
        over.setdefault("height", H)
    return RunSettings(
        mode=get_mode(name, **over),
        width=W,
        height=H,
        num_clips=clips,
        drift_guard=DriftGuard(guard, window=4) if isinstance(guard, str) else guard,
    )


def reference():
    return torch.from_numpy(scene(1, H, W, seed=9)[0].copy())


def go(tmp, s, backend=None, **kw):
    be = backend or WarmingBackend(clip_vision=s.mode.clip_vision)
    res = run_clips(
        be, s, LoopInputs(reference(), ["a scene"]), tmp / "run", output=tmp / "out.mp4", **kw
    )
    return be, res


def clip_files(run_dir):
    m = json.loads((run_dir / "manifest.json").read_text())
    return [load_file(str(run_dir / c["state"])) for c in m["clips"]]


def test_carry_stops_the_compounding_drift(tmp_path):
    anchor = lab_mean(reference().numpy()[None])
    drift = {}
    for guard in ("off", "output", "carry"):
        _, res = go(tmp_path / guard, settings(guard, clips=5))
        last = clip_files(res.run_dir)[-1]["tail"].numpy()
        drift[guard] = float(np.linalg.norm(lab_mean(last) - anchor))
    assert drift["carry"] < 0.5 * drift["off"]
    assert drift["output"] < 0.5 * drift["off"]  # the seams are corrected in the output too


def test_carry_conditions_the_next_clip_on_the_corrected_frames(tmp_path):
    for guard in ("output", "carry"):
        be, res = go(tmp_path / guard, settings(guard, clips=2))
        files = clip_files(res.run_dir)
        raw = quantise_frames(be.decode(files[0]["latent"]))
        motion = files[0]["motion"]
        assert torch.equal(be.encoded[1][:, :, :1], frames_to_pixels(motion))
        if guard == "carry":
            assert torch.equal(motion, files[0]["tail"])  # the corrected frames
            assert not torch.equal(motion, raw[-1:])
        else:
            assert torch.equal(motion, raw[-1:])  # official carry, corrected output
            assert not torch.equal(files[0]["tail"], raw[-1:])
        assert files[0]["guard_out"].shape == (2, 3)


@pytest.mark.parametrize("guard", ["output", "carry"])
def test_resume_and_segment_repair_make_the_same_frames(tmp_path, guard):
    s = settings(guard, clips=3)
    _, full = go(tmp_path / "a", s)

    def cancel_in_clip_2(clip, done, total):
        if clip == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        go(tmp_path / "b", s, on_step=cancel_in_clip_2)
    _, resumed = go(tmp_path / "b", s)
    video = np.stack(list(read_video_frames(full.video)))
    assert np.array_equal(video, np.stack(list(read_video_frames(resumed.video))))
    # a damaged segment is made again from the latent and the recorded transfers
    seg = resumed.run_dir / "segments" / "clip_00001.mp4"
    seg.write_bytes(seg.read_bytes()[:-50])
    _, rebuilt = go(tmp_path / "b", settings(guard, clips=3))
    assert np.array_equal(video, np.stack(list(read_video_frames(rebuilt.video))))


def test_the_guard_is_part_of_the_run_identity(tmp_path):
    go(tmp_path, settings("off", clips=1))
    with pytest.raises(RunMismatchError, match="drift_guard"):
        go(tmp_path, settings("carry", clips=2))
    go(tmp_path / "c", settings("carry", clips=1))
    with pytest.raises(RunMismatchError, match="drift_guard"):
        go(tmp_path / "c", settings(DriftGuard("carry", window=8), clips=2))
    assert DriftGuard("off", window=3).identity() == DriftGuard().identity()


def test_pro_output_guard_leaves_the_latent_carry_alone(tmp_path):
    be, res = go(tmp_path, settings("carry", clips=2, name="v2_pro"))
    files = clip_files(res.run_dir)
    assert torch.equal(be.requests[1].cond_latent[:, :, 1:2], files[0]["latent"][:, :, -1:])
    assert "motion" not in files[0]
