"""Shared helpers of the parity tests: where the reference fixtures are, how to report."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parent.parent


def fixtures_dir() -> Path:
    """``$SVI_FIXTURES_DIR``, else ``<repo>/../shared/fixtures``."""
    env = os.environ.get("SVI_FIXTURES_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "fixtures"


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
