"""Error-Recycling Fine-Tuning (ERFT) math: small pure functions, one per idea.

Everything here follows the official ``train_svi.py`` and its DiffSynth ``FlowMatchScheduler``
(``shift=5, sigma_min=0, extra_one_step=True``):

* training schedule: 1000 sigmas ``s = linspace(1, 0, 1001)[:-1]`` shifted by 5, timestep
  ``t = 1000 * s'``; a step draws a timestep index uniformly;
* loss weight per timestep: ``y = exp(-2 ((t - 500) / 1000)^2)``, ``w = (y - min y) * 1000 /
  sum(y - min y)`` (w = 0 at t = 1000, max about 2.08, mean 1);
* error-bank cells: the 50 inference timesteps (same schedule, 50 steps), nearest cell;
* ``x_t = (1 - s) x0~ + s n~``; target ``v = n~ - x0`` (clean x0); weighted MSE in fp32;
* one-step bidirectional errors: ``E_noi = (1 - s)(v_hat - v)`` (Euler step to s = 1),
  ``E_vid = -s (v_hat - v)`` (Euler step to s = 0).

Latent tensors are NORMALISED Wan2.1 latents ``[B, 16, T, H/8, W/8]`` unless stated otherwise.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from svi_core.schedule import flow_schedule


def schedule_timesteps(num_steps: int, shift: float = 5.0) -> torch.Tensor:
    """DiT timesteps ``1000 * s'`` (float64 ``[num_steps]``, descending, first = 1000): the
    inference schedule of :func:`svi_core.schedule.flow_schedule`."""
    return flow_schedule(num_steps, shift).timesteps


def loss_weights(timesteps: torch.Tensor) -> torch.Tensor:
    """Per-timestep loss weights for the training schedule ``timesteps`` (float64 ``[N]``).

    ``y = exp(-2 * ((t - N/2) / N) ** 2)``, ``w = (y - min y) * N / sum(y - min y)``, with N the
    number of training timesteps (1000 officially: centre 500, width 1000). Mean of w is 1.
    """
    n = timesteps.numel()
    t = timesteps.double()
    y = torch.exp(-2.0 * ((t - n / 2) / n) ** 2)
    y = y - y.min()
    return y * (n / y.sum())


def nearest_index(grid: torch.Tensor, t: float) -> int:
    """Index of the grid entry nearest to timestep ``t`` (first one on ties, like ``argmin``)."""
    return int(torch.argmin((grid.double() - float(t)).abs()).item())


@dataclass(frozen=True)
class TimestepDraw:
    """One training timestep: ``index`` into the training schedule, DiT timestep ``t`` (0..1000),
    sigma ``s`` (0..1) and loss weight ``weight``."""

    index: int
    t: float
    s: float
    weight: float


@dataclass(frozen=True)
class TrainingSchedule:
    """The 1000-step shift-5 training schedule with its loss weights (all float64 ``[N]``)."""

    sigmas: torch.Tensor
    timesteps: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def build(cls, num_steps: int = 1000, shift: float = 5.0) -> TrainingSchedule:
        sched = flow_schedule(num_steps, shift)
        sigmas, timesteps = sched.sigmas[:-1], sched.timesteps
        return cls(sigmas=sigmas, timesteps=timesteps, weights=loss_weights(timesteps))

    def draw(self, generator: torch.Generator) -> TimestepDraw:
        """A timestep index drawn uniformly (``torch.randint`` on ``generator``)."""
        i = int(torch.randint(0, self.timesteps.numel(), (1,), generator=generator).item())
        return self.at(i)

    def at(self, index: int) -> TimestepDraw:
        return TimestepDraw(
            index=index,
            t=float(self.timesteps[index]),
            s=float(self.sigmas[index]),
            weight=float(self.weights[index]),
        )


@dataclass(frozen=True)
class InjectionProbs:
    """Probabilities of the three error injections and of a clean step (official launch scripts:
    noise 0.01, latent 0.9, condition 0.9, clean 0.2 for shot / 0.5 for film)."""

    noise: float = 0.01
    latent: float = 0.9
    condition: float = 0.9
    clean: float = 0.2


@dataclass(frozen=True)
class InjectionDraw:
    """Which errors this step injects; ``clean`` means none (and banks update with low prob)."""

    noise: bool
    latent: bool
    condition: bool
    clean: bool


def draw_injections(rng: random.Random, probs: InjectionProbs) -> InjectionDraw:
    """Four independent uniform draws in the official order (noise, condition, latent, clean);
    a clean draw switches all three injections off."""
    noise = rng.random() < probs.noise
    condition = rng.random() < probs.condition
    latent = rng.random() < probs.latent
    clean = rng.random() < probs.clean
    if clean:
        return InjectionDraw(noise=False, latent=False, condition=False, clean=True)
    return InjectionDraw(noise=noise, latent=latent, condition=condition, clean=False)


def noisy_latent(x0: torch.Tensor, noise: torch.Tensor, s: float) -> torch.Tensor:
    """``x_t = (1 - s) * x0 + s * noise`` (same layout as the inputs)."""
    return (1.0 - s) * x0 + s * noise


def flow_target(x0_clean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Velocity target ``v = noise - x0_clean``; ERFT passes the error-injected noise and the
    CLEAN latent, so the model learns to steer back to the clean video."""
    return noise - x0_clean


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: float) -> torch.Tensor:
    """``weight * mean((pred - target)^2)`` computed in float32; a 0-dim float32 tensor."""
    return torch.nn.functional.mse_loss(pred.float(), target.float()) * weight


def bidirectional_errors(
    v_hat: torch.Tensor, v: torch.Tensor, s: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-step errors of a velocity prediction at sigma ``s`` (float32, layout of ``v``).

    ``E_noi = (1 - s)(v_hat - v)``: predicted minus true endpoint of one Euler step to s = 1
    (the noise end); ``E_vid = -s (v_hat - v)``: the same for one step to s = 0 (the clean end).
    """
    d = v_hat.float() - v.float()
    return (1.0 - s) * d, -s * d


def condition_error_window(error: torch.Tensor, num: int, rng: random.Random) -> torch.Tensor:
    """A window of ``num`` latent frames of ``error`` ``[B, 16, T, h, w]``, starting uniformly in
    ``[0, T - num]`` (whole tensor if T <= num); returns ``[B, 16, min(num, T), h, w]``."""
    t = error.shape[2]
    start = rng.randint(0, max(0, t - num))
    return error[:, :, start : start + num]


def add_condition_error(y: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Add ``window`` ``[B, 16, k, h, w]`` to the latent channels (4:) of the first k latent
    frames of the image condition ``y`` ``[B, 20, T, h, w]`` (mask channels 0:4 untouched).
    Returns a new tensor."""
    if y.shape[1] != 4 + window.shape[1]:
        raise ValueError(
            f"condition y must have 4 mask + {window.shape[1]} latent channels; got {y.shape[1]}"
        )
    k = window.shape[2]
    out = y.clone()
    out[:, 4:, :k] = out[:, 4:, :k] + window.to(y.dtype)
    return out
