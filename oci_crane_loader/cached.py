"""A fetch the cache answers alone: the model directory a finished fetch recorded, found by what was asked.

A warm fetch is mostly start-up, so this path loads no pydantic model, format reader, tar code or HTTP library:
the manifest's digest (sourcing.py) and the record the fetch that made the directory left (Store.save_record)
are enough. A record is a shortcut, never a source of truth: it counts only for the digest it was made for (its
directory's name starts with the digest the fetch resolved to), its directory must be a real directory in the
cache, and every blob the directory links must have its size; otherwise the full path (pull.Puller) runs and
decides, as it would have without the record.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .cache.contents import missing_files
from .digests import digest_hex, is_digest
from .platforms import host_platform

if TYPE_CHECKING:
    from .cache.store import Store

MAX_RECORD_SIZE = 1 << 20  # a record names a directory and its blobs: kilobytes; anything larger is not one


@dataclass(frozen=True)
class Recorded:
    """What a record says of the model directory a fetch made."""

    path: Path
    digest: str  # the manifest's (the child's, for an index)
    index_digest: str | None
    format: str


def record_key(top_digest: str, platform: str | None, subpath: str | None, include: Sequence[str],
               exclude: Sequence[str]) -> str:
    """What a fetch was asked, as one text: the same question always gets the same model directory."""
    return json.dumps([top_digest, platform or f"host {host_platform()}", subpath or "", sorted(set(include)),
                       sorted(set(exclude))])


def save_record(store: Store, key: str, recorded: Recorded, blobs: Sequence[tuple[str, int]]) -> None:
    """After a fetch made or checked ``recorded.path``: ``blobs`` are the (digest, size) of the files it links."""
    store.save_record(key, {"dir": recorded.path.name, "digest": recorded.digest,
                            "index_digest": recorded.index_digest, "format": recorded.format,
                            "blobs": [list(blob) for blob in blobs]})


def find_recorded(store: Store, top: str, key: str) -> Recorded | None:
    """The model directory the record for ``key`` names, if the record holds for ``top`` (the digest the
    reference names now) and the directory is still whole; else None (the full path decides)."""
    record = store.load_record(key, max_size=MAX_RECORD_SIZE)
    if record is None:
        return None
    digest, index_digest, kind, blobs = (record.get(name) for name in ("digest", "index_digest", "format", "blobs"))
    if (not isinstance(digest, str) or not isinstance(kind, str) or not isinstance(blobs, list)
            or not isinstance(index_digest, str | None)):
        return None
    # Bound to the digest it was made for: an edited record cannot hand out another model's directory.
    if (index_digest or digest) != top or not is_digest(digest) or not str(record.get("dir")).startswith(
            digest_hex(digest)):
        return None
    path = store.model_dir_named(record.get("dir"))
    # Whole as built (each file there, of its size), and judged: a directory with nothing recorded (an older
    # version's) takes the full path, which checks it against a fresh build and records it.
    if path is None or missing_files(store, path) != []:
        return None
    for blob in blobs:  # the check the full path makes of a cached directory: a truncated blob is not served
        if not (isinstance(blob, list) and len(blob) == 2 and store.has_blob_sized(*blob)):
            return None
    return Recorded(path, digest, index_digest, kind)
