"""SVI Model Loader and SVI LoRA Loader.

Both build on ComfyUI's own loaders (``comfy.sd.load_diffusion_model``, ``comfy.sd.VAE``,
``comfy.sd.load_lora_for_models``). The SVI part: every LoRA key spelling is normalised to the
canonical ``diffusion_model.blocks.N...`` form ComfyUI applies (bare official SVI keys are
otherwise skipped by ComfyUI with one log line, so SVI would silently do nothing), and every
LoRA layer is checked against the model before it is applied.
"""

from __future__ import annotations

import comfy.lora
import comfy.lora_convert
import comfy.sd
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..svi_core import lora as svi_lora
from ..svi_core.clip_schedule import lora_name
from ..svi_core.errors import CheckpointError
from ..svi_core.log import logger
from ..svi_core.pose_inputs import load_lora_and_pose, refuse_model_without_pose_support
from .convert import module_shapes
from .dance import attach_pose_embedding
from .lora_patch import PatchedLora, record_lora
from .pose_patch import dit_width

NONE = "none"
SVI_LORA_NAME = "svi"
"""What a schedule calls the SVI Model Loader's LoRA(s) (``lora.svi``, on both experts)."""
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
_FP8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


def _model_options(weight_dtype: str) -> dict:
    """ComfyUI ``model_options`` for a weight dtype choice (same choices as Load Diffusion Model)."""
    if weight_dtype == "default":
        return {}
    if weight_dtype not in WEIGHT_DTYPES:
        raise CheckpointError(
            f"weight_dtype {weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}"
        )
    options: dict = {"dtype": getattr(torch, "float8_" + weight_dtype.split("_")[1])}
    if weight_dtype.endswith("_fast"):
        options["fp8_optimizations"] = True
    return options


def _diffusion_state_dict(model) -> dict[str, torch.Tensor]:
    """The DiT's tensors by its own key names (``blocks.0.self_attn.q.weight``)."""
    return model.model.diffusion_model.state_dict()


def apply_svi_lora(
    model, lora_path: str, strength: float, label: str = "the model", name: str | None = None
):
    """Validate the LoRA file at ``lora_path`` against ``model`` and apply it unmerged.

    ``model``: a ComfyUI MODEL (ModelPatcher) holding a Wan DiT. Returns a patched clone, made
    as ComfyUI's ``load_lora_for_models`` makes it (``clone`` + ``add_patches``), with the LoRA
    recorded under ``name`` (default: the file name, see ``svi_core.clip_schedule.lora_name``)
    so a per-clip schedule can re-patch its strength (``nodes/lora_patch.py``).
    Raises CheckpointError naming the LoRA file and the first layer that does not land on
    the model (a LoRA for another model, or one ComfyUI would silently skip). The SVI-Dance
    file (LoRA + pose embedding) also attaches its pose embedding to the clone
    (``nodes.dance``), refusing a model the embedding cannot drive before anything is applied.
    """
    lora, pose = load_lora_and_pose(lora_path)
    if pose is not None:
        refuse_model_without_pose_support(
            dit_width=dit_width(model),
            image_embedding=getattr(model.model.diffusion_model, "img_emb", None) is not None,
            pose_dim=pose.dim,
            source=lora_path,
            model=label,
        )
    sd = _diffusion_state_dict(model)
    svi_lora.validate_lora(lora, module_shapes(sd), lora_path=lora_path, model_name=label)
    canonical = svi_lora.canonical_state_dict(lora)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    for module in lora.entries:
        if svi_lora.CANONICAL_PREFIX + module not in key_map:
            raise CheckpointError(
                f"LoRA file '{lora_path}': layer '{module}' (key "
                f"'{lora.source_keys.get(module, module)}') is not a layer ComfyUI can patch "
                f"in {label}. Use a LoRA made for this Wan DiT."
            )
    weight = sd.get(next(iter(lora.entries)) + ".weight")
    if weight is not None and weight.dtype in _FP8:
        logger.warning(
            "LoRA '%s' is applied to %s whose weights are %s: ComfyUI merges LoRAs into the "
            "weights, and fp8 rounding loses most of an SVI LoRA's change. Load the fp16/bf16 "
            "model file (e.g. ..._fp16.safetensors) with weight_dtype 'default' instead.",
            lora_path,
            label,
            str(weight.dtype).replace("torch.", ""),
        )
    patches = comfy.lora.load_lora(comfy.lora_convert.convert_lora(canonical), key_map)
    patched = model.clone()
    if strength != 0:  # at 0 nothing is patched, but the record lets a schedule raise it
        patched.add_patches(patches, strength)
    record_lora(
        patched,
        PatchedLora(
            name=name or lora_name(lora_path),
            strength=float(strength),
            patches=patches,
            source=str(lora_path),
        ),
        label,
    )
    if pose is not None:
        attach_pose_embedding(patched, pose, lora_path)
    logger.info(
        "applied LoRA '%s' to %s: %d layers, rank %d, strength %g",
        lora_path,
        label,
        len(lora.entries),
        lora.rank,
        strength,
    )
    return patched


