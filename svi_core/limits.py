"""The bounds of every number a user sets, in one place.

The command line (``svi_core.cli``), the Python API (:class:`svi_core.modes.ModeConfig`,
:class:`svi_core.loop.RunSettings`), the ComfyUI nodes (their schema min / max) and the trainer
(``train.config``) all check against these constants, so a value is refused the same way
everywhere, before any model is loaded, with the bound named. Non-finite floats (nan, inf) are
always refused: a NaN guidance scale would otherwise give black frames and exit 0.

The upper bounds are far above anything SVI runs (official: 81 frames, 832x480, 50 steps, CFG 5,
shift 5) but low enough that a typo cannot allocate the machine away before the first clip:
a 4096x4096 reference image is 50 MB, a 160000x160000 one was 77 GB.
"""

from __future__ import annotations

import math
import numbers

MIN_SIDE = 16
"""Smallest video width / height in pixels (one latent cell of the Wan VAE is 8x8, and sizes
are multiples of 16)."""
MAX_SIDE = 4096
"""Largest video width / height in pixels (Wan is trained up to 1280x720)."""
MIN_FRAMES = 5
MAX_FRAMES = 1001
"""Frames per clip: ``4k + 1`` in ``[MIN_FRAMES, MAX_FRAMES]`` (81 official)."""
MAX_CLIPS = 10_000
"""Clips in one run (a 10000-clip Wan2.1 video at 76 new frames per clip is 9 hours at 24 fps)."""
MAX_STEPS = 1000
"""Sampling steps per clip (50 official; the flow schedule has 1000 training timesteps)."""
MAX_GUIDANCE = 100.0
"""Largest guidance scale (CFG, and SVI-Talk's text / audio scales); a scale must be in
``(0, MAX_GUIDANCE]`` (:func:`svi_core.guidance.scale_problems`). Official values are 1-5,
1 = one pass per step (no guidance); ComfyUI's own CFG widget also stops at 100."""
SHIFT_RANGE = (0.1, 100.0)
"""Flow schedule shift (5 official; ComfyUI's Wan default is 8)."""
FPS_RANGE = (1.0, 120.0)
"""Frame rate of the saved video (24 official on Wan2.1, 15 on Wan2.2)."""
MAX_SEED = 2**64 - 1
"""Largest seed a ``torch.Generator`` accepts; ``seed + (clips - 1) * stride`` must fit too."""
MAX_SEED_STRIDE = 1_000_000
"""Seed step between clips (42 official)."""
MAX_PROMPT_REPEAT = 1000
"""Clips per prompt in the prompt stream."""
MAX_PROMPT_FILE_BYTES = 4 * 2**20
"""Largest prompt file / prompt text read (4 MiB: about a million words)."""
MAX_FILE_NAME = 200
"""Longest file name the pack writes from a user-given name (most file systems stop at 255
bytes, and a suffix is added)."""
CRF_RANGE = (0, 51)
"""x264 constant rate factor (0 lossless .. 51 worst; 16 default)."""


def _fmt(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def number_problem(
    name: str,
    value: object,
    lo: float,
    hi: float,
    *,
    integer: bool = False,
    hint: str = "",
) -> str | None:
    """None when ``value`` is a finite number in ``[lo, hi]`` (an integer when ``integer``),
    else a sentence naming the value and the bound, e.g. ``cfg=nan must be a finite number in
    [1, 30] (1 = no guidance)``."""
    suffix = f" ({hint})" if hint else ""
    kind = "an integer" if integer else "a finite number"
    bound = f"{_fmt(lo)}, {_fmt(hi)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"{name}={value!r} must be {kind} in [{bound}]{suffix}"
    if integer and not isinstance(value, numbers.Integral):
        return f"{name}={value!r} must be {kind} in [{bound}]{suffix}"
    if not math.isfinite(float(value)) or not lo <= value <= hi:
        return f"{name}={_fmt(value)} must be {kind} in [{bound}]{suffix}"
    return None


def frames_problem(frames: object, name: str = "frames") -> str | None:
    """The one rule for frames per clip: ``4k + 1`` in ``[MIN_FRAMES, MAX_FRAMES]`` (the Wan
    VAE packs 1 + 4 frames per latent frame). None when valid, else a sentence naming the
    nearest valid values."""
    if isinstance(frames, bool) or not isinstance(frames, numbers.Integral):
        return f"{name}={frames!r} per clip must be an integer 4k + 1 (81 official)"
    f = int(frames)
    if MIN_FRAMES <= f <= MAX_FRAMES and (f - 1) % 4 == 0:
        return None
    lo = min(max(MIN_FRAMES, (f - 1) // 4 * 4 + 1), MAX_FRAMES)
    hi = min(lo + 4 if lo < f else lo, MAX_FRAMES)
    near = f"{lo} or {hi}" if lo != hi else f"{lo}"
    return (
        f"{name}={f} per clip must be 4k + 1 in [{MIN_FRAMES}, {MAX_FRAMES}] (81 official); "
        f"try {near}"
    )


def size_problem(width: object, height: object) -> str | None:
    """The one rule for the video size: multiples of 16 in ``[MIN_SIDE, MAX_SIDE]``. None when
    valid, else one sentence naming each bad side and the nearest valid values."""
    bad = []
    for n, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            bad.append(f"{n}={v!r} (an integer)")
        elif v > MAX_SIDE:
            bad.append(f"{n}={v} (largest valid: {MAX_SIDE})")
        elif v < MIN_SIDE or v % 16:
            lo = v // 16 * 16
            bad.append(f"{n}={v} (nearest valid: {'16' if lo < 16 else f'{lo} or {lo + 16}'})")
    if not bad:
        return None
    return f"video size must be multiples of 16 in [{MIN_SIDE}, {MAX_SIDE}]: " + ", ".join(bad)


def seed_problem(seed_base: int, seed_stride: int, clips: int) -> str | None:
    """The seed of the last clip, ``seed_base + (clips - 1) * seed_stride``, must fit a
    ``torch.Generator`` (at most :data:`MAX_SEED`)."""
    last = seed_base + max(0, clips - 1) * seed_stride
    if last <= MAX_SEED:
        return None
    return (
        f"the last clip's seed {seed_base} + {clips - 1} x {seed_stride} = {last} is above "
        f"{MAX_SEED} (the largest torch seed); use a smaller seed, stride or clip count"
    )
