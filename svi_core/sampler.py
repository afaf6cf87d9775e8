"""Euler flow-matching sampler with guidance and two-expert switching.

Model-agnostic: the model is a :class:`VelocityFn` that returns one velocity per guidance
pass (:attr:`svi_core.guidance.Guidance.passes`: the conditional pass, the unconditional
one, and SVI-Talk's drop-text pass) for a latent and a timestep. A backend may compute them in
one batched forward; the sampler only combines them (:meth:`Guidance.combine`, e.g.
``v = v_uncond + cfg * (v_cond - v_uncond)``) and steps ``x <- x + v * (s_next - s)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from .backend import StepCallback
from .guidance import Guidance, GuidancePass
from .schedule import FlowSchedule, expert_switch_step, flow_schedule


class VelocityFn(Protocol):
    """``fn(x, timestep, expert, passes) -> [v_pass for pass in passes]``.

    ``x``: ``[1, 16, T, h, w]`` noisy NORMALISED latent (float32). ``timestep``: float on the
    0..1000 scale. ``expert``: 0 = the high-noise expert (or the only model), 1 = low-noise.
    ``passes``: the guidance passes to run (text and nulled extra conditions per pass); one
    pass means no guidance. Velocities are float32 tensors shaped like ``x``
    (``v = noise - x0``), one per pass, in order.
    """

    def __call__(
        self, x: torch.Tensor, timestep: float, expert: int, passes: Sequence[GuidancePass]
    ) -> Sequence[torch.Tensor]: ...


def sample_flow(
    velocity: VelocityFn,
    noise: torch.Tensor,
    *,
    steps: int,
    guidance: Guidance | float,
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
        guidance: how the passes combine (a float g means classifier-free guidance with
            scale g; 1 = one conditional pass per step).
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
    if not isinstance(guidance, Guidance):
        guidance = Guidance(scale=float(guidance))
    passes = guidance.passes
    x = noise.float().clone()
    total = sched.steps
    if isinstance(timestep_dtype, str):
        timestep_dtype = getattr(torch, timestep_dtype)
    for i in range(total):
        t = float(sched.timesteps[i])
        if timestep_dtype is not None:
            t = float(torch.tensor(t, dtype=torch.float32).to(timestep_dtype))
        expert = 0 if i < switch else 1
        v = guidance.combine(velocity(x, t, expert, passes))
        dt = float(sched.sigmas[i + 1] - sched.sigmas[i])
        x = x + v * dt
        if on_step is not None:
            on_step(i + 1, total)
    return x
