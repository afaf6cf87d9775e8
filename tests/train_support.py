"""Helpers shared by the training tests (not a test module)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from train.cache import CachedSample, FeatureCache, load_sample


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a trainer's ``loss.csv``."""
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def cached_entries(root: Path) -> list[CachedSample]:
    """The samples listed by the first feature-cache manifest under ``root / "cache"``."""
    manifest = sorted((root / "cache").glob("manifest-*.json"))[0]
    return [CachedSample(**e) for e in json.loads(manifest.read_text())["samples"]]


def cached_samples(root: Path) -> list:
    """Every sample of that manifest, loaded from the cache."""
    cache = FeatureCache(root / "cache")
    return [load_sample(cache, e) for e in cached_entries(root)]
