"""svi_core.pose_align: alignment against the official utils/run_align_pose.py, and drawing."""

from __future__ import annotations

import numpy as np
import pytest

from svi_core.errors import SVIError
from svi_core.pose_align import (
    PoseKeypoints,
    align_poses,
    draw_pose,
    draw_poses,
    fit_alignment,
    frames_from_pose_keypoint,
    from_openpose,
)


def _person(seed: int, jitter: float = 0.0) -> PoseKeypoints:
    """A plausible standing skeleton (normalised coordinates), every point detected."""
    rng = np.random.default_rng(seed)
    body = np.array([
        [0.50, 0.15], [0.50, 0.25], [0.42, 0.25], [0.38, 0.38], [0.36, 0.50], [0.58, 0.25],
        [0.62, 0.38], [0.64, 0.50], [0.45, 0.52], [0.45, 0.70], [0.45, 0.88], [0.55, 0.52],
        [0.55, 0.70], [0.55, 0.88], [0.48, 0.13], [0.52, 0.13], [0.46, 0.14], [0.54, 0.14],
        [0.57, 0.92], [0.43, 0.92],
    ])  # fmt: skip
    body = body * rng.uniform(0.8, 1.2, size=2) + rng.normal(0, 0.01 + jitter, size=body.shape)
    hands = np.stack(
        [body[7] + rng.normal(0, 0.02, (21, 2)), body[4] + rng.normal(0, 0.02, (21, 2))]
    )
    face = body[0] + rng.normal(0, 0.02, (68, 2))
    return PoseKeypoints(body=body, hands=hands, face=face)


def official_align(ref: PoseKeypoints, frames: list[PoseKeypoints]) -> list[PoseKeypoints]:
    """utils/run_align_pose.py:243-692 restated step by step (all points detected)."""
    rc = ref.body
    seq = [
        {"b": f.body.copy(), "h": f.hands.copy(), "f": f.face.copy()} for f in frames
    ]  # fmt: skip
    c = seq[0]["b"]  # the official's `candidate` IS frame 0 (modified in place below)
    zero_center1, zero_center2 = 0.5 * (c[2] + c[5]), 0.5 * (c[8] + c[11])
    x_ratio = (rc[5][0] - rc[2][0]) / (c[5][0] - c[2][0])
    y_ratio = ((0.5 * (rc[8] + rc[11]))[1] - (0.5 * (rc[2] + rc[5]))[1]) / (
        zero_center2[1] - zero_center1[1]
    )
    length = lambda p, i, j: ((p[i][0] - p[j][0]) ** 2 + (p[i][1] - p[j][1]) ** 2) ** 0.5  # noqa: E731
    ratios = {}

    def step(fr, name, parent, child, moved, hand, first):
        b = fr["b"]
        if first:
            ratios[name] = length(rc, parent, child) / length(b, parent, child)
        r = ratios[name]
        off = (b[parent] - b[child]) * (1.0 - r)
        for k in moved:
            b[k] += off
        if hand is not None:
            fr["h"][hand] += off

    plan = [
        ("neck", 1, 0, (0, 14, 15, 16, 17), None),
        ("shoulder2", 1, 2, (2, 3, 4), 1),
        ("shoulder5", 1, 5, (5, 6, 7), 0),
        ("arm3", 2, 3, (3, 4), 1),
        ("arm4", 3, 4, (4,), 1),
        ("arm6", 5, 6, (6, 7), 0),
        ("arm7", 6, 7, (7,), 0),
        ("head14", 0, 14, (14, 16), None),
        ("head15", 0, 15, (15, 17), None),
        ("head16", 14, 16, (16,), None),
        ("head17", 15, 17, (17,), None),
        ("ll1", 8, 9, (9, 10, 19), None),
        ("ll2", 9, 10, (10, 19), None),
        ("rl1", 11, 12, (12, 13, 18), None),
        ("rl2", 12, 13, (13, 18), None),
    ]
    offset = None
    for i, fr in enumerate(seq):
        fr["b"][:, 0] *= x_ratio
        fr["b"][:, 1] *= y_ratio
        for key in ("f", "h"):
            fr[key][..., 0] *= x_ratio
            fr[key][..., 1] *= y_ratio
        for name, parent, child, moved, hand in plan:
            step(fr, name, parent, child, moved, hand, first=(i == 0))
        if i == 0:
            offset = rc[1] - fr["b"][1]
        for key in ("b", "f", "h"):
            fr[key] += offset
    return [PoseKeypoints(body=f["b"], hands=f["h"], face=f["f"]) for f in seq]


def test_alignment_matches_the_official_steps() -> None:
    ref = _person(1)
    frames = [_person(2, jitter=0.005 * i) for i in range(6)]
    ours = align_poses(frames, ref)
    expected = official_align(ref, frames)
    for a, b in zip(ours, expected, strict=True):
        np.testing.assert_allclose(a.body, b.body, atol=1e-12)
        np.testing.assert_allclose(a.hands, b.hands, atol=1e-12)
        np.testing.assert_allclose(a.face, b.face, atol=1e-12)


