"""LoRAs whose strength can change from clip to clip on a diffusers Wan DiT.

A per-clip schedule may set a LoRA's strength for some clips (the SVI LoRA at 0 for the first
clip, a speed LoRA at 0.5 on some clips). Merging and un-merging a LoRA into bf16 weights at
every change would make a clip's weights depend on the clips before it (rounding), so a
resumed run would differ from an uninterrupted one. Instead, each such LoRA is applied
UNMERGED, and a clip's weights depend only on its own strengths:

* low-rank layers (``lora_A`` / ``lora_B`` on a Linear: every SVI and LightX2V attention / FFN
  layer) run as a forward hook adding ``scale * B(A(x))`` to the layer's output (strength 0:
  skipped);
* full differences (``.diff`` / ``.diff_b`` on norms, biases, the modulation table) and
  low-rank conv layers are re-merged from a kept copy of the original parameter when a
  strength changes: ``p = original + sum(strength_i * delta_i)`` (float32 math), so the
  result never depends on the order of changes.

Cost: per hooked layer and step, two thin matmuls of rank r (for a rank-128 LoRA on Wan 14B
about ``r * (in + out) / (in * out)``, 3-5 % more FLOPs per LoRA); memory: the LoRA tensors
plus a copy of each parameter patched by a full difference (norms, biases, modulation: small).
LoRAs a schedule never changes stay merged as before (``svi_core.lora.apply_lora_to_diffusers``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import CheckpointError, SVIError
from ..lora import (
    LoraWeights,
    _diffusers_params,
    lora_bias_delta,
    lora_delta,
    validate_lora,
)
from ..wan_keys import diffusers_to_official


def _official_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    out: dict[str, torch.nn.Module] = {}
    for name, module in model.named_modules():
        try:
            out[diffusers_to_official(name)] = module
        except KeyError:
            continue
    return out


class SwitchableLoras:
    """LoRAs on one diffusers Wan DiT whose strengths can be set per clip.

    Args:
        model: a diffusers ``WanTransformer3DModel`` (on its final device and dtype).
        loras: key (the schedule's ``ClipPlan.lora_strengths`` key) -> (LoRA, strength as
            loaded). Each LoRA is validated against the model first.
    """

    def __init__(
        self, model: torch.nn.Module, loras: Mapping[str, tuple[LoraWeights, float]]
    ) -> None:
        self.model = model
        self.loaded = {k: float(s) for k, (_, s) in loras.items()}
        self.current: dict[str, float] = {}
        targets = _diffusers_params(model)
        modules = _official_modules(model)
        shapes = {k: tuple(w.shape) for k, (w, _) in targets.items()}
        # module -> [(key, A, B, scale per unit strength)]
        self._low_rank: dict[torch.nn.Module, list[tuple[str, torch.Tensor, torch.Tensor, float]]]
        self._low_rank = {}
        # parameter -> (original copy, [(key, entry, is_bias, weight shape)])
        self._remerge: dict[torch.nn.Parameter, tuple[torch.Tensor, list[tuple[Any, ...]]]] = {}
        for key, (lora, _) in loras.items():
            validate_lora(lora, shapes, model_name="the DiT")
            for module_name, entry in lora.entries.items():
                weight, bias = targets[module_name]
                if entry.diff_b is not None and bias is None:
                    raise CheckpointError(
                        f"LoRA file '{lora.source}': '{module_name}' patches a bias, but the "
                        "DiT layer has none. The LoRA is for another model."
                    )
                module = modules.get(module_name)
                linear = isinstance(module, torch.nn.Linear) and module.weight is weight
                if entry.lora_a is not None and entry.lora_b is not None and linear:
                    a = entry.lora_a.flatten(1).to(weight.device, weight.dtype)
                    b = entry.lora_b.flatten(1).to(weight.device, weight.dtype)
                    self._low_rank.setdefault(module, []).append((key, a, b, entry.scale(1.0)))
                    if entry.diff is not None:
                        self._add_remerge(weight, key, entry, False, tuple(weight.shape))
                elif entry.lora_a is not None or entry.diff is not None:
                    self._add_remerge(weight, key, entry, False, tuple(weight.shape))
                if entry.diff_b is not None:
                    self._add_remerge(bias, key, entry, True, tuple(weight.shape))
        self._handles = [m.register_forward_hook(self._hook) for m in self._low_rank]
        self.set({})

    def _add_remerge(self, param, key, entry, is_bias: bool, shape) -> None:
        if param not in self._remerge:
            self._remerge[param] = (param.detach().clone(), [])
        low_rank_done = entry.lora_a is not None and not is_bias and self._is_hooked(param)
        self._remerge[param][1].append((key, entry, is_bias, shape, low_rank_done))

    def _is_hooked(self, param) -> bool:
        return any(m.weight is param for m in self._low_rank)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.loaded)

    def _hook(self, module: torch.nn.Module, inputs: tuple[Any, ...], output: torch.Tensor):
        x = inputs[0]
        for key, a, b, unit in self._low_rank[module]:
            s = self.current[key]
            if s != 0.0:
                output = output + F.linear(F.linear(x.to(a.dtype), a), b).to(output.dtype) * (
                    s * unit
                )
        return output

    @torch.no_grad()
    def set(self, strengths: Mapping[str, float]) -> None:
        """Set every LoRA's strength: ``strengths[key]``, else its loaded strength.

        Raises:
            SVIError: a key this model has no switchable LoRA for.
        """
        unknown = sorted(set(strengths) - set(self.loaded))
        if unknown:
            raise SVIError(
                f"no switchable LoRA {unknown[0]!r} on this model (have: "
                f"{', '.join(self.loaded) or 'none'})"
            )
        new = {k: float(strengths.get(k, s)) for k, s in self.loaded.items()}
        if new == self.current:
            return
        changed = {k for k in new if self.current.get(k) != new[k]}
        self.current = new
        for param, (original, parts) in self._remerge.items():
            if not any(p[0] in changed for p in parts):
                continue
            value = original.to(torch.float32)
            for key, entry, is_bias, shape, low_rank_done in parts:
                s = new[key]
                if s == 0.0:
                    continue
                if is_bias:
                    value = value + lora_bias_delta(entry, s).to(value.device)
                elif low_rank_done:  # the low-rank part runs in the hook: only the diff here
                    value = value + (entry.diff.to(torch.float32) * s).reshape(shape).to(
                        value.device
                    )
                else:
                    value = value + lora_delta(entry, s, shape).to(value.device)
            param.copy_(value.to(param.dtype))

    def remove(self) -> None:
        """Remove the hooks and restore the original parameters."""
        for h in self._handles:
            h.remove()
        self._handles = []
        with torch.no_grad():
            for param, (original, _) in self._remerge.items():
                param.copy_(original)
