"""The shipped toy models: a tiny Wan2.1-I2V-architecture DiT and Wan VAE trained on the toy world.

Files (``svi_core/assets``, official Wan key names, loadable by the project's own loaders and
by ComfyUI's ``Load Diffusion Model`` for the DiT):

- ``toy_wan_dit.safetensors``: Wan2.1 I2V DiT, dim 128 (1 head of 128), 4 layers, ffn 512,
  in 36 / out 16 channels, text_dim 4096, CLIP width 1280 (float16).
- ``toy_wan_dit.json``: its official ``WanModel`` config (``num_heads`` etc.).
- ``toy_wan_vae.safetensors``: Wan2.1 VAE layout, base width 16 (instead of 96), 16 latent
  channels, 8x spatial / 4x temporal compression (float32). Its raw latents follow the Wan2.1
  latent statistics, so ``svi_core.latents`` normalisation applies unchanged.

Toy conditioning (documented simplification): the text context is all zeros ``[1, 512, 4096]``
for every prompt and the CLIP-vision feature is all zeros ``[1, 257, 1280]``; the image reaches
the model only through the conditioning latent y. The models were trained at 48x64 pixels,
13-frame clips (see ``experiments/toyworld``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TOY_DIT = ASSETS / "toy_wan_dit.safetensors"
TOY_DIT_CONFIG = ASSETS / "toy_wan_dit.json"
TOY_VAE = ASSETS / "toy_wan_vae.safetensors"
TOY_HEIGHT, TOY_WIDTH, TOY_FRAMES = 48, 64, 13
TEXT_SHAPE = (1, 512, 4096)
IMAGE_SHAPE = (1, 257, 1280)


def _need(path: Path) -> Path:
    if not Path(path).is_file():
        raise CheckpointError(
            f"toy model file missing: {path}; it ships with the package in svi_core/assets "
            "(reinstall the pack, or rebuild it with experiments/toyworld/run_all.py)"
        )
    return Path(path)


def load_toy_dit(path: str | Path = TOY_DIT, config_json: str | Path | None = None):
    """The toy DiT as a float32 diffusers ``WanTransformer3DModel`` (inference mode)."""
    from ..checkpoints import dit_overrides_from_config, inspect_dit, load_dit_state_dict
    from ..standalone.models import load_wan_transformer

    path = _need(Path(path))
    cfg_path = Path(config_json) if config_json else path.with_suffix(".json")
    sd = load_dit_state_dict(path, dtype=torch.float32)
    dim = int(sd["patch_embedding.weight"].shape[0])
    overrides = dit_overrides_from_config(_need(cfg_path), dim=dim)
    config = inspect_dit(sd, overrides)
    return load_wan_transformer(path, config=config, dtype=torch.float32)


def load_toy_vae(path: str | Path = TOY_VAE):
    """The toy VAE as a float32 diffusers ``AutoencoderKLWan`` (inference mode)."""
    from ..standalone.models import load_wan_vae

    return load_wan_vae(_need(Path(path)), dtype=torch.float32)


def zero_text(prompt: str) -> torch.Tensor:
    """Toy text encoder: every prompt -> zeros ``[1, 512, 4096]``."""
    return torch.zeros(TEXT_SHAPE)


def zero_clip_vision(frame: torch.Tensor) -> torch.Tensor:
    """Toy CLIP vision: every frame -> zeros ``[1, 257, 1280]``."""
    return torch.zeros(IMAGE_SHAPE)


def toy_backend(
    lora: str | Path | None = None,
    strength: float = 1.0,
    dit_path: str | Path = TOY_DIT,
    vae_path: str | Path = TOY_VAE,
):
    """A :class:`~svi_core.standalone.backend.DiffusersBackend` over the toy models (CPU,
    float32), optionally with a LoRA file applied (any spelling ``svi_core.lora`` accepts)."""
    from ..lora import apply_lora_to_diffusers, load_lora
    from ..standalone.backend import DiffusersBackend

    dit = load_toy_dit(dit_path)
    if lora is not None:
        apply_lora_to_diffusers(dit, load_lora(_need(Path(lora))), strength)
    vae = load_toy_vae(vae_path)
    return DiffusersBackend(
        dit, vae, text_encoder=zero_text, image_encoder=zero_clip_vision, device="cpu"
    )
