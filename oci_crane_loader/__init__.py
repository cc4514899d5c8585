"""Serve models straight from OCI registries: fetch with crane, verify, cache, feed vLLM.

Nothing here imports vLLM: the vLLM plugin lives in ``vllm_plugin`` and is loaded only by vLLM itself.
"""

from __future__ import annotations

__version__ = "0.1.0"

from pathlib import Path

from .errors import OciCraneError

__all__ = ["OciCraneError", "__version__", "fetch"]


def fetch(reference: str, *, cache_dir: str | Path | None = None, platform: str | None = None, jobs: int = 4,
          offline: bool = False, insecure: bool = False) -> Path:
    """Download (or reuse from the cache) the model at ``reference`` and return its directory."""
    from .cache.store import Store
    from .crane import Crane
    from .pull import Puller

    crane = Crane(insecure=insecure, platform=platform, offline=offline)
    return Puller(Store(cache_dir), crane, jobs=jobs).fetch(reference).path
