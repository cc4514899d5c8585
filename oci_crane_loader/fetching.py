"""The way into a fetch, for `oci-crane fetch` and Python's ``fetch()``: the cache's record first (cached.py:
start-up is most of a warm fetch, so nothing heavy is loaded for it), the Puller (imported only then) otherwise."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .cached import FetchResult, lookup
from .options import FetchOptions

if TYPE_CHECKING:
    from .progress import Progress


def fetch(options: FetchOptions, text: str, progress: Progress | None = None) -> FetchResult:
    found, digest = lookup(options, text)
    if found is not None:
        return found
    from .pull import open_puller

    return open_puller(options, progress).fetch(text, digest=digest)
