"""A per-clip schedule: what changes at which clips of a long video.

One schedule sets, for a clip or a range of clips: the prompt, the seed, the CFG scale, LoRA
strengths, the anchor / reference image (a scene change) and a keyframe (the clip's last
frame is conditioned on an image). Everything a schedule does not set keeps the mode's
official value. Clips are numbered from 1 (clip 1 is the first clip, as in the log).

Two spellings, ONE parser behind them (both build the same :class:`Schedule`; nothing is ever
evaluated or executed):

Text (the SVI Schedule node), one line per clip range, ``#`` starts a comment::

    clip 1: lora.svi=0                       # speed-LoRA trick: no SVI LoRA on the first clip
    clips 2-4: prompt="the fox jumps over the river", seed=7, cfg=4
    clip 5: keyframe=image 2                 # clip 5 ends on image 2
    clip 6: anchor=image 3, prompt="night falls in the forest"   # scene change from clip 6 on

TOML (``--schedule schedule.toml`` on the command line)::

    images = ["fox_river.png", "forest_night.png"]   # image 1, image 2 (relative to this file)

    [clips.1]
    lora.svi = 0

    [clips.2-4]
    prompt = "the fox jumps over the river"
    seed = 7
    cfg = 4

    [clips.5]
    keyframe = 1                  # an image number, or a path: keyframe = "key.png"

Ranges: ``clip N``, ``clips N-M``, ``clips N-`` (N to the end of the run). Ranges may not
overlap. Keys:

``prompt``: the clips' prompt (text). ``seed``: the first clip of the range gets it, the next
ones ``seed + i * stride`` (never the same seed twice). ``cfg``: guidance scale.
``lora.NAME``: strength of the loaded LoRA NAME on every model that has it;
``lora.NAME.high`` / ``lora.NAME.low``: on one Wan2.2 expert only (``high`` is the only model
on Wan2.1). ``anchor``: a scene change: the reference image from the line's first clip on,
until a later line sets another anchor (what reference padding and the SVI 2.0 Pro anchor
latent use). ``keyframe``: the image the clip's last frame is conditioned on. ``keyframe_slot``:
``latent`` (default) or ``frame`` (:data:`svi_core.conditioning.KeyframeSlot`). Every key but
``anchor`` applies to its line's clips only.

The schedule is a per-clip condition (:class:`ScheduleCondition`): its effect is recorded in
each clip's plan identity, so a resume or an extension may change clips that are not made yet
but never a finished one.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from .conditioning import KEYFRAME_SLOTS, check_keyframe_fits, stretch_image
from .errors import SVIError
from .guidance import scale_problems
from .log import logger

if TYPE_CHECKING:  # pragma: no cover
    from .conditions import ClipPlan
    from .loop import RunSettings

Expert = Literal["high", "low"]
"""``high``: the only model (Wan2.1) or the Wan2.2 high-noise expert; ``low``: the Wan2.2
low-noise expert."""

EXPERTS: tuple[str, ...] = ("high", "low")
KEYS: tuple[str, ...] = ("prompt", "seed", "cfg", "anchor", "keyframe", "keyframe_slot")
"""The plain keys of a schedule line (plus ``lora.NAME`` / ``lora.NAME.high|low``)."""

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_RANGE = re.compile(r"^(?:clips?\s*)?(\d+)\s*(?:(-)\s*(\d+)?)?$", re.IGNORECASE)
_IMAGE = re.compile(r"^(?:image[\s_]*)?(\d+)$", re.IGNORECASE)


# ----- the schedule -------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    """An image of the schedule: ``number`` (1-based: ``image 2`` is the node's ``image_2``
    input, or the second entry of the TOML ``images`` list) or a file ``path``."""

    number: int | None = None
    path: Path | None = None

    def describe(self) -> str:
        return f"image {self.number}" if self.path is None else str(self.path)


@dataclass(frozen=True)
class LoraSetting:
    """``lora.NAME[.EXPERT] = strength``; ``expert`` None = every model that has NAME."""

    name: str
    strength: float
    expert: Expert | None = None


@dataclass(frozen=True)
class ScheduleEntry:
    """One schedule line: clips ``first..last`` (1-based, inclusive; ``last`` None = to the
    end of the run) and what they change (None = the mode's value).

    ``where`` names the line for messages (``line 3`` or ``[clips.2-4]``).
    """

    first: int
    last: int | None
    where: str
    prompt: str | None = None
    seed: int | None = None
    cfg: float | None = None
    loras: tuple[LoraSetting, ...] = ()
    anchor: ImageRef | None = None
    keyframe: ImageRef | None = None
    keyframe_slot: str | None = None

    def covers(self, clip: int) -> bool:
        """Whether 1-based ``clip`` is in the range."""
        return self.first <= clip and (self.last is None or clip <= self.last)

    def describe_range(self) -> str:
        if self.last == self.first:
            return f"clip {self.first}"
        return f"clips {self.first}-{'' if self.last is None else self.last}"


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: entries in source order, no two ranges overlapping.

    ``source``: where it came from (a file, or ``"schedule text"``).
    """

    entries: tuple[ScheduleEntry, ...] = ()
    source: str = "schedule text"

    def entry_for(self, index: int) -> ScheduleEntry | None:
        """The entry covering 0-based clip ``index`` (None when no line does)."""
        for e in self.entries:
            if e.covers(index + 1):
                return e
        return None

    def anchor_for(self, index: int) -> ImageRef | None:
        """The anchor in force at 0-based clip ``index``: the one of the latest line starting
        at or before it that sets one (None: the run's reference)."""
        best: ScheduleEntry | None = None
        for e in self.entries:
            if e.anchor is not None and e.first <= index + 1:
                if best is None or e.first > best.first:
                    best = e
        return None if best is None else best.anchor

    def prompts(self) -> list[str]:
        """Every scheduled prompt text (to encode them up front)."""
        return list(dict.fromkeys(e.prompt for e in self.entries if e.prompt is not None))

    def image_refs(self) -> list[tuple[ScheduleEntry, str, ImageRef]]:
        """(entry, key, image) for every anchor and keyframe."""
        out = []
        for e in self.entries:
            for key in ("anchor", "keyframe"):
                ref = getattr(e, key)
                if ref is not None:
                    out.append((e, key, ref))
        return out

    def lora_settings(self) -> list[tuple[ScheduleEntry, LoraSetting]]:
        return [(e, s) for e in self.entries for s in e.loras]

    def __bool__(self) -> bool:
        return bool(self.entries)


# ----- parsing ------------------------------------------------------------------------------


def _closest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _fail(source: str, where: str, message: str) -> SVIError:
    return SVIError(f"{source}, {where}: {message}")


def _parse_range(text: str, source: str, where: str) -> tuple[int, int | None]:
    m = _RANGE.match(text.strip())
    if m is None:
        raise _fail(
            source,
            where,
            f"{text.strip()!r} is not a clip range; write 'clip 3', 'clips 2-5' or 'clips 6-' "
            "(6 to the end)",
        )
    first = int(m.group(1))
    last = first if m.group(2) is None else (None if m.group(3) is None else int(m.group(3)))
    if first < 1:
        raise _fail(source, where, "clips are numbered from 1 (clip 1 is the first clip)")
    if last is not None and last < first:
        raise _fail(source, where, f"range {first}-{last} ends before it starts")
    return first, last


def _number(value: Any, key: str, source: str, where: str, integer: bool = False) -> float:
    if isinstance(value, bool):
        raise _fail(source, where, f"{key}={value!r} must be a number")
    if isinstance(value, str):
        try:
            value = int(value) if integer else float(value)
        except ValueError:
            kind = "a whole number" if integer else "a number"
            raise _fail(source, where, f"{key}={value!r} must be {kind}") from None
    if integer:
        if not isinstance(value, int) and not (isinstance(value, float) and value.is_integer()):
            raise _fail(source, where, f"{key}={value!r} must be a whole number")
        return int(value)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(source, where, f"{key}={value!r} must be a finite number")
    return float(value)


def _image(value: Any, key: str, source: str, where: str, base: Path | None) -> ImageRef:
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _IMAGE.match(value.strip()):
        number = int(_IMAGE.match(value.strip()).group(1))  # type: ignore[union-attr]
    elif isinstance(value, str) and base is not None and value.strip():
        path = Path(value.strip())
        return ImageRef(path=path if path.is_absolute() else base / path)
    else:
        hint = "an image number (keyframe=2) or a file path" if base else "'image N'"
        raise _fail(source, where, f"{key}={value!r} must be {hint}")
    if number < 1:
        raise _fail(source, where, f"{key}: images are numbered from 1 (image 1 is the first)")
    return ImageRef(number=number)


def _entry(
    first: int,
    last: int | None,
    where: str,
    items: Sequence[tuple[str, Any]],
    source: str,
    base: Path | None,
) -> ScheduleEntry:
    """Build one entry from ``(key, value)`` pairs (values: str from text, typed from TOML)."""
    seen: set[str] = set()
    values: dict[str, Any] = {}
    loras: list[LoraSetting] = []
    for key, value in items:
        if key in seen:
            raise _fail(source, where, f"{key} is set twice")
        seen.add(key)
        if key.startswith("lora.") or key == "lora":
            parts = key.split(".")
            if len(parts) not in (2, 3) or not _NAME.match(parts[1]):
                raise _fail(
                    source,
                    where,
                    f"{key!r} is not a LoRA key; write lora.NAME=0.5 or lora.NAME.high=0.5 "
                    "(NAME: letters, digits, '_' or '-')",
                )
            expert = parts[2] if len(parts) == 3 else None
            if expert is not None and expert not in EXPERTS:
                raise _fail(
                    source,
                    where,
                    f"{key!r}: the expert must be 'high' or 'low'{_closest(expert, EXPERTS)}",
                )
            strength = _number(value, key, source, where)
            loras.append(LoraSetting(parts[1], strength, expert))  # type: ignore[arg-type]
            continue
        if key not in KEYS:
            raise _fail(
                source,
                where,
                f"unknown key {key!r}{_closest(key, [*KEYS, 'lora.NAME'])} (valid keys: "
                f"{', '.join(KEYS)}, lora.NAME, lora.NAME.high, lora.NAME.low)",
            )
        if key == "prompt":
            if not isinstance(value, str) or not value.strip():
                raise _fail(source, where, "prompt must be a non-empty text")
            values[key] = value.strip()
        elif key == "seed":
            seed = int(_number(value, key, source, where, integer=True))
            if seed < 0:
                raise _fail(source, where, f"seed={seed} must be >= 0")
            values[key] = seed
        elif key == "cfg":
            cfg = _number(value, key, source, where)
            bad = scale_problems("cfg", cfg)
            if bad:
                raise _fail(source, where, bad[0])
            values[key] = cfg
        elif key in ("anchor", "keyframe"):
            values[key] = _image(value, key, source, where, base)
        else:  # keyframe_slot
            slot = str(value).strip().lower()
            if slot not in KEYFRAME_SLOTS:
                raise _fail(
                    source,
                    where,
                    f"keyframe_slot={value!r} must be one of {', '.join(KEYFRAME_SLOTS)}"
                    f"{_closest(slot, KEYFRAME_SLOTS)}",
                )
            values[key] = slot
    if "keyframe_slot" in values and "keyframe" not in values:
        raise _fail(source, where, "keyframe_slot needs a keyframe on the same line")
    if not values and not loras:
        raise _fail(source, where, "the line sets nothing; write key=value pairs after ':'")
    return ScheduleEntry(first=first, last=last, where=where, loras=tuple(loras), **values)


def _check_overlaps(entries: Sequence[ScheduleEntry], source: str) -> None:
    for i, a in enumerate(entries):
        for b in entries[i + 1 :]:
            a_end = math.inf if a.last is None else a.last
            b_end = math.inf if b.last is None else b.last
            if a.first <= b_end and b.first <= a_end:
                raise SVIError(
                    f"{source}: {a.where} ({a.describe_range()}) and {b.where} "
                    f"({b.describe_range()}) overlap; give every clip at most one line"
                )


def _split_assignments(text: str, source: str, where: str) -> list[tuple[str, str]]:
    """``key=value, key="quoted, text"`` -> pairs (a tiny scanner; nothing is evaluated)."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t,":
            i += 1
        if i >= n:
            break
        eq = text.find("=", i)
        if eq < 0:
            raise _fail(source, where, f"expected key=value, got {text[i:].strip()!r}")
        key = text[i:eq].strip().lower()
        if not key or any(c in key for c in ' \t,"'):
            raise _fail(source, where, f"expected key=value, got {text[i : eq + 1].strip()!r}")
        i = eq + 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] in "\"'":
            quote, i, buf = text[i], i + 1, []
            while i < n and text[i] != quote:
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                buf.append(text[i])
                i += 1
            if i >= n:
                raise _fail(source, where, f"{key}: the quoted text is not closed with {quote}")
            value = "".join(buf)
            i += 1
            while i < n and text[i] in " \t":
                i += 1
            if i < n and text[i] != ",":
                raise _fail(source, where, f"{key}: expected ',' after the quoted text")
        else:
            end = text.find(",", i)
            end = n if end < 0 else end
            value = text[i:end].strip()
            if '"' in value:
                raise _fail(source, where, f"{key}: put the whole value in quotes")
            i = end
        out.append((key, value))
    return out


def _strip_comment(line: str) -> str:
    """The line without a ``#`` comment (a ``#`` inside quotes is kept)."""
    quote, i = None, 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\":
                i += 1  # skip the escaped character
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "#":
            return line[:i]
        i += 1
    return line


def parse_schedule(text: str, source: str = "schedule text") -> Schedule:
    """Parse the line format (see the module docstring). Raises SVIError naming the line."""
    entries: list[ScheduleEntry] = []
    for number, raw in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        line = _strip_comment(raw).strip()
        if not line:
            continue
        where = f"line {number}"
        head, sep, body = line.partition(":")
        if not sep:
            raise _fail(
                source, where, f"{line!r} has no ':'; write 'clips 2-4: prompt=\"...\", seed=7'"
            )
        first, last = _parse_range(head, source, where)
        items = _split_assignments(body, source, where)
        entries.append(_entry(first, last, where, items, source, base=None))
    _check_overlaps(entries, source)
    return Schedule(entries=tuple(entries), source=source)


def _flatten(table: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out += _flatten(value, name + ".")
        else:
            out.append((name, value))
    return out


def schedule_from_mapping(
    data: Mapping[str, Any], source: str, base: Path | None = None
) -> tuple[Schedule, tuple[Path, ...]]:
    """The TOML form (already parsed into dicts): ``images`` (paths) and ``[clips.RANGE]``
    tables. Returns the schedule and its image files (image N = ``images[N - 1]``, then every
    path used directly, in order)."""
    unknown = sorted(set(data) - {"images", "clips"})
    if unknown:
        raise SVIError(
            f"{source}: unknown top-level key {unknown[0]!r}"
            f"{_closest(unknown[0], ['images', 'clips'])} (valid: images, [clips.RANGE] tables)"
        )
    images_raw = data.get("images", [])
    if not isinstance(images_raw, list) or not all(isinstance(p, str) for p in images_raw):
        raise SVIError(f"{source}: images must be a list of file paths")
    base = base or Path(".")
    images = [Path(p) if Path(p).is_absolute() else base / p for p in images_raw]
    clips = data.get("clips", {})
    if not isinstance(clips, Mapping):
        raise SVIError(f"{source}: 'clips' must hold tables like [clips.2-4]")
    entries: list[ScheduleEntry] = []
    for key, table in clips.items():
        where = f"[clips.{key}]"
        if not isinstance(table, Mapping):
            raise _fail(source, where, "must be a table of settings ([clips.2-4] then key = value)")
        first, last = _parse_range(str(key), source, where)
        entries.append(_entry(first, last, where, _flatten(table), source, base=base))
    entries.sort(key=lambda e: e.first)
    _check_overlaps(entries, source)
    # paths used directly become numbered images after the list
    numbered = list(images)
    fixed: list[ScheduleEntry] = []
    for e in entries:
        changes = {}
        for k in ("anchor", "keyframe"):
            ref = getattr(e, k)
            if ref is not None and ref.path is not None:
                if ref.path not in numbered:
                    numbered.append(ref.path)
                changes[k] = ImageRef(number=numbered.index(ref.path) + 1, path=ref.path)
        fixed.append(_replace(e, changes))
    return Schedule(entries=tuple(fixed), source=source), tuple(numbered)


def _replace(entry: ScheduleEntry, changes: Mapping[str, Any]) -> ScheduleEntry:
    import dataclasses

    return dataclasses.replace(entry, **changes) if changes else entry


def load_schedule_file(path: str | Path) -> tuple[Schedule, tuple[Path, ...]]:
    """A TOML schedule file -> (schedule, image files). Relative image paths are relative to
    the file. Raises SVIError naming the file (missing, not TOML, bad key)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    p = Path(path)
    if not p.is_file():
        raise SVIError(f"schedule file {p} does not exist; pass an existing .toml file")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SVIError(f"schedule file {p} is not valid TOML: {e}") from None
    schedule, images = schedule_from_mapping(data, str(p), base=p.parent)
    return schedule, images


# ----- LoRAs a schedule can address -----------------------------------------------------------


@dataclass(frozen=True)
class LoadedLora:
    """A LoRA loaded on one model, as a schedule names it.

    Attributes:
        name: the schedule name (``lora.NAME``): letters, digits, ``_``, ``-``.
        expert: which model holds it (see :data:`Expert`).
        strength: the strength it was loaded with (a clip the schedule does not change).
    """

    name: str
    expert: Expert
    strength: float

    @property
    def key(self) -> str:
        """The key in ``ClipPlan.lora_strengths``: ``NAME`` (high / only model) or ``NAME@low``."""
        return lora_key(self.name, self.expert)


def lora_key(name: str, expert: str) -> str:
    """``NAME`` for the only / high-noise model, ``NAME@low`` for the low-noise expert."""
    return name if expert == "high" else f"{name}@{expert}"


def lora_name(text: str) -> str:
    """A schedule name from a file name: the stem, lower case, other characters -> ``_``
    (``SVI-Shot.safetensors`` -> ``svi-shot``; ``wan2.2_lightx2v.safetensors`` ->
    ``wan2_2_lightx2v``)."""
    stem = Path(str(text)).name
    for ext in (".safetensors", ".pth", ".pt", ".ckpt", ".bin"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_").lower()
    return name or "lora"


def check_lora_name(name: str, what: str) -> str:
    """Refuse a LoRA name a schedule could not write."""
    if not _NAME.match(name):
        raise SVIError(
            f"{what}: LoRA name {name!r} may hold only letters, digits, '_' and '-' (it is "
            "written lora.NAME in a schedule)"
        )
    return name


# ----- the per-clip condition ---------------------------------------------------------------


@dataclass
class ScheduleCondition:
    """A :class:`~svi_core.conditions.ClipCondition` applying a :class:`Schedule`.

    Args:
        schedule: the parsed schedule.
        images: the schedule's images, uint8 ``[H, W, 3]`` of any size (image N =
            ``images[N - 1]``; None = not connected); stretched to the video size like the
            reference (said in the log).
        loras: the LoRAs loaded on the models, by schedule name (what ``lora.NAME`` may set).
        texts: prompt text -> the backend's prompt item (ComfyUI: its CONDITIONING); None =
            the text itself (the standalone backend encodes strings).
        prompt_key: the fingerprint a prompt text is recorded under (the run's own rule, so
            scheduling the stream's prompt changes nothing).

    Its run-level identity is empty: everything it does is in each clip's plan, so a
    schedule may be added to, or edited for, clips that are not made yet.
    """

    schedule: Schedule
    images: Sequence[torch.Tensor | None] = ()
    loras: Sequence[LoadedLora] = ()
    texts: Mapping[str, Any] | None = None
    prompt_key: Callable[[str], str] | None = None
    name: str = "schedule"
    _sized: dict[tuple[int, int, int], torch.Tensor] = field(
        default_factory=dict, repr=False, compare=False
    )

    def identity(self) -> Mapping[str, Any]:
        return {}

    # ----- validation -------------------------------------------------------------------

    def validate(self, settings: RunSettings) -> None:
        """Every line against the run: clips within it, images that exist, LoRAs that are
        loaded, keyframes that fit the clip, anchors the mode uses. Raises SVIError naming
        the line."""
        src = self.schedule.source
        n = settings.num_clips
        for e in self.schedule.entries:
            end = e.last if e.last is not None else e.first
            if end > n:
                raise _fail(
                    src,
                    e.where,
                    f"{e.describe_range()} is beyond the run ({n} clips); raise the clip count "
                    f"or write 'clips {e.first}-' for 'to the end'",
                )
        self._validate_images(settings)
        self._validate_loras()
        if any(e.keyframe is not None for e in self.schedule.entries):
            try:
                check_keyframe_fits(settings.mode)
            except SVIError as err:
                first = next(e for e in self.schedule.entries if e.keyframe is not None)
                raise _fail(src, first.where, str(err)) from None
        mode = settings.mode
        if mode.carry == "pixel" and mode.padding == "zeros":
            for e in self.schedule.entries:
                if e.anchor is not None and e.first > 1:
                    raise _fail(
                        src,
                        e.where,
                        f"anchor has no effect after clip 1 in mode {mode.name!r} (it pads "
                        "with zeros; the reference only starts clip 1). Use keyframe= to steer "
                        "a clip toward an image, or a mode that pads with the reference (shot, "
                        "v2, v2_w22, v2_pro)",
                    )
        if self.texts is not None:
            missing = [p for p in self.schedule.prompts() if p not in self.texts]
            if missing:
                raise SVIError(f"scheduled prompt {missing[0][:60]!r} was not encoded")

    def _validate_images(self, settings: RunSettings) -> None:
        src = self.schedule.source
        connected = [i for i, img in enumerate(self.images, start=1) if img is not None]
        for e, key, ref in self.schedule.image_refs():
            if ref.number is None or ref.number not in connected:
                have = (
                    f"{len(connected)} image(s) are connected ("
                    + ", ".join(f"image {i}" for i in connected)
                    + ")"
                    if connected
                    else "no image is connected"
                )
                raise _fail(
                    src,
                    e.where,
                    f"{key}={ref.describe()} does not exist: {have}; connect it or fix the number",
                )
            self.image(ref.number, settings)

    def _validate_loras(self) -> None:
        src = self.schedule.source
        names = sorted({x.name for x in self.loras})
        for e, s in self.schedule.lora_settings():
            slots = self._slots(s)
            if slots:
                continue
            spelled = f"lora.{s.name}" + (f".{s.expert}" if s.expert else "")
            if s.name in names:
                raise _fail(
                    src,
                    e.where,
                    f"{spelled}: LoRA {s.name!r} is not loaded on the {s.expert}-noise model "
                    f"(it is on: {', '.join(x.expert for x in self.loras if x.name == s.name)})",
                )
            loaded = ", ".join(names) if names else "none (load LoRAs with the SVI loaders)"
            raise _fail(
                src,
                e.where,
                f"{spelled}: no LoRA named {s.name!r} is loaded{_closest(s.name, names)} "
                f"(loaded: {loaded})",
            )

    def lora_keys(self) -> set[str]:
        """The ``ClipPlan.lora_strengths`` keys this schedule sets on some clip (the LoRAs a
        backend must be able to switch)."""
        return {slot.key for _, s in self.schedule.lora_settings() for slot in self._slots(s)}

    def _slots(self, s: LoraSetting) -> list[LoadedLora]:
        return [
            x for x in self.loras if x.name == s.name and (s.expert is None or x.expert == s.expert)
        ]

    def image(self, number: int, settings: RunSettings) -> torch.Tensor:
        """Image ``number`` (1-based) at the video size, uint8 ``[H, W, 3]`` (resized once)."""
        key = (number, settings.width, settings.height)
        if key not in self._sized:
            img = self.images[number - 1]
            if (
                not isinstance(img, torch.Tensor)
                or img.dtype != torch.uint8
                or img.ndim != 3
                or img.shape[-1] != 3
            ):
                raise SVIError(
                    f"{self.schedule.source}: image {number} must be one RGB image (uint8 "
                    f"[H, W, 3]); got {getattr(img, 'shape', type(img).__name__)}"
                )
            if tuple(img.shape[:2]) != (settings.height, settings.width):
                logger.info(
                    "schedule image %d is %dx%d; stretched to the video size %dx%d like the "
                    "reference image",
                    number,
                    img.shape[1],
                    img.shape[0],
                    settings.width,
                    settings.height,
                )
            self._sized[key] = stretch_image(img, settings.width, settings.height)
        return self._sized[key]

    # ----- per clip ---------------------------------------------------------------------

    def for_clip(self, plan: ClipPlan, settings: RunSettings) -> ClipPlan:
        changes: dict[str, Any] = {}
        anchor = self.schedule.anchor_for(plan.index)
        if anchor is not None and anchor.number is not None:
            changes["reference"] = self.image(anchor.number, settings)
        e = self.schedule.entry_for(plan.index)
        if e is None:
            return plan.replace(**changes) if changes else plan
        if e.prompt is not None:
            changes["positive"] = e.prompt if self.texts is None else self.texts[e.prompt]
            changes["prompt_index"] = -1
            changes["prompt_key"] = self._prompt_key(e.prompt)
        if e.seed is not None:
            changes["seed"] = e.seed + (plan.index + 1 - e.first) * settings.mode.seed_stride
        if e.cfg is not None:
            changes["guidance"] = settings.mode.guidance_for(e.cfg)
        if e.loras:
            strengths = dict(plan.lora_strengths)
            for s in e.loras:
                for slot in self._slots(s):
                    if s.strength == slot.strength:  # as loaded: the same clip as unscheduled
                        strengths.pop(slot.key, None)
                    else:
                        strengths[slot.key] = s.strength
            changes["lora_strengths"] = strengths
        if e.keyframe is not None and e.keyframe.number is not None:
            changes["keyframe"] = self.image(e.keyframe.number, settings)
            changes["keyframe_slot"] = e.keyframe_slot or "latent"
        return plan.replace(**changes)

    def _prompt_key(self, text: str) -> str:
        if self.prompt_key is not None:
            return self.prompt_key(text)
        from .run_store import fingerprint

        return fingerprint(text)
