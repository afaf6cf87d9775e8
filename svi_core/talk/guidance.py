"""SVI-Talk's two-scale guidance: text and audio, three model passes per step.

Official ``diffsynth/pipelines/svi_video_talk.py:448-466`` (scales from ``test_svi_talk.py:45-56``:
audio 5.0, text 2.0). Per denoising step:

* ``cond``: positive prompt + the clip's audio;
* ``drop_text``: negative prompt + the clip's audio;
* ``uncond``: negative prompt + the NULL audio (zero windows through the audio projection);

``v = v_uncond + text * (v_cond - v_drop_text) + audio * (v_drop_text - v_uncond)``. All three passes
run whenever either scale differs from 1; with both at 1 only ``cond`` runs. ComfyUI's
``Guider_DualCFG`` (non-nested) computes the same combination with positive = cond, middle = drop_text,
negative = uncond, cfg1 = text, cfg2 = audio.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TEXT_SCALE = 2.0
"""Official text guidance (``test_svi_talk.py:51-56``)."""

AUDIO_SCALE = 5.0
"""Official audio guidance (``test_svi_talk.py:45-50``)."""


@dataclass(frozen=True)
class TalkGuidance:
    """The two guidance scales of SVI-Talk (official: text 2.0, audio 5.0)."""

    text: float = TEXT_SCALE
    audio: float = AUDIO_SCALE

    @property
    def guided(self) -> bool:
        """True when the three passes run (official: either scale != 1)."""
        return self.text != 1.0 or self.audio != 1.0

    def combine(
        self, v_cond: torch.Tensor, v_drop_text: torch.Tensor | None, v_uncond: torch.Tensor | None
    ) -> torch.Tensor:
        """See :func:`combine_talk_guidance`."""
        return combine_talk_guidance(v_cond, v_drop_text, v_uncond, self.text, self.audio)


def combine_talk_guidance(
    v_cond: torch.Tensor,
    v_drop_text: torch.Tensor | None,
    v_uncond: torch.Tensor | None,
    text_scale: float = TEXT_SCALE,
    audio_scale: float = AUDIO_SCALE,
) -> torch.Tensor:
    """Combine the three velocities (tensors of one shape, float32 result).

    ``v_uncond + text_scale * (v_cond - v_drop_text) + audio_scale * (v_drop_text - v_uncond)``, the
    official operation order (``svi_video_talk.py:460-462``). With both scales equal to 1 the official
    code runs only the conditional pass, so ``v_cond`` is returned and the other two may be None.
    """
    if text_scale == 1.0 and audio_scale == 1.0:
        return v_cond.float()
    if v_drop_text is None or v_uncond is None:
        raise ValueError(
            "text/audio guidance needs the drop-text and unconditional velocities "
            f"(text_scale={text_scale}, audio_scale={audio_scale})"
        )
    vc, vd, vu = v_cond.float(), v_drop_text.float(), v_uncond.float()
    return vu + text_scale * (vc - vd) + audio_scale * (vd - vu)
