"""Serve models straight from OCI registries: fetch with crane, verify, cache, feed vLLM.

Nothing here imports vLLM: the vLLM plugin lives in ``vllm_plugin`` and is loaded only by vLLM itself.
"""

from __future__ import annotations

__version__ = "0.1.0"

from collections.abc import Sequence
from pathlib import Path

from .errors import OciCraneError

__all__ = ["OciCraneError", "__version__", "fetch"]


def fetch(reference: str, *, cache_dir: str | Path | None = None, platform: str | None = None, jobs: int = 4,
          offline: bool = False, insecure: bool = False, subpath: str | None = None, plain_http: bool = False,
          ca_file: str | Path | None = None, authfile: str | Path | None = None, retries: int | None = None,
          include: Sequence[str] = (), exclude: Sequence[str] = ()) -> Path:
    """Download (or reuse from the cache) the model at ``reference`` and return its directory.

    The keyword arguments are the command line's options (``oci-crane fetch --help``), checked the same way
    (a bad one raises UsageError), and the OCI_CRANE_* environment applies as it does there."""
    from .options import fetch_options
    from .pull import open_puller

    options = fetch_options(cache_dir=cache_dir, platform=platform, offline=offline, insecure=insecure, jobs=jobs,
                            subpath=subpath, plain_http=plain_http, ca_file=ca_file, authfile=authfile,
                            retries=retries, include=include, exclude=exclude)
    return open_puller(options).fetch(reference).path
