"""Euler flow-matching sampler with classifier-free guidance and two-expert switching.

Model-agnostic: the model is a :class:`VelocityFn` that returns the conditional and (when
guidance is on) unconditional velocity for a latent and a timestep. A backend may compute both
in one batched forward; the sampler only combines them:
``v = v_uncond + cfg * (v_cond - v_uncond)`` and steps ``x <- x + v * (s_next - s)``.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .backend import StepCallback
from .schedule import FlowSchedule, expert_switch_step, flow_schedule


class VelocityFn(Protocol):
    """``fn(x, timestep, expert, guided) -> (v_cond, v_uncond | None)``.

    ``x``: ``[1, 16, T, h, w]`` noisy NORMALISED latent (float32). ``timestep``: float on the
    0..1000 scale. ``expert``: 0 = the high-noise expert (or the only model), 1 = low-noise.
    ``guided``: True when CFG needs the unconditional velocity too (cfg != 1).
    Velocities are float32 tensors shaped like ``x`` (``v = noise - x0``).
    """

    def __call__(
        self, x: torch.Tensor, timestep: float, expert: int, guided: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


def sample_flow(
    velocity: VelocityFn,
    noise: torch.Tensor,
    *,
    steps: int,
    cfg: float,
    shift: float,
    boundary: float | None = None,
    on_step: StepCallback | None = None,
    schedule: FlowSchedule | None = None,
    timestep_dtype: torch.dtype | str | None = None,
) -> torch.Tensor:
    """Sample from ``noise`` (``[1, 16, T, h, w]`` unit Gaussian, NORMALISED space) to x0.

    Args:
        velocity: the model (see :class:`VelocityFn`).
        steps, shift: the official schedule (:func:`svi_core.schedule.flow_schedule`).
        cfg: guidance scale; 1 means one conditional pass per step.
        boundary: two experts: high-noise while ``t >= boundary * 1000``, then low-noise,
            never back. None: expert 0 throughout.
        on_step: ``on_step(done, total)`` after every step; may raise ``Cancelled``.
        timestep_dtype: round the timestep handed to ``velocity`` to this dtype (e.g.
            ``bfloat16`` like the official Wan2.2 pipelines); switching and stepping use the
            exact schedule.

    Returns:
        The denoised NORMALISED latent, float32, shaped like ``noise``.
    """
    sched = schedule if schedule is not None else flow_schedule(steps, shift)
    switch = expert_switch_step(sched, boundary)
    guided = cfg != 1.0
    x = noise.float().clone()
    total = sched.steps
    if isinstance(timestep_dtype, str):
        timestep_dtype = getattr(torch, timestep_dtype)
    for i in range(total):
        t = float(sched.timesteps[i])
        if timestep_dtype is not None:
            t = float(torch.tensor(t, dtype=torch.float32).to(timestep_dtype))
        expert = 0 if i < switch else 1
        v_cond, v_uncond = velocity(x, t, expert, guided)
        if guided:
            if v_uncond is None:
                raise RuntimeError("the velocity function returned no unconditional velocity")
            v = v_uncond.float() + cfg * (v_cond.float() - v_uncond.float())
        else:
            v = v_cond.float()
        dt = float(sched.sigmas[i + 1] - sched.sigmas[i])
        x = x + v * dt
        if on_step is not None:
            on_step(i + 1, total)
    return x