def _lora_choices() -> list[str]:
    return [NONE] + folder_paths.get_filename_list("loras")


def _load_model(name: str, weight_dtype: str):
    path = folder_paths.get_full_path_or_raise("diffusion_models", name)
    model = comfy.sd.load_diffusion_model(path, model_options=_model_options(weight_dtype))
    if not hasattr(model.model, "diffusion_model") or "WAN" not in type(model.model).__name__:
        raise CheckpointError(
            f"diffusion model '{name}' is not a Wan DiT (ComfyUI built "
            f"{type(model.model).__name__}); pick a Wan2.1 I2V or Wan2.2 I2V A14B file."
        )
    return model


class SVIModelLoader(io.ComfyNode):
    """Loads a Wan DiT with its SVI LoRA (and an optional second Wan2.2 expert) plus the VAE."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        models = folder_paths.get_filename_list("diffusion_models")
        return io.Schema(
            node_id="SVIModelLoader",
            display_name="SVI Model Loader",
            category="SVI/loaders",
            description=(
                "Loads a Wan DiT and applies its SVI LoRA (checked to land on every layer), an "
                "optional second expert (Wan2.2 A14B low-noise) with its own LoRA, and the "
                "Wan VAE."
            ),
            inputs=[
                io.Combo.Input(
                    "model_name",
                    options=models,
                    tooltip="Wan DiT in models/diffusion_models (Wan2.1 I2V 14B, or the Wan2.2 "
                    "I2V A14B high-noise expert).",
                ),
                io.Combo.Input(
                    "lora_name",
                    options=_lora_choices(),
                    tooltip="SVI LoRA for this DiT, from models/loras; any key spelling works. "
                    "svi-dance.safetensors also brings its pose embedding (mode dance).",
                ),
                io.Float.Input(
                    "lora_strength",
                    default=1.0,
                    min=-4.0,
                    max=4.0,
                    step=0.05,
                    tooltip="LoRA strength (1.0 is what SVI was trained for).",
                ),
                io.Combo.Input(
                    "vae_name",
                    options=folder_paths.get_filename_list("vae"),
                    tooltip="Wan2.1 VAE in models/vae (wan_2.1_vae.safetensors; Wan2.2 A14B "
                    "uses the same VAE).",
                ),
                io.Combo.Input(
                    "low_noise_model_name",
                    options=[NONE] + models,
                    default=NONE,
                    tooltip="Wan2.2 A14B only: the low-noise expert; 'none' for Wan2.1.",
                ),
                io.Combo.Input(
                    "low_noise_lora_name",
                    options=_lora_choices(),
                    default=NONE,
                    tooltip="SVI LoRA of the low-noise expert (Wan2.2 Pro ships one per expert).",
                ),
                io.Combo.Input(
                    "weight_dtype",
                    options=list(WEIGHT_DTYPES),
                    default="default",
                    tooltip="Weight precision, as in Load Diffusion Model. fp8 loses most of a "
                    "LoRA's change: keep 'default' with SVI.",
                ),
            ],
            outputs=[
                io.Model.Output(
                    "model",
                    display_name="model",
                    tooltip="The DiT with its SVI LoRA (high-noise expert on Wan2.2).",
                ),
                io.Model.Output(
                    "low_noise_model",
                    display_name="low_noise_model",
                    tooltip="The low-noise expert with its LoRA, or nothing on Wan2.1.",
                ),
                io.Vae.Output("vae", display_name="vae", tooltip="The Wan VAE."),
            ],
        )

    @classmethod
    def execute(
        cls,
        model_name: str,
        lora_name: str,
        lora_strength: float,
        vae_name: str,
        low_noise_model_name: str = NONE,
        low_noise_lora_name: str = NONE,
        weight_dtype: str = "default",
    ) -> io.NodeOutput:
        if low_noise_model_name == NONE and low_noise_lora_name != NONE:
            raise CheckpointError(
                f"low_noise_lora_name is '{low_noise_lora_name}' but no low-noise model is "
                "selected; pick the Wan2.2 low-noise expert or set the LoRA to 'none'."
            )
        model = _load_model(model_name, weight_dtype)
        if lora_name != NONE:
            path = folder_paths.get_full_path_or_raise("loras", lora_name)
            model = apply_svi_lora(model, path, lora_strength, f"'{model_name}'", SVI_LORA_NAME)
        low = None
        if low_noise_model_name != NONE:
            low = _load_model(low_noise_model_name, weight_dtype)
            if low_noise_lora_name != NONE:
                path = folder_paths.get_full_path_or_raise("loras", low_noise_lora_name)
                label = f"'{low_noise_model_name}'"
                low = apply_svi_lora(low, path, lora_strength, label, SVI_LORA_NAME)
        vae_path = folder_paths.get_full_path_or_raise("vae", vae_name)
        vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(vae_path))
        return io.NodeOutput(model, low, vae)


class SVILoraLoader(io.ComfyNode):
    """Applies any LoRA spelling to a Wan MODEL, refusing one that would not land."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SVILoraLoader",
            display_name="SVI LoRA Loader",
            category="SVI/loaders",
            description=(
                "Applies a Wan LoRA in any key spelling (official SVI bare keys, pipe.dit., "
                "kohya, diffusers) after checking that every layer lands on the model. Use it "
                "on each Wan2.2 expert with that expert's LoRA."
            ),
            inputs=[
                io.Model.Input(
                    "model", tooltip="A Wan DiT MODEL (e.g. from Load Diffusion Model)."
                ),
                io.Combo.Input(
                    "lora_name",
                    options=folder_paths.get_filename_list("loras"),
                    tooltip="LoRA file in models/loras (svi-dance.safetensors also attaches "
                    "its pose embedding for mode dance).",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=-4.0,
                    max=4.0,
                    step=0.05,
                    tooltip="LoRA strength (SVI: 1.0; a LightX2V speed LoRA: 0.5 on the "
                    "high-noise expert, 1.0 on the low-noise one).",
                ),
                io.String.Input(
                    "schedule_name",
                    default="",
                    optional=True,
                    tooltip="Name an SVI Schedule uses for this LoRA (lora.NAME=0.5); empty = "
                    "the file name (lower case, other characters as _).",
                ),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model with the LoRA applied.")
            ],
        )

    @classmethod
    def execute(
        cls, model, lora_name: str, strength: float, schedule_name: str = ""
    ) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("loras", lora_name)
        name = schedule_name.strip() or None
        return io.NodeOutput(apply_svi_lora(model, path, strength, "the connected model", name))
