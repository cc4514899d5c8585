"""Serve models straight from OCI registries: fetch with crane, verify, cache, feed vLLM.

Nothing here imports vLLM: the vLLM plugin lives in ``vllm_plugin`` and is loaded only by vLLM itself.
"""

from __future__ import annotations

__version__ = "0.1.0"

import logging
from collections.abc import Sequence
from pathlib import Path

from .errors import OciCraneError

__all__ = ["OciCraneError", "__version__", "fetch"]


def fetch(reference: str, *, cache_dir: str | Path | None = None, platform: str | None = None, jobs: int = 4,
          offline: bool = False, insecure: bool = False, subpath: str | None = None, plain_http: bool = False,
          ca_file: str | Path | None = None, authfile: str | Path | None = None, retries: int | None = None,
          include: Sequence[str] = (), exclude: Sequence[str] = (),
          local_dir: str | Path | None = None, local_dir_mode: str = "copy") -> Path:
    """Download (or reuse from the cache) the model at ``reference`` and return its directory.

    The keyword arguments are the command line's options (``oci-crane fetch --help``), checked the same way
    (a bad one raises UsageError), and the OCI_CRANE_* environment applies as it does there. With ``local_dir``
    the model's files are also placed there (``--local-dir``; ``local_dir_mode`` "copy": files you may edit, reflinks
    where the file system has them; "link": hard links to the cache's read-only files) and ``local_dir`` is
    returned; files replaced, removed or left alone there are logged as warnings."""
    from .fetching import fetch as fetch_model
    from .options import fetch_options

    options = fetch_options(cache_dir=cache_dir, platform=platform, offline=offline, insecure=insecure, jobs=jobs,
                            subpath=subpath, plain_http=plain_http, ca_file=ca_file, authfile=authfile,
                            retries=retries, include=include, exclude=exclude)
    if local_dir is not None:
        from .local_dir import cache_root, check_local_dir

        check_local_dir(local_dir, cache_root(options.cache_dir), mode=local_dir_mode)  # before any download
    result = fetch_model(options, reference)
    if local_dir is None:
        return result.path
    from .cache.store import Store
    from .local_dir import place_model

    placed = place_model(result.path, result.files, local_dir, store=Store(options.cache_dir), mode=local_dir_mode)
    for line in placed.warnings():
        logging.getLogger(__name__).warning("%s", line)
    return placed.path
