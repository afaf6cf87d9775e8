"""wav2vec2 speech features for SVI-Talk, computed exactly the way the official code does.

Official ``utils/src/audio_analysis/wav2vec2.py:13-64`` + ``utils/audio_process.py:18-41``: the
TencentGameMate/chinese-wav2vec2-base model (transformers ``Wav2Vec2Model``, float32, CPU, inference mode), run
over the WHOLE recording at once:

1. feature extractor: float32 samples, zero-mean / unit-variance normalised ONLY if the folder's
   ``preprocessor_config.json`` says ``do_normalize`` (``(x - mean) / sqrt(var + 1e-7)``);
2. the convolutional feature encoder (50 frames per second, 512 channels);
3. linear interpolation (``align_corners=True``) to ``T_a = int(seconds * 25)`` frames, BEFORE the
   projection and the transformer (``torch_utils.py:16-19``), so the transformer runs at 25 Hz;
4. feature projection and the transformer encoder; the outputs of all its layers (the
   ``hidden_states[1:]`` of transformers, not the embedding) form ``[T_a, layers, hidden]``.

ComfyUI core instead runs the transformer at 50 Hz and interpolates its outputs to 25 fps afterwards;
that gives different features (see the project notes, TALK_RULES §5).

Only base-style models (post-LayerNorm encoder, ``do_stable_layer_norm`` false) are accepted: MultiTalk
reads 12 layers x 768 channels. Nothing is downloaded: the model comes from a local folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoints import load_state_dict
from ..errors import CheckpointError, SVIError
from ..log import logger
from ..talk.windows import AUDIO_FPS, feature_frame_count

if TYPE_CHECKING:  # pragma: no cover
    from transformers import Wav2Vec2Model

__all__ = [
    "Wav2Vec2Encoder",
    "Wav2Vec2Info",
    "inspect_wav2vec2",
    "load_wav2vec2",
    "wav2vec2_features",
]

_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
_PRETRAINING_PREFIXES = ("quantizer.", "project_q.", "project_hid.", "lm_head.", "dropout_features")
_HINT = (
    "SVI-Talk needs TencentGameMate/chinese-wav2vec2-base as a local folder (config.json, "
    "preprocessor_config.json, model.safetensors)"
)


@dataclass
class Wav2Vec2Encoder:
    """A loaded wav2vec2 and how its input is normalised.

    Attributes:
        model: transformers ``Wav2Vec2Model`` in inference mode.
        do_normalize: zero-mean / unit-variance input (from ``preprocessor_config.json``).
        source: the folder it was loaded from (for messages and fingerprints).
    """

    model: Wav2Vec2Model
    do_normalize: bool
    source: str

    @property
    def layers(self) -> int:
        """Transformer layers (12 for the base model)."""
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        """Channels per layer (768 for the base model)."""
        return int(self.model.config.hidden_size)

    def features(
        self, samples: np.ndarray | torch.Tensor, sample_rate: int = 16000, fps: float = AUDIO_FPS
    ) -> torch.Tensor:
        """See :func:`wav2vec2_features`."""
        return wav2vec2_features(self, samples, sample_rate, fps)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read '{path}' ({exc}). {_HINT}.") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"'{path}' is not a JSON object. {_HINT}.")
    return data


def _locate(path: Path) -> tuple[Path, Path]:
    """``(folder, weights file)`` for a folder or a weights file with config.json beside it."""
    if not path.exists():
        raise CheckpointError(f"wav2vec2 model not found: '{path}'. {_HINT}.")
    if path.is_file():
        return path.parent, path
    for name in _WEIGHT_NAMES:
        if (path / name).is_file():
            return path, path / name
    raise CheckpointError(
        f"'{path}' holds no wav2vec2 weights ({' or '.join(_WEIGHT_NAMES)}). {_HINT}; the official "
        "README downloads model.safetensors from revision refs/pr/1."
    )


def _normalise_keys(sd: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    parametrized = any(".parametrizations.weight." in k for k in model_keys)
    for k, v in sd.items():
        key = k[len("wav2vec2.") :] if k.startswith("wav2vec2.") else k
        if key.startswith(_PRETRAINING_PREFIXES):
            continue
        if parametrized:
            key = key.replace(".weight_g", ".parametrizations.weight.original0")
            key = key.replace(".weight_v", ".parametrizations.weight.original1")
        else:
            key = key.replace(".parametrizations.weight.original0", ".weight_g")
            key = key.replace(".parametrizations.weight.original1", ".weight_v")
        out[key] = v
    return out


@dataclass(frozen=True)
class Wav2Vec2Info:
    """What a local wav2vec2 folder holds, read from its JSON files (no weights loaded).

    Attributes:
        folder, weights, config_path: the folder, its weights file and its ``config.json``.
        config: the parsed ``config.json``.
        layers, hidden_size: transformer layers and channels (12 x 768 for the base model).
        do_normalize: zero-mean / unit-variance input (``preprocessor_config.json``).
    """

    folder: Path
    weights: Path
    config_path: Path
    config: dict[str, Any]
    layers: int
    hidden_size: int
    do_normalize: bool

    def describe(self) -> str:
        """A short identity of the encoder kind (for the run identity and messages)."""
        return f"wav2vec2 {self.layers}x{self.hidden_size} do_normalize={self.do_normalize}"


def inspect_wav2vec2(path: str | os.PathLike[str]) -> Wav2Vec2Info:
    """Check a local wav2vec2 folder (or its weights file) before loading anything.

    Raises:
        CheckpointError: missing folder/files, a config of another kind (not wav2vec2, or a
            stable-layer-norm "large" variant), naming the file.
    """
    folder, weights = _locate(Path(path))
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"'{folder}' has no config.json. {_HINT}.")
    cfg_dict = _read_json(cfg_path)
    kind = cfg_dict.get("model_type")
    if kind != "wav2vec2":
        raise CheckpointError(
            f"'{cfg_path}' describes a model of type '{kind}', not wav2vec2. {_HINT}."
        )
    if cfg_dict.get("do_stable_layer_norm"):
        raise CheckpointError(
            f"'{cfg_path}' is a stable-layer-norm (large-style) wav2vec2; MultiTalk reads the 12 x 768 "
            f"features of a base model. {_HINT}."
        )
    pre_path = folder / "preprocessor_config.json"
    if not pre_path.is_file():
        raise CheckpointError(
            f"'{folder}' has no preprocessor_config.json (it says whether the input is normalised). "
            f"{_HINT}."
        )
    do_normalize = bool(_read_json(pre_path).get("do_normalize", True))
    try:
        layers = int(cfg_dict.get("num_hidden_layers", 12))
        hidden = int(cfg_dict.get("hidden_size", 768))
    except (TypeError, ValueError):
        raise CheckpointError(
            f"'{cfg_path}': num_hidden_layers / hidden_size are not numbers"
        ) from None
    return Wav2Vec2Info(folder, weights, cfg_path, cfg_dict, layers, hidden, do_normalize)


def load_wav2vec2(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> Wav2Vec2Encoder:
    """Load a local wav2vec2 (official: float32 on the CPU) for SVI-Talk features.

    ``path``: the model folder (``config.json``, ``preprocessor_config.json``, ``model.safetensors`` or
    ``pytorch_model.bin``), or its weights file. Pretraining heads (quantizer, project_q/hid) and a
    ``wav2vec2.`` prefix are accepted and ignored.

    Raises:
        CheckpointError: missing folder/files, a config of another kind (not wav2vec2, or a
            stable-layer-norm "large" variant), or weights that do not fit the config, naming the file.
    """
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    info = inspect_wav2vec2(path)
    folder, weights, cfg_path = info.folder, info.weights, info.config_path
    cfg_dict, do_normalize = info.config, info.do_normalize
    config = Wav2Vec2Config.from_dict(cfg_dict)
    model = Wav2Vec2Model(config)
    expected = model.state_dict()
    sd = _normalise_keys(load_state_dict(weights, dtype=torch.float32), set(expected))
    optional = {"masked_spec_embed"}
    missing = sorted(set(expected) - set(sd) - optional)
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        first = f"missing '{missing[0]}'" if missing else f"unexpected '{unexpected[0]}'"
        raise CheckpointError(
            f"'{weights}' does not fit the wav2vec2 described by {cfg_path} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors; {first}). {_HINT}."
        )
    for k, v in sd.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(
                f"'{weights}': tensor '{k}' is {tuple(v.shape)}, the config needs "
                f"{tuple(expected[k].shape)}; the weights belong to another model size. {_HINT}."
            )
    model.load_state_dict(sd, strict=False)
    model = model.to(device).train(False).requires_grad_(False)
    logger.info(
        "loaded wav2vec2 '%s': %d layers x %d, do_normalize=%s",
        folder,
        config.num_hidden_layers,
        config.hidden_size,
        do_normalize,
    )
    return Wav2Vec2Encoder(model=model, do_normalize=do_normalize, source=str(folder))


@torch.no_grad()
def wav2vec2_features(
    encoder: Wav2Vec2Encoder,
    samples: np.ndarray | torch.Tensor,
    sample_rate: int = 16000,
    fps: float = AUDIO_FPS,
) -> torch.Tensor:
    """Frame-indexed speech features ``[T_a, layers, hidden]`` float32 (CPU) for a whole recording.

    ``samples``: mono ``[N]`` float at ``sample_rate`` (16 kHz, loudness-normalised:
    :func:`svi_core.talk.load_audio`). ``T_a = int(N / sample_rate * fps)``; the CNN features are
    linearly interpolated to ``T_a`` frames before the transformer (official order).
    """
    if sample_rate != 16000:
        raise SVIError(f"wav2vec2 expects 16 kHz audio; got {sample_rate} Hz (use load_audio)")
    x = samples.detach().cpu().numpy() if isinstance(samples, torch.Tensor) else np.asarray(samples)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise SVIError(f"expected mono samples [N]; got shape {x.shape}")
    t_a = feature_frame_count(len(x), sample_rate, fps)
    if t_a < 2:
        raise SVIError(
            f"audio of {len(x) / sample_rate:.2f} s gives {t_a} feature frames; too short"
        )
    if encoder.do_normalize:  # transformers' zero_mean_unit_var_norm (float32 numpy)
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    model = encoder.model
    p = next(model.parameters())
    wave = torch.from_numpy(np.ascontiguousarray(x)).to(p.device, p.dtype).unsqueeze(0)
    cnn = model.feature_extractor(wave)  # [1, 512, N50]
    cnn = F.interpolate(cnn, size=t_a, mode="linear", align_corners=True).transpose(1, 2)
    hidden, _ = model.feature_projection(cnn)
    outputs: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_hook(
            lambda _m, _a, out: outputs.append(out[0] if isinstance(out, tuple) else out)
        )
        for layer in model.encoder.layers
    ]
    try:
        model.encoder(hidden)
    finally:
        for h in hooks:
            h.remove()
    if len(outputs) != len(model.encoder.layers):  # pragma: no cover - no layerdrop here
        raise RuntimeError(f"captured {len(outputs)} of {len(model.encoder.layers)} layer outputs")
    feats = torch.stack(outputs, dim=0)[:, 0]  # [layers, T_a, hidden]
    return feats.permute(1, 0, 2).float().cpu().contiguous()
