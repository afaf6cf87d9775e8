"""The official shifted flow-matching schedule (DiffSynth ``FlowMatchScheduler``, SVI settings).

``sigma_i = linspace(1, 0, N + 1)[:-1]``, shifted ``s' = shift * s / (1 + (shift - 1) * s)``,
DiT timestep ``t = 1000 * s'``; the last Euler step goes to sigma 0. Computed in float64 (the
official code uses float32 torch; the two differ by < 1e-7 in sigma).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class FlowSchedule:
    """A sampling schedule.

    Attributes:
        sigmas: N + 1 values, float64, from 1 (pure noise) down to the terminal 0.
        timesteps: the N DiT timesteps ``1000 * sigmas[:-1]`` (0..1000 scale), float64.
    """

    sigmas: torch.Tensor
    timesteps: torch.Tensor

    @property
    def steps(self) -> int:
        return int(self.timesteps.numel())


def flow_schedule(steps: int, shift: float = 5.0, denoising_strength: float = 1.0) -> FlowSchedule:
    """The official schedule for ``steps`` Euler steps (SVI: 50 steps, shift 5)."""
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    if shift <= 0:
        raise ValueError(f"shift={shift} must be > 0")
    if not 0.0 < denoising_strength <= 1.0:
        raise ValueError(f"denoising_strength={denoising_strength} must be in (0, 1]")
    s = torch.linspace(denoising_strength, 0.0, steps + 1, dtype=torch.float64)[:-1]
    s = shift * s / (1.0 + (shift - 1.0) * s)
    sigmas = torch.cat([s, torch.zeros(1, dtype=torch.float64)])
    return FlowSchedule(sigmas=sigmas, timesteps=s * NUM_TRAIN_TIMESTEPS)


def expert_switch_step(schedule: FlowSchedule, boundary: float | None) -> int:
    """Index of the first step run by the low-noise expert.

    The high-noise expert runs while ``t >= boundary * 1000`` and never comes back (the
    timesteps decrease). Returns ``schedule.steps`` when there is one model (``boundary`` None)
    or every step is above the boundary. 50 steps, shift 5, boundary 0.875 -> 21.
    """
    if boundary is None:
        return schedule.steps
    below = (schedule.timesteps < boundary * NUM_TRAIN_TIMESTEPS).nonzero()
    return int(below[0, 0]) if below.numel() else schedule.steps
