"""Shared helpers of the parity tests: where the reference fixtures are, how to report.

The fixtures are the project's own (``tests/fixtures/``, written from ComfyUI's Wan classes by
``tests/fixtures/make_fixtures.py``); ``SVI_FIXTURES_DIR`` points the tests at another set of
the same layout (e.g. a reference set kept outside the repository).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

PROJECT_FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixtures_dir() -> Path:
    """``$SVI_FIXTURES_DIR`` when set, else the project's ``tests/fixtures``."""
    env = os.environ.get("SVI_FIXTURES_DIR")
    return Path(env) if env else PROJECT_FIXTURES


def fixture(*parts: str) -> Path:
    """Path of a fixture folder/file; skips the test with a reason when it is absent."""
    path = fixtures_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference fixture '{path}' not found (set SVI_FIXTURES_DIR)")
    return path


def tensor(*parts: str, key: str) -> torch.Tensor:
    return load_file(str(fixture(*parts)))[key]


def report(name: str, max_diff: float, tol: float) -> None:
    """Print the measured difference; append it to ``$SVI_PARITY_REPORT`` when set."""
    line = f"{name}: max|ours - expected| = {max_diff:.3e} (tolerance {tol:.0e})"
    print(line)
    out = os.environ.get("SVI_PARITY_REPORT")
    if out:
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
