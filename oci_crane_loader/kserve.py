"""`oci-crane kserve-init URI DEST`: KServe's storage-initializer contract, so that an InferenceService's
``storageUri: oci-artifact://ghcr.io/acme/llama:v1`` is fetched by crane (deploy/kserve-storage-container.yaml).

KServe starts the container of the matching ClusterStorageContainer with its command, and the arguments
``[storageUri, destination]`` (``/mnt/models``). ``oci-artifact://`` is ours because KServe itself owns ``oci://``
(modelcars: the model as a container image, run as a sidecar).

Without OCI_CRANE_LOADER_CACHE the cache is a scratch directory inside DEST (the same file system, so the model's
files are hard links, never copies), removed once DEST holds the model: DEST ends with the model only.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from pathlib import Path

from . import errors
from .local_dir import LocalDirReport, place_model

log = logging.getLogger(__name__)

SCHEME = "oci-artifact://"


def reference_of(uri: str) -> str:
    """``oci-artifact://ghcr.io/acme/llama:v1`` -> ``ghcr.io/acme/llama:v1`` (any other text is a reference as is)."""
    return uri[len(SCHEME):] if uri[: len(SCHEME)].lower() == SCHEME else uri


def initialize(arguments: Sequence[str], cache_dir: str | Path | None, *, insecure: bool = False,
               platform: str | None = None) -> list[LocalDirReport]:
    """Fetch each ``URI DEST`` pair of ``arguments`` into DEST; the cache is ``cache_dir``, else
    OCI_CRANE_LOADER_CACHE, else a scratch directory in each DEST."""
    from .cache.store import remove_tree
    from .fetching import fetch, open_store
    from .options import fetch_options
    from .settings import settings

    cache_dir = cache_dir or settings().cache_dir  # OCI_CRANE_LOADER_CACHE

    if not arguments or len(arguments) % 2:
        raise errors.UsageError(f"kserve-init takes URI DEST pairs, got {len(arguments)} argument(s)",
                                "run it as KServe does: oci-crane kserve-init oci-artifact://REF /mnt/models")
    reports = []
    for uri, destination in zip(arguments[::2], arguments[1::2], strict=True):
        target = Path(destination)
        scratch = None if cache_dir else target / f".oci-crane-cache-{secrets.token_hex(4)}"
        try:
            options = fetch_options(cache_dir=cache_dir or scratch, insecure=insecure, platform=platform)
            result = fetch(options, reference_of(uri))
            # A scratch cache goes once DEST holds the model: hard links then cost nothing and share nothing.
            reports.append(place_model(result.path, result.files, target, store=open_store(options),
                                       mode="link" if scratch else "copy",
                                       unreported=scratch.name if scratch else None))
        finally:
            if scratch is not None:
                remove_tree(scratch)
        log.info("%s -> %s", uri, target)
    return reports
