"""SVI-Talk per-clip audio rules, checked against values read from the official code.

Expected numbers are written out by hand from ``test_svi_talk.py:277-280`` (clip start ``81k - m``),
``svi_video_talk.py:412-446`` (5-frame window, clamping, the 3 + 1 + 1 + 3 grouping per latent frame) and
``svi_video_talk.py:460-462`` (the two-scale guidance), not from running this code.
"""

from __future__ import annotations

import pytest
import torch

from svi_core.errors import SVIError
from svi_core.talk import (
    TalkGuidance,
    audio_window_start,
    check_audio_covers_clip,
    clip_audio_windows,
    clip_feature_indices,
    clips_for_audio,
    combine_talk_guidance,
    feature_frame_count,
    null_audio_windows,
)


@pytest.mark.parametrize(
    ("clip", "start"), [(0, 0), (1, 80), (2, 161), (3, 242), (49, 3968), (92, 7451)]
)
def test_clip_start_is_81k_minus_one_motion_frame(clip: int, start: int) -> None:
    assert audio_window_start(clip, frames=81, motion_frames=1) == start


def test_clip_start_subtracts_the_motion_frames_once() -> None:
    # chunk_idx * 81 - num_motion_frames, not k * (81 - m)
    assert audio_window_start(3, frames=81, motion_frames=5) == 238
    assert audio_window_start(0, frames=81, motion_frames=5) == 0
    assert audio_window_start(2, frames=33, motion_frames=1) == 65


def test_clip_zero_windows_clamp_at_the_start() -> None:
    first, latter = clip_feature_indices(0, 81, 4000)
    assert first.tolist() == [0, 0, 0, 1, 2]
    assert latter.shape == (20, 8)
    assert latter[0].tolist() == [0, 0, 1, 2, 3, 4, 5, 6]  # frames -1..6, -1 clamped
    assert latter[1].tolist() == [3, 4, 5, 6, 7, 8, 9, 10]
    assert latter[19].tolist() == list(range(75, 83))


def test_clip_one_windows() -> None:
    first, latter = clip_feature_indices(80, 81, 4000)
    assert first.tolist() == [78, 79, 80, 81, 82]
    assert latter[0].tolist() == list(range(79, 87))
    assert latter[19].tolist() == list(range(155, 163))


def test_clip_two_windows() -> None:
    first, latter = clip_feature_indices(161, 81, 300)
    assert first.tolist() == [159, 160, 161, 162, 163]
    assert latter[4].tolist() == list(range(176, 184))  # latent 5: 161 + 15 .. 161 + 22


def test_clip_49_windows_repeat_the_last_feature_frame_past_the_end() -> None:
    first, latter = clip_feature_indices(3968, 81, 4000)
    assert first.tolist() == [3966, 3967, 3968, 3969, 3970]
    assert latter[7].tolist() == [3995, 3996, 3997, 3998, 3999, 3999, 3999, 3999]  # latent 8
    assert latter[19].tolist() == [3999] * 8


def test_windows_gather_features_in_layer_channel_order() -> None:
    t_a, layers, channels = 200, 3, 4
    idx = torch.arange(t_a, dtype=torch.float32)
    feats = idx[:, None, None] * 100 + torch.arange(layers)[None, :, None] * 10
    feats = feats + torch.arange(channels)[None, None, :]
    first, latter = clip_audio_windows(feats, start=80, frames=81)
    assert first.shape == (1, 1, 5, layers, channels)
    assert latter.shape == (1, 20, 8, layers, channels)
    assert first[0, 0, :, 2, 3].tolist() == [7823.0, 7923.0, 8023.0, 8123.0, 8223.0]
    assert latter[0, 0, :, 1, 0].tolist() == [f * 100 + 10.0 for f in range(79, 87)]
    assert latter[0, 19, 7, 0, 1].item() == 162 * 100 + 1


def test_null_windows_are_zero_and_shaped_like_clip_windows() -> None:
    first, latter = null_audio_windows(12, 768)
    assert first.shape == (1, 1, 5, 12, 768) and latter.shape == (1, 20, 8, 12, 768)
    assert first.abs().sum() == 0 and latter.abs().sum() == 0


def test_short_clips_group_like_the_official_rearrange() -> None:
    first, latter = clip_feature_indices(10, 9, 100)  # 9 frames -> 3 latent frames
    assert first.tolist() == [8, 9, 10, 11, 12]
    assert latter.tolist() == [list(range(9, 17)), list(range(13, 21))]
    with pytest.raises(ValueError):
        clip_feature_indices(0, 80, 100)


@pytest.mark.parametrize(
    ("frames_a", "clips"),
    [(1, 1), (81, 1), (82, 2), (161, 2), (162, 3), (4049, 50), (4050, 51), (7500, 93)],
)
def test_clip_count_covers_the_audio(frames_a: int, clips: int) -> None:
    assert clips_for_audio(frames_a, frames=81, motion_frames=1) == clips
    last_start = audio_window_start(clips - 1)
    assert last_start + 81 >= frames_a  # the last clip reaches the end
    if clips > 1:
        assert audio_window_start(clips - 2) + 81 < frames_a  # one fewer would not


def test_feature_frame_count_is_int_of_duration_times_25() -> None:
    assert feature_frame_count(4_800_000) == 7500  # 5 min at 16 kHz
    assert feature_frame_count(51_840) == 81  # 3.24 s
    assert feature_frame_count(51_839) == 80
    assert feature_frame_count(80_000) == 125


def test_audio_shorter_than_one_clip_is_refused_with_its_length() -> None:
    check_audio_covers_clip(81)
    with pytest.raises(SVIError, match=r"speech\.wav is 3\.20 s .*needs 3\.24 s"):
        check_audio_covers_clip(80, source="speech.wav")


def test_two_scale_guidance_matches_the_official_formula() -> None:
    vc, vd, vu = torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([0.25])
    # 0.25 + 2 * (1 - 0.5) + 5 * (0.5 - 0.25) = 2.5
    assert combine_talk_guidance(vc, vd, vu, text_scale=2.0, audio_scale=5.0).item() == 2.5
    assert TalkGuidance().combine(vc, vd, vu).item() == 2.5  # official defaults text 2, audio 5
    # text 1, audio 5: 0.25 + 0.5 + 1.25
    assert combine_talk_guidance(vc, vd, vu, text_scale=1.0, audio_scale=5.0).item() == 2.0
    assert TalkGuidance(1.0, 5.0).guided and not TalkGuidance(1.0, 1.0).guided


def test_guidance_of_one_uses_the_conditional_pass_only() -> None:
    vc = torch.tensor([0.3, -0.7])
    assert torch.equal(combine_talk_guidance(vc, None, None, 1.0, 1.0), vc)
    with pytest.raises(ValueError, match="drop-text"):
        combine_talk_guidance(vc, None, None, 2.0, 5.0)
