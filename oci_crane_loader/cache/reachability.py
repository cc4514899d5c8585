"""What a ref reaches: a manifest digest (an index reaches every child it lists), then that manifest's config and
layer blobs. Only reads: a damaged manifest reaches nothing here but stays on disk for `verify` to report."""

from __future__ import annotations

from collections.abc import Iterable

from .. import errors
from ..oci import Index, Manifest, parse_manifest_or_index
from .store import Store


def document(store: Store, digest: str) -> Manifest | Index | None:
    """A cached manifest or index, if present, intact and valid."""
    try:
        raw = store.load_manifest(digest, discard_damaged=False)
    except OSError:
        return None
    if raw is None:
        return None
    try:
        return parse_manifest_or_index(raw)
    except errors.OciCraneError:
        return None


def manifests_behind(store: Store, digest: str) -> tuple[str, ...]:
    """The manifest digests a ref to ``digest`` stands for: the children of an index, else itself."""
    found = document(store, digest)
    if isinstance(found, Index):
        return tuple(child.digest for child in found.manifests)
    return (digest,)


def blobs_of(store: Store, manifest_digest: str) -> set[str]:
    found = document(store, manifest_digest)
    if not isinstance(found, Manifest):
        return set()
    return {found.config.digest, *(layer.digest for layer in found.layers)}


def referenced_manifests(store: Store, targets: Iterable[str]) -> set[str]:
    """The digests the refs hold (``targets``), and the manifests behind each."""
    referenced: set[str] = set()
    for target in targets:
        referenced.add(target)
        referenced.update(manifests_behind(store, target))
    return referenced
