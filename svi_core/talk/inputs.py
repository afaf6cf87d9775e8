"""SVI-Talk's inputs on the command line: checked before any model is loaded, then turned into the
run's :class:`~svi_core.talk.condition.AudioCondition` and the standalone backend's audio hook.

``python -m svi_core generate --mode talk --audio speech.wav --multitalk multitalk.safetensors
--wav2vec chinese-wav2vec2-base/ ...``. Checks (each names the file and the fix):

* the speech decodes, is not silent, lasts at least 0.4 s (:func:`svi_core.talk.load_audio`); the
  loop then refuses speech shorter than one clip;
* the wav2vec2 folder is a base-style wav2vec2 (``config.json`` read, no weights loaded);
* the MultiTalk file holds MultiTalk's tensors with consistent shapes (read from the safetensors
  header, no tensor loaded), is made for the DiT's width and block count (the DiT header), and
  reads the features the wav2vec2 gives (layers x channels);
* a LoRA named like the SVI-Talk LoRA (``svi-talk``/``svi_talk``) is refused in any other mode:
  its keys are the same as every SVI LoRA's (q, k, v, o, ffn of every block; official
  ``train_svi_talk.py:889-915``), so the file name is the only tell, and without the MultiTalk
  patch and the speech it would make a video whose lips follow nothing.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, SVIError
from ..modes import ModeConfig
from .audio import AudioTrack, load_audio
from .condition import AudioCondition, AudioFeatureSettings
from .multitalk_file import (
    MultiTalkConfig,
    check_features_fit_multitalk,
    check_multitalk_fits_dit,
    inspect_multitalk,
    strip_multitalk_prefix,
)
from .mux import AudioAlign

TALK_LORA = re.compile(r"svi[-_ ]?talk", re.IGNORECASE)
"""File names of the SVI-Talk LoRA (official ``svi-talk.safetensors``)."""

_ST_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "I64", "I32", "I16", "I8", "U8"}


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]] | None:
    """Tensor shapes from a ``.safetensors`` header (no tensor read); None for other files.

    Raises:
        CheckpointError: a ``.safetensors`` file whose header cannot be read.
    """
    if path.suffix.lower() not in (".safetensors", ".sft") or not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                raise ValueError(f"header of {n} bytes")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as e:
        raise CheckpointError(f"'{path}' is not a readable safetensors file ({e})") from None
    return {
        k: tuple(int(d) for d in v["shape"])
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and v.get("dtype") in _ST_DTYPES
    }


def dit_size(path: Path) -> tuple[int, int] | None:
    """``(width, blocks)`` of a Wan DiT file from its header (official, ComfyUI or diffusers key
    names, any prefix); None when it cannot be told without loading (not one safetensors file, or
    an unreadable one: the DiT loader names that problem)."""
    try:
        shapes = safetensors_shapes(path)
    except CheckpointError:
        return None
    if not shapes:
        return None
    width = next((s[0] for k, s in shapes.items() if k.endswith("patch_embedding.weight")), None)
    blocks = {int(m.group(1)) for k in shapes if (m := re.search(r"(?:^|\.)blocks\.(\d+)\.", k))}
    if width is None or not blocks:
        return None
    return int(width), max(blocks) + 1


def refuse_talk_lora_elsewhere(mode: ModeConfig, loras: Sequence[Path]) -> None:
    """Refuse the SVI-Talk LoRA (by its file name) in a mode without the speech."""
    if "audio" in mode.conditions:
        return
    for path in loras:
        if TALK_LORA.search(path.name):
            raise SVIError(
                f"LoRA {path} looks like the SVI-Talk LoRA; it needs the speech and the MultiTalk "
                "patch: use --mode talk --audio SPEECH --multitalk multitalk.safetensors --wav2vec "
                "chinese-wav2vec2-base/ (rename the file if it is not the Talk LoRA)"
            )


@dataclass(frozen=True)
class TalkInputs:
    """The checked Talk inputs of a run.

    Attributes:
        audio: the speech file (also the track muxed into the mp4).
        track: the speech as wav2vec2 reads it (16 kHz mono, -23 LUFS).
        multitalk: MeiGen-MultiTalk's ``multitalk.safetensors``; ``multitalk_config`` its sizes.
        wav2vec: the local chinese-wav2vec2-base folder; ``wav2vec_weights`` its weights file;
            ``encoder`` its description.
        layers, channels: the wav2vec2's feature shape per frame.
        align: how the speech is laid under the video (:data:`svi_core.talk.AudioAlign`).
    """

    audio: Path
    track: AudioTrack
    multitalk: Path
    multitalk_config: MultiTalkConfig
    wav2vec: Path
    wav2vec_weights: Path
    encoder: str
    layers: int
    channels: int
    align: AudioAlign = "official"

    @classmethod
    def check(
        cls,
        mode: ModeConfig,
        *,
        audio: Path | None,
        multitalk: Path | None,
        wav2vec: Path | None,
        dit: Path,
        align: AudioAlign = "official",
    ) -> TalkInputs | None:
        """Check the Talk inputs for ``mode`` (None for a mode without speech).

        Raises:
            SVIError / CheckpointError: a missing, unreadable or mismatched input, named.
        """
        from ..standalone.wav2vec import inspect_wav2vec2

        given = {"--audio": audio, "--multitalk": multitalk, "--wav2vec": wav2vec}
        if "audio" not in mode.conditions:
            extra = [flag for flag, v in given.items() if v is not None]
            if extra:
                raise SVIError(
                    f"{', '.join(extra)} are for talking videos; mode {mode.name!r} takes no "
                    "speech. Use --mode talk"
                )
            return None
        missing = [flag for flag, v in given.items() if v is None]
        if missing:
            raise SVIError(
                f"mode {mode.name!r} needs {', '.join(missing)}: the speech (wav, mp3, flac, m4a), "
                "MeiGen-MultiTalk's multitalk.safetensors (the audio layers the SVI-Talk LoRA was "
                "trained with; without it the lips would not follow the speech) and the "
                "TencentGameMate/chinese-wav2vec2-base folder"
            )
        assert audio is not None and multitalk is not None and wav2vec is not None
        if not multitalk.is_file():
            raise SVIError(f"MultiTalk file {multitalk} does not exist; pass it with --multitalk")
        info = inspect_wav2vec2(wav2vec)
        shapes = safetensors_shapes(multitalk)
        if shapes is None:
            raise CheckpointError(
                f"'{multitalk}' is not a .safetensors file; MeiGen-MultiTalk ships "
                "multitalk.safetensors"
            )
        meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
        cfg = inspect_multitalk(strip_multitalk_prefix(meta), str(multitalk))
        size = dit_size(dit)
        if size is not None:
            check_multitalk_fits_dit(cfg, size[0], size[1], str(multitalk), str(dit))
        check_features_fit_multitalk(
            cfg, info.layers, info.hidden_size, str(multitalk), str(info.folder)
        )
        track = load_audio(audio)
        return cls(
            audio=audio,
            track=track,
            multitalk=multitalk,
            multitalk_config=cfg,
            wav2vec=info.folder,
            wav2vec_weights=info.weights,
            encoder=info.describe(),
            layers=info.layers,
            channels=info.hidden_size,
            align=align,
        )

    @property
    def feature_frames(self) -> int:
        return self.track.feature_frames()

    def fingerprints(self) -> dict[str, str]:
        """The model files (name, size, sampled content) for the run identity; the speech is
        identified clip by clip instead (a longer recording extends a run)."""
        from ..run_store import CONTENT_SUFFIX, file_fingerprint

        out: dict[str, str] = {}
        for key, path in (("multitalk", self.multitalk), ("audio_encoder", self.wav2vec_weights)):
            out[key] = f"{path.name}:{path.stat().st_size}"
            out[key + CONTENT_SUFFIX] = file_fingerprint(path)[:16]
        return out

    def condition(self) -> AudioCondition:
        """The run's audio condition; wav2vec2 is loaded (and freed) when the features are first
        needed."""
        folder = self.wav2vec

        def encode(samples):
            from ..standalone.wav2vec import load_wav2vec2

            return load_wav2vec2(folder).features(samples)

        settings = AudioFeatureSettings(
            encoder=self.encoder, layers=self.layers, channels=self.channels
        )
        return AudioCondition.from_track(
            self.track, encode, settings, audio_file=self.audio, align=self.align
        )

    def hook(self, transformer: torch.nn.Module, dtype: torch.dtype):
        """The standalone backend's ``"audio"`` extra: MultiTalk wired into ``transformer``, with
        the DiT's own head count (official: the audio attention uses the DiT's ``num_heads``,
        ``diffsynth/models/wan_video_dit.py:455-470``)."""
        from ..standalone.multitalk import MultiTalkAudio, load_multitalk

        heads = int(getattr(transformer.config, "num_attention_heads", 40))
        modules = load_multitalk(self.multitalk, num_heads=heads, dtype=dtype)
        return MultiTalkAudio(transformer, modules)
