"""What a test's cache holds, read through the Store's paths and listings (cache/store.py alone knows the layout).

A cache that was never created holds nothing, and looking at it does not create it."""

from __future__ import annotations

import fnmatch
from pathlib import Path

from oci_crane_loader.cache.store import ModelDir, Store


def blob_names(cache_dir: Path) -> list[str]:
    """The files under blobs/: their names, the digests' hex."""
    return [blob.path.name for blob in Store(cache_dir).blobs()] if cache_dir.exists() else []


def manifest_names(cache_dir: Path) -> list[str]:
    return [manifest.path.name for manifest in Store(cache_dir).manifests()] if cache_dir.exists() else []


def model_dirs(cache_dir: Path) -> list[Path]:
    """The model directories (not their config-only twins)."""
    listed: list[ModelDir] = list(Store(cache_dir).model_dirs()) if cache_dir.exists() else []
    return [entry.path for entry in listed if entry.kind == "model"]


def scratch(cache_dir: Path, pattern: str = "*") -> list[Path]:
    """What tmp/ holds whose name matches ``pattern``: temp files, partial downloads, scratch dirs, fetch markers."""
    listed = [entry.path for entry in Store(cache_dir).scratch_entries()] if cache_dir.exists() else []
    return [path for path in listed if fnmatch.fnmatch(path.name, pattern)]
