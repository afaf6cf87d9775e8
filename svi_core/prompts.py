"""Prompt files and the per-clip prompt stream.

Official prompt files are a Python list literal ``prompts = ["...", ...]`` (the official Wan2.1
script runs it as code; here it is parsed with :func:`ast.literal_eval`, never executed); plain
text also works, one prompt per non-empty line (``#`` lines skipped), exactly as the official
script reads it (``test_svi.py:51-52``). One function,
:func:`parse_prompts`, reads both for the command line and the ComfyUI node. The stream is
generic over the item type: strings in the standalone CLI, ComfyUI CONDITIONING objects on the
node side.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Generic, TypeVar

from .errors import SVIError
from .limits import MAX_PROMPT_FILE_BYTES
from .modes import ModeConfig, PromptPolicy

T = TypeVar("T")

# Safe literal parsing only (strings, lists, tuples, numbers); named so that naive call
# scanners do not mistake it for the built-in one.
_read_literal = ast.literal_eval

_LIST_ASSIGNMENT = re.compile(r"^[ \t]*prompts[ \t]*=[ \t]*\[", re.MULTILINE)


def parse_prompts(text: str, source: str = "<prompts>") -> list[str]:
    """Prompts from a prompt file's or a prompt box's text: THE rule of the CLI (``--prompts``)
    and the SVI Prompt Stream node alike.

    - a ``prompts = [...]`` list literal (anywhere in the text; the official format) or a text
      that is one bare ``[...]`` literal: read with :func:`ast.literal_eval`, never executed;
    - otherwise every non-empty line is one prompt and ``#`` lines are comments, as the
      official script reads a plain prompt file (``test_svi.py:51-52``; blank lines only
      separate). Surrounding whitespace is removed.

    Raises:
        SVIError: the list literal is malformed or holds non-strings, the text is larger than
            :data:`svi_core.limits.MAX_PROMPT_FILE_BYTES`, or no prompt is found.
    """
    if len(text) > MAX_PROMPT_FILE_BYTES:
        raise SVIError(
            f"{source}: {len(text)} characters, more than the {MAX_PROMPT_FILE_BYTES} a prompt "
            "text may hold"
        )
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    stripped = text.strip()
    found = _LIST_ASSIGNMENT.search(text)
    if found is not None:
        return _read_prompt_list(text[found.end() - 1 :].strip(), source)
    if stripped.startswith("[") and stripped.endswith("]"):
        return _read_prompt_list(stripped, source)
    prompts = [ln.strip() for ln in text.split("\n")]
    prompts = [x for x in prompts if x and not x.startswith("#")]
    if not prompts:
        raise SVIError(
            f"{source}: no prompt found; write one prompt per line, or a prompts = [...] list"
        )
    return prompts


def _read_prompt_list(literal: str, source: str) -> list[str]:
    try:
        value = _read_literal(literal)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
        # MemoryError / RecursionError: Python's parser gives up on very deep nesting
        # (e.g. thousands of unary minuses); that is a malformed file, not a crash
        reason = f"{e.__class__.__name__}: {e}" if str(e) else "nested too deeply"
        raise SVIError(
            f"{source}: cannot read the prompt list literal ({reason}); "
            'expected prompts = ["first prompt", "second prompt", ...] with plain string '
            "literals, or one prompt per line"
        ) from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise SVIError(f"{source}: the prompt list must be a list of strings")
    prompts = [v.strip() for v in value if v.strip()]
    if not prompts:
        raise SVIError(f"{source}: no prompt found; the prompt list is empty")
    return prompts


def load_prompts(path: str | Path) -> list[str]:
    """Read and parse a prompt file (UTF-8). Raises SVIError naming the file on failure."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_PROMPT_FILE_BYTES:
            raise SVIError(
                f"prompt file {p} is {size} bytes, more than the {MAX_PROMPT_FILE_BYTES} bytes a "
                "prompt file may hold; is it the right file?"
            )
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SVIError(f"prompt file {p} does not exist; pass an existing text file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SVIError(f"prompt file {p} cannot be read as UTF-8 text: {e}") from None
    return parse_prompts(text, source=str(p))


def prompt_index(clip: int, count: int, policy: PromptPolicy, repeat: int = 1) -> int:
    """Index into a prompt list of ``count`` items for clip ``clip`` (0-based)."""
    if count < 1:
        raise SVIError("the prompt stream is empty; give at least one prompt")
    if policy == "first":
        return 0
    k = clip // max(1, repeat)
    if policy == "cycle":
        return k % count
    if policy == "hold":
        return min(k, count - 1)
    raise SVIError(f"unknown prompt policy {policy!r}; expected 'first', 'cycle' or 'hold'")


class PromptStream(Generic[T]):
    """The prompt of every clip, per mode: ``stream[k]`` is clip k's prompt item.

    Wan2.1 stream modes: ``prompts[(k // repeat) % len]``; shot: ``prompts[0]``; Wan2.2: the
    official ``prompts[k]`` with the last prompt held past the end (or cycled, by setting).
    """

    def __init__(self, items: Sequence[T], policy: PromptPolicy, repeat: int = 1) -> None:
        self.items = list(items)
        if not self.items:
            raise SVIError("the prompt stream is empty; give at least one prompt")
        if isinstance(self.items[0], str) and not any(str(s).strip() for s in self.items):
            raise SVIError("every prompt is empty; write at least one non-empty prompt")
        self.policy = policy
        self.repeat = repeat
        prompt_index(0, len(self.items), policy, repeat)  # validates policy

    @classmethod
    def for_mode(cls, items: Sequence[T], mode: ModeConfig) -> PromptStream[T]:
        return cls(items, mode.prompt_policy, mode.prompt_repeat)

    def index(self, clip: int) -> int:
        return prompt_index(clip, len(self.items), self.policy, self.repeat)

    def __getitem__(self, clip: int) -> T:
        return self.items[self.index(clip)]

    def __len__(self) -> int:
        return len(self.items)