def test_alignment_gives_the_reference_proportions_on_frame_0() -> None:
    ref, drv = _person(3), _person(4)
    out = align_poses([drv], ref)[0]
    np.testing.assert_allclose(out.body[1], ref.body[1], atol=1e-12)  # neck on the neck
    for parent, child in ((1, 2), (2, 3), (3, 4), (5, 6), (8, 9), (9, 10), (0, 14), (14, 16)):
        got = np.hypot(*(out.body[parent] - out.body[child]))
        want = np.hypot(*(ref.body[parent] - ref.body[child]))
        assert got == pytest.approx(want, rel=1e-9), (parent, child)


def test_undetected_points_stay_undetected() -> None:
    ref, drv = _person(5), _person(6)
    later = _person(7)
    later.body[4] = np.nan  # the right wrist is lost in a later frame
    later.hands[1, 3] = np.nan
    out = align_poses([drv, later], ref)
    assert np.isnan(out[1].body[4]).all() and np.isnan(out[1].hands[1, 3]).all()
    assert np.isfinite(out[1].body[3]).all() and np.isfinite(out[1].hands[1, 4]).all()


def test_missing_segment_keeps_its_length_and_hips_fall_back(caplog) -> None:
    ref, drv = _person(8), _person(9)
    ref.body[16] = np.nan  # no right ear in the reference
    ref.body[8] = np.nan  # no right hip either
    with caplog.at_level("WARNING", logger="svi"):
        al = fit_alignment(ref, drv)
    assert al.segment_ratios[9] == 1.0  # 14 -> 16
    assert al.y_ratio == al.x_ratio
    assert "14-16" in caplog.text and "hips" in caplog.text


def test_alignment_needs_neck_and_shoulders() -> None:
    ref, drv = _person(10), _person(11)
    drv.body[5] = np.nan
    with pytest.raises(SVIError, match="left shoulder detected in the first driving frame"):
        fit_alignment(ref, drv)
    with pytest.raises(SVIError, match="empty"):
        align_poses([], ref)


def test_from_openpose_pixels_threshold_and_feet() -> None:
    pts = [0.0] * 54
    pts[3:6] = [100.0, 50.0, 0.9]  # neck
    pts[6:9] = [80.0, 50.0, 0.2]  # right shoulder below the 0.3 cut
    feet = [10.0, 190.0, 0.9, 14.0, 194.0, 0.8, 0, 0, 0, 30.0, 190.0, 0.9, 0, 0, 0.1, 0, 0, 0]
    kp = from_openpose({"pose_keypoints_2d": pts, "foot_keypoints_2d": feet}, 200, 200)
    np.testing.assert_allclose(kp.body[1], [0.5, 0.25])
    assert np.isnan(kp.body[2]).all() and np.isnan(kp.body[0]).all()
    np.testing.assert_allclose(kp.body[18], [0.06, 0.96])  # mean of the two left toes
    assert np.isnan(kp.body[19]).all()  # only one right toe seen
    assert np.isnan(kp.hands).all() and np.isnan(kp.face).all()
    frames = frames_from_pose_keypoint(
        [{"canvas_width": 200, "canvas_height": 200, "people": [{"pose_keypoints_2d": pts}]},
         {"canvas_width": 200, "canvas_height": 200, "people": []}]
    )  # fmt: skip
    assert len(frames) == 2 and np.isnan(frames[1].body).all()
    with pytest.raises(SVIError, match="canvas_width"):
        frames_from_pose_keypoint([{"people": []}])
    # comfyui_controlnet_aux writes normalised coordinates (confidence 1.0): detected as such
    norm = [0.0] * 54
    norm[3:6] = [0.5, 0.25, 1.0]
    kp = from_openpose({"pose_keypoints_2d": norm}, 200, 200)
    np.testing.assert_allclose(kp.body[1], [0.5, 0.25])


def test_draw_pose_official_palette_is_bgr_drawn() -> None:
    # neck -> nose is limb 12, colour [0, 0, 255] in the list: in the official (cv2-written)
    # frames it is RED (checked on data/toy_test/dance/pose.mp4); limbs are dimmed by 0.6
    kp = PoseKeypoints.empty()
    kp.body[1] = (0.5, 0.6)
    kp.body[0] = (0.5, 0.2)
    img = draw_pose(kp, 64, 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert img[26, 32].tolist() == [153, 0, 0]  # mid-limb: 0.6 * 255 in red
    assert img[int(0.6 * 64), 32].tolist() == [
        0,
        85,
        255,
    ]  # neck point: colour 1 [255, 85, 0] reversed
    rgb = draw_pose(kp, 64, 64, palette="rgb")
    assert rgb[26, 32].tolist() == [0, 0, 153]
    assert rgb[int(0.6 * 64), 32].tolist() == [255, 85, 0]
    assert img[2, 2].tolist() == [0, 0, 0]  # background black
    assert draw_poses([kp, kp], 64, 48).shape == (2, 48, 64, 3)


def test_draw_pose_skips_missing_points_and_draws_hands() -> None:
    kp = PoseKeypoints.empty()
    assert draw_pose(kp, 32, 32).max() == 0
    kp.hands[0, 0] = (0.25, 0.5)
    kp.hands[0, 1] = (0.75, 0.5)
    img = draw_pose(kp, 64, 64)
    assert img[32, 16].tolist() == [255, 0, 0]  # hand joints are (0, 0, 255) drawn -> red
    assert img[32, 32].tolist() == [0, 0, 255]  # edge 0 is hue 0 = red in the list -> blue
