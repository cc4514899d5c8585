"""The way into a fetch, for `oci-crane fetch` and Python's ``fetch()``: the cache's record first (cached.py:
start-up is most of a warm fetch, so nothing heavy is loaded for it), the Puller (imported only then) otherwise."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .cache.store import Store
from .cached import FetchResult, lookup
from .options import FetchOptions

if TYPE_CHECKING:
    from .progress import Progress


def fetch(options: FetchOptions, text: str, progress: Progress | None = None) -> FetchResult:
    store = Store(options.cache_dir)
    found, digest = lookup(store, options, text)
    if found is not None:
        return found
    from .pull import open_puller

    return open_puller(options, progress, store).fetch(text, digest=digest)
