"""Procedurally generated toy videos: seeded, deterministic, fast on a CPU.

A scene is a textured background (sum of a few random sinusoid gratings, wider than the view so
the camera can pan over it), 2-4 coloured shapes (discs and squares) that move and bounce, and
a slow global lighting change. Everything is derived from one integer seed, so the same seed
gives the same video bit for bit.

Frames are uint8 ``[N, H, W, 3]`` (RGB). H and W default to 48 x 64 (multiples of 16, as Wan
needs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WorldConfig:
    """Size and dynamics of the toy world.

    Attributes:
        height, width: frame size in pixels (multiples of 16).
        min_shapes, max_shapes: number of moving shapes per scene (inclusive range).
        max_speed: largest shape speed in pixels per frame.
        max_pan: largest camera pan speed in pixels per frame.
        light_amplitude: largest relative brightness swing of the lighting change.
        light_period: frames per lighting cycle (slowest; each scene draws its own).
    """

    height: int = 48
    width: int = 64
    min_shapes: int = 2
    max_shapes: int = 4
    max_speed: float = 1.5
    max_pan: float = 0.8
    light_amplitude: float = 0.15
    light_period: float = 120.0

    def __post_init__(self) -> None:
        if self.height % 16 or self.width % 16 or self.height <= 0 or self.width <= 0:
            raise ValueError(
                f"toy world size {self.height}x{self.width}: height and width must be positive "
                "multiples of 16 (Wan needs them); pick e.g. 48x64"
            )
        if not 1 <= self.min_shapes <= self.max_shapes:
            raise ValueError(
                f"min_shapes={self.min_shapes}, max_shapes={self.max_shapes}: need "
                "1 <= min_shapes <= max_shapes"
            )


TOY_WORLD = WorldConfig()


@dataclass(frozen=True)
class _Shape:
    kind: int  # 0 disc, 1 square
    radius: float
    color: np.ndarray  # [3] float in [0, 1]
    pos: np.ndarray  # [2] (y, x) at frame 0
    vel: np.ndarray  # [2] pixels per frame


class ToyScene:
    """One seeded scene; ``frames(start, count)`` renders any window of its endless video."""

    def __init__(self, seed: int, config: WorldConfig = TOY_WORLD) -> None:
        self.seed = int(seed)
        self.config = config
        rng = np.random.default_rng(self.seed)
        h, w = config.height, config.width
        # Background texture over a periodic canvas 2x the view (camera wraps around).
        self._bg_h, self._bg_w = 2 * h, 2 * w
        yy, xx = np.mgrid[0 : self._bg_h, 0 : self._bg_w].astype(np.float32)
        base = rng.uniform(0.2, 0.8, size=3).astype(np.float32)
        tex = np.zeros((self._bg_h, self._bg_w, 3), np.float32) + base
        for _ in range(4):
            fy = rng.integers(1, 5) / self._bg_h
            fx = rng.integers(1, 7) / self._bg_w
            phase = rng.uniform(0, 2 * np.pi)
            wave = np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)
            tint = rng.uniform(-0.15, 0.15, size=3).astype(np.float32)
            tex += wave[..., None] * tint
        # a checker of fine detail so sharpness is measurable
        cell = int(rng.integers(4, 9))
        checker = (((yy // cell) + (xx // cell)) % 2).astype(np.float32) - 0.5
        tex += checker[..., None] * rng.uniform(0.04, 0.1)
        self._bg = np.clip(tex, 0.0, 1.0)
        self._pan = rng.uniform(-config.max_pan, config.max_pan, size=2).astype(np.float32)
        n = int(rng.integers(config.min_shapes, config.max_shapes + 1))
        shapes = []
        for _ in range(n):
            r = float(rng.uniform(0.08, 0.16) * min(h, w))
            shapes.append(
                _Shape(
                    kind=int(rng.integers(0, 2)),
                    radius=r,
                    color=rng.uniform(0.0, 1.0, size=3).astype(np.float32),
                    pos=np.array([rng.uniform(r, h - r), rng.uniform(r, w - r)], np.float32),
                    vel=rng.uniform(-config.max_speed, config.max_speed, size=2).astype(np.float32),
                )
            )
        self._shapes = tuple(shapes)
        self._light_period = float(rng.uniform(0.5, 1.0) * config.light_period)
        self._light_phase = float(rng.uniform(0, 2 * np.pi))
        self._light_amp = float(rng.uniform(0.3, 1.0) * config.light_amplitude)
        self._yy, self._xx = np.mgrid[0:h, 0:w].astype(np.float32)

    def _bounce(self, p0: float, v: float, t: float, lo: float, hi: float) -> float:
        """Position at time t of a point bouncing between lo and hi (reflecting walls)."""
        span = hi - lo
        if span <= 0:
            return lo
        u = (p0 - lo + v * t) % (2 * span)
        return lo + (u if u <= span else 2 * span - u)

    def frame(self, t: int) -> np.ndarray:
        """Frame t (any integer >= 0) as uint8 ``[H, W, 3]``."""
        h, w = self.config.height, self.config.width
        oy = int(np.floor(self._pan[0] * t)) % self._bg_h
        ox = int(np.floor(self._pan[1] * t)) % self._bg_w
        img = np.roll(self._bg, shift=(-oy, -ox), axis=(0, 1))[:h, :w].copy()
        for s in self._shapes:
            cy = self._bounce(float(s.pos[0]), float(s.vel[0]), t, s.radius, h - s.radius)
            cx = self._bounce(float(s.pos[1]), float(s.vel[1]), t, s.radius, w - s.radius)
            if s.kind == 0:
                d = np.sqrt((self._yy - cy) ** 2 + (self._xx - cx) ** 2) - s.radius
            else:
                d = np.maximum(np.abs(self._yy - cy), np.abs(self._xx - cx)) - s.radius
            alpha = np.clip(0.5 - d, 0.0, 1.0)[..., None]  # 1-pixel antialiased edge
            shade = 0.85 + 0.15 * np.clip((cy - self._yy) / (2 * s.radius) + 0.5, 0, 1)
            img = img * (1 - alpha) + alpha * (s.color * shade[..., None])
        light = 1.0 + self._light_amp * np.sin(
            2 * np.pi * t / self._light_period + self._light_phase
        )
        img = np.clip(img * light, 0.0, 1.0)
        return (img * 255.0 + 0.5).astype(np.uint8)

    def frames(self, start: int, count: int) -> np.ndarray:
        """Frames ``start .. start + count - 1`` as uint8 ``[count, H, W, 3]``."""
        if start < 0 or count < 0:
            raise ValueError(f"frames(start={start}, count={count}): both must be >= 0")
        return np.stack([self.frame(start + i) for i in range(count)], axis=0)


def toy_clip(
    seed: int, num_frames: int, start: int = 0, config: WorldConfig = TOY_WORLD
) -> np.ndarray:
    """uint8 ``[num_frames, H, W, 3]`` from scene ``seed`` starting at frame ``start``."""
    return ToyScene(seed, config).frames(start, num_frames)


def toy_first_frame(seed: int, config: WorldConfig = TOY_WORLD) -> np.ndarray:
    """uint8 ``[H, W, 3]``: frame 0 of scene ``seed`` (a held-out reference image)."""
    return ToyScene(seed, config).frame(0)
