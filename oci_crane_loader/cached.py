"""A fetch the cache answers alone: the model directory a finished fetch recorded, found by what was asked.

A warm fetch is mostly start-up, so this path loads no pydantic model, format reader, tar code or HTTP library:
the manifest's digest (one `crane manifest` for a tag; the ref in the cache with --offline; the reference's own
digest) and the record the fetch that made the directory left (Store.save_record) are enough. A record is a
shortcut, never a source of truth: its directory must exist and every blob the directory links must have its
size, else the full path (pull.Puller) runs and decides, as it would have without the record.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .cache.store import Store
from .files import list_files
from .options import FetchOptions, open_crane
from .platforms import host_platform
from .reference import Reference, parse_reference

if TYPE_CHECKING:
    from .registry.crane import Crane

log = logging.getLogger(__name__)

# Manifests are read into memory whole; real ones are kilobytes (registries cap them at 4 MiB), so anything far
# larger is refused before it is parsed.
MAX_DOCUMENT_SIZE = 8 << 20


@dataclass(frozen=True)
class FetchResult:
    reference: str
    digest: str
    pinned: str
    path: Path
    format: str
    files: list[str]
    bytes: int
    index_digest: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"reference": self.reference, "digest": self.digest, "pinned": self.pinned, "path": str(self.path),
                "format": self.format, "files": self.files, "bytes": self.bytes, "index_digest": self.index_digest}


def lookup(store: Store, options: FetchOptions, text: str) -> tuple[FetchResult | None, str | None]:
    """The cached answer to fetching ``text`` with ``options`` from ``store`` (the cache ``options`` name), if it
    holds it; and the digest the reference names now (None with --offline when its tag was never fetched), for the
    full path to go on from."""
    reference = parse_reference(text)
    top = _top_digest(store, open_crane(options), reference)
    if top is None:
        return None, None
    with store.fetching(top):  # as the full path does: a prune running now keeps what this fetch hands out
        return _from_record(store, reference, top, options), top


def record_key(top_digest: str, platform: str | None, subpath: str | None, include: Sequence[str],
               exclude: Sequence[str]) -> str:
    """What a fetch was asked, as one text: the same question always gets the same model directory."""
    return json.dumps([top_digest, platform or f"host {host_platform()}", subpath or "", sorted(set(include)),
                       sorted(set(exclude))])


def save_record(store: Store, key: str, result: FetchResult, blobs: Sequence[tuple[str, int]]) -> None:
    """After a fetch made or checked ``result.path``: ``blobs`` are the (digest, size) of the files it links."""
    store.save_record(key, {"dir": result.path.name, "digest": result.digest, "index_digest": result.index_digest,
                            "format": result.format, "blobs": [list(blob) for blob in blobs]})


def _top_digest(store: Store, crane: Crane, reference: Reference) -> str | None:
    """The digest the reference names now (an index's, for a multi-platform one); None with --offline when the
    tag was never fetched (the Puller then says so)."""
    if reference.digest:
        return reference.digest
    if crane.offline:
        return store.load_ref(reference)
    raw = crane.manifest(reference.name)
    if len(raw) > MAX_DOCUMENT_SIZE:
        return None  # the Puller refuses it with the full error
    return store.save_manifest(raw)


def _from_record(store: Store, reference: Reference, top: str, options: FetchOptions) -> FetchResult | None:
    record = store.load_record(record_key(top, options.platform, options.subpath, options.include,
                                          options.exclude))
    if record is None:
        return None
    path = store.model_dir_named(record.get("dir"))
    digest, index_digest, kind, blobs = (record.get(key) for key in ("digest", "index_digest", "format", "blobs"))
    if (path is None or not isinstance(digest, str) or not isinstance(kind, str) or not isinstance(blobs, list)
            or not isinstance(index_digest, str | None)):
        return None
    for blob in blobs:  # the check the full path makes of a cached directory: a truncated blob is not served
        if not (isinstance(blob, list) and len(blob) == 2 and store.has_blob_sized(*blob)):
            return None
    try:
        store.save_ref(reference, top)
    except OSError:
        if not options.offline:
            raise
        log.warning("cannot record %s in the read-only cache %s", reference, store.root)
    files = list_files(path)
    return FetchResult(str(reference), digest, reference.with_digest(digest), path, kind, files,
                       sum((path / name).stat().st_size for name in files), index_digest)
