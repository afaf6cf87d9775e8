"""The procedural toy world: seeded, deterministic, moving, sized as Wan needs."""

from __future__ import annotations

import numpy as np
import pytest

from svi_core.toy.world import ToyScene, WorldConfig, toy_clip, toy_first_frame


def test_same_seed_same_video_and_windows_agree():
    a = toy_clip(7, 9)
    b = toy_clip(7, 9)
    assert a.shape == (9, 48, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ToyScene(7).frames(4, 5), a[4:])
    np.testing.assert_array_equal(toy_first_frame(7), a[0])


def test_scenes_differ_and_move():
    a, b = toy_clip(1, 12), toy_clip(2, 12)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 10
    step = np.abs(np.diff(a.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    assert np.all(step > 0)  # shapes, camera and light change every frame


def test_size_must_be_multiple_of_16():
    with pytest.raises(ValueError, match="multiples of 16"):
        WorldConfig(height=60)
    small = toy_clip(3, 2, config=WorldConfig(height=32, width=48))
    assert small.shape == (2, 32, 48, 3)
