"""Checks the nodes make before any long work; pure Python (no ComfyUI import), so tier-1
tests cover them with stand-in objects."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..svi_core.errors import RunMismatchError, SVIError
from ..svi_core.loop import PreparedRun
from ..svi_core.modes import ModeConfig, clip_vision_problem
from ..svi_core.run_store import LOCK, RunStore, sha256_json
from ..svi_core.schedule import NUM_TRAIN_TIMESTEPS, FlowSchedule, expert_switch_step
from .convert import run_directory, sanitise_run_name

EXISTING_RUN = ("resume or new", "resume", "new")


def check_models(mode: ModeConfig, model: Any, low_noise_model: Any, clip_vision: Any) -> None:
    """Refuse a model set that cannot run ``mode`` (before any work), saying what to connect."""
    for name, m in (("model", model), ("low_noise_model", low_noise_model)):
        if m is None:
            continue
        dit = getattr(getattr(m, "model", None), "diffusion_model", None)
        embed = getattr(dit, "patch_embedding", None)
        if embed is None:
            raise SVIError(f"{name} is not a Wan DiT; connect a Wan I2V diffusion model")
        if embed.weight.shape[1] != 36:
            raise SVIError(
                f"{name} takes {embed.weight.shape[1]} input channels; SVI needs a Wan "
                "image-to-video DiT (36 channels: Wan2.1 I2V 14B or Wan2.2 I2V A14B)"
            )
        has_img_emb = getattr(dit, "img_emb", None) is not None
        if mode.model == "wan2.1" and not has_img_emb:
            raise SVIError(
                f"mode {mode.name!r} is a Wan2.1 mode but {name} has no image embedding (a "
                "Wan2.2 expert?); use Wan2.1 I2V 14B, or pick v2_pro / v2_w22 for Wan2.2"
            )
        if mode.model == "wan2.2" and has_img_emb:
            raise SVIError(
                f"mode {mode.name!r} is a Wan2.2 mode but {name} is a Wan2.1 I2V DiT; pick a "
                "Wan2.1 mode (shot, film, tom, v2) or load the Wan2.2 A14B experts"
            )
    no_clip = clip_vision_problem(
        mode, clip_vision is not None, "connect Load CLIP Vision to the clip_vision input"
    )
    if no_clip:
        raise SVIError(no_clip)
    if mode.model == "wan2.1":
        if low_noise_model is not None:
            raise SVIError(
                f"mode {mode.name!r} (Wan2.1) uses one model; disconnect low_noise_model"
            )
    elif low_noise_model is None:
        raise SVIError(
            f"mode {mode.name!r} (Wan2.2 A14B) needs both experts: connect the high-noise model "
            "to model and the low-noise model to low_noise_model"
        )


def pick_run(root: str, run_name: str, policy: str, run: PreparedRun) -> RunStore:
    """Open the run directory for ``run_name`` under ``policy`` (see ``EXISTING_RUN``).

    ``resume``: reuse ``<name>`` (RunStoreError naming the difference if it holds another
    run); ``new``: the first free ``<name>_NNN``; ``resume or new``: reuse ``<name>`` when
    its settings and finished clips match, else the first ``<name>_NNN`` that matches or is
    free. A damaged run directory, or one another run is generating into, is never skipped:
    the error says what is wrong. Returns the open (locked) store; the caller closes it.
    """
    if policy not in EXISTING_RUN:
        raise SVIError(f"on_existing_run {policy!r} must be one of {', '.join(EXISTING_RUN)}")
    base = sanitise_run_name(run_name)
    for n in range(0, 1000):
        name = base if n == 0 else f"{base}_{n:03d}"
        path = run_directory(root, name)
        exists = os.path.isdir(path) and any(p != LOCK for p in os.listdir(path))
        if policy == "new" and exists:
            continue
        try:
            return run.open(path)
        except RunMismatchError:
            if policy == "resume":
                raise
    raise SVIError(f"run name {base!r}: 1000 runs of that name exist; pick another run name")


def expert_switch(sigmas: torch.Tensor, boundary: float | None) -> int:
    """First step index whose sigma (= t / 1000) is below ``boundary``: the low-noise expert
    runs from there on. ``len(sigmas) - 1`` (all steps high) when ``boundary`` is None.

    ``sigmas``: ComfyUI's N + 1 sigmas (any scheduler); the rule is
    ``svi_core.schedule.expert_switch_step``'s."""
    s = sigmas.detach().double().cpu()
    schedule = FlowSchedule(sigmas=s, timesteps=s[:-1] * NUM_TRAIN_TIMESTEPS)
    return expert_switch_step(schedule, boundary)


def _first_tensor(value: Any, depth: int = 0) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if depth > 4:
        return None
    if hasattr(value, "weights"):  # ComfyUI's LoRAAdapter
        return _first_tensor(value.weights, depth + 1)
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _first_tensor(item, depth + 1)
            if found is not None:
                return found
    return None


def model_fingerprint(model: Any) -> str:
    """A cheap identity of a ComfyUI MODEL for the run store, so a resume with another base
    model or other LoRAs / strengths is refused (or starts a new run).

    Covers: the DiT class, its patch embedding (shape and sum) and the LoRA patches (patched
    keys, strengths, and the sum of each patch's first tensor). Not a full weight hash.
    """
    dit = model.model.diffusion_model
    weight = dit.patch_embedding.weight
    patches = []
    for key in sorted(getattr(model, "patches", {}) or {}):
        for p in model.patches[key]:
            t = _first_tensor(p[1])
            total = None if t is None else round(float(t.detach().float().sum()), 4)
            patches.append([key, round(float(p[0]), 6), round(float(p[2]), 6), total])
    ident = [
        type(model.model).__name__,
        list(weight.shape),
        round(float(weight.detach().float().sum()), 4),
        patches,
    ]
    return sha256_json(ident)
