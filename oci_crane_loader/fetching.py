"""The fetch service: every way into a fetch (the command line, Python's ``fetch()``, KServe's initializer, the
demo and the vLLM loader) comes through here. It parses the reference once, sources its digest by one rule
(sourcing.py), answers from the cache's record when that holds (cached.py: nothing heavy is loaded for it), else
asks the Puller (imported only then), and records the result in one place. With a signature policy
(signatures/policy.py) the digest's signature is checked as soon as the digest is known, before either.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .cache.store import Store
from .cached import Recorded, find_recorded, record_key, save_record
from .files import list_files
from .options import FetchOptions, open_crane
from .reference import Reference, parse_reference
from .sourcing import require_digest, source_digest

if TYPE_CHECKING:
    from .formats import Plan
    from .progress import Progress
    from .pull import Puller, Resolved
    from .registry.crane import Crane
    from .registry.sources import Source
    from .signatures.openssf import FileBundle

log = logging.getLogger(__name__)


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
    # Where this fetch got each manifest and blob it downloaded (digest -> "mirror URL" or "upstream REPO"); set
    # only when the node configures mirrors for the reference, so a plain fetch's JSON is as it always was. A
    # fetch answered from the cache downloaded at most the tag's manifest: {} for a digest reference.
    sources: dict[str, str] | None = None

    def to_json(self) -> dict[str, object]:
        found: dict[str, object] = {
            "reference": self.reference, "digest": self.digest, "pinned": self.pinned, "path": str(self.path),
            "format": self.format, "files": self.files, "bytes": self.bytes, "index_digest": self.index_digest}
        if self.sources is not None:
            found["sources"] = self.sources
        return found


def open_store(options: FetchOptions) -> Store:
    return Store(options.cache_dir)


def fetch(options: FetchOptions, text: str, progress: Progress | None = None) -> FetchResult:
    """The model directory for ``text``, from the cache's record when it holds, else fetched and recorded."""
    reference = parse_reference(text)
    store = open_store(options)
    crane = open_crane(options)
    came_from: dict[str, str] = {}  # what was downloaded, from where: the tag's manifest here, then the Puller's
    sources = _sources(options, crane, reference)  # the node's mirror files read once for the whole fetch
    # Only a node with a mirror for the reference gets "sources" in the result: a plain fetch's JSON is as it was.
    mirrored = any(source.endpoint is not None for source in sources or ())
    top = source_digest(store, crane, reference, came_from, sources)
    signed: FileBundle | None = None
    if top is not None:
        # Before the record's shortcut and before any download: a policy holds for cached models too.
        signed = _require_signed(store, crane, reference, top, options)
        key = _key(top, options)
        with store.fetching(top):  # as the full path does: a prune running now keeps what this fetch hands out
            recorded = find_recorded(store, top, key)
            if recorded is not None and signed is not None and (options.subpath or options.include or
                                                                options.exclude):
                recorded = None  # the full path refuses a part of a model its model-signing bundle covers whole
            if recorded is not None:
                if signed is not None:  # cheap when this directory was checked against this bundle before
                    from .signatures.openssf import require_files

                    require_files(store, signed, recorded.path, reference, recorded.digest)
                _save_ref(store, reference, top, options)
                return _result(reference, recorded, came_from if mirrored else None)
    from .pull import open_puller

    # The Puller says why when `top` is None (a tag offline that the cache never fetched).
    puller = open_puller(options, progress, store)
    made, linked = puller.fetch(reference, top, signed)
    # The next fetch of the same thing answers from this record, without parsing anything.
    save_record(store, _key(made.index_digest or made.digest, options), made, linked)
    return _result(reference, made, {**came_from, **puller.came_from} if mirrored else None)


def prepare(options: FetchOptions, text: str) -> tuple[Puller, Resolved, Plan, Path]:
    """For the vLLM loader: the reference sourced by the same rule as a fetch, then only the small files (config,
    tokenizer) made; the weights follow through the returned Puller (``ensure_blobs``, streamed)."""
    from .pull import open_puller

    reference = parse_reference(text)
    puller = open_puller(options)
    digest = require_digest(puller.store, puller.crane, reference, puller.came_from)  # the vLLM log's sources
    signed = _require_signed(puller.store, puller.crane, reference, digest, options)
    resolved, plan, path = puller.prepare(reference, digest, signed)
    return puller, resolved, plan, path


def _sources(options: FetchOptions, crane: Crane, reference: Reference) -> list[Source] | None:
    """Where ``reference`` may come from (mirrors, upstream); None offline, where nothing is asked."""
    if options.offline:
        return None
    from .registry.sources import plan

    return plan(reference, crane)


def _require_signed(store: Store, crane: Crane, reference: Reference, digest: str,
                    options: FetchOptions) -> FileBundle | None:
    """The signature policy's verdict (signatures/policy.py, imported only when keys are in force)."""
    if not options.verify.enforced:
        return None
    from .signatures.policy import require_signed

    return require_signed(store, crane, reference, digest, options.verify)


def _key(top: str, options: FetchOptions) -> str:
    return record_key(top, options.platform, options.subpath, options.include, options.exclude)


def _save_ref(store: Store, reference: Reference, top: str, options: FetchOptions) -> None:
    try:
        store.save_ref(reference, top)
    except OSError:
        if not options.offline:
            raise
        log.warning("cannot record %s in the read-only cache %s", reference, store.root)


def _result(reference: Reference, recorded: Recorded, sources: dict[str, str] | None = None) -> FetchResult:
    files = list_files(recorded.path)
    return FetchResult(str(reference), recorded.digest, reference.with_digest(recorded.digest), recorded.path,
                       recorded.format, files, sum((recorded.path / name).stat().st_size for name in files),
                       recorded.index_digest, sources)
