"""`oci-crane cache ls`: one entry per ref, then one per manifest with a model or config directory no ref reaches."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..oci import Manifest
from .reachability import blobs_of, document, manifests_behind, referenced_manifests
from .store import Store
from .usage import unique_size, walk_files


@dataclass(frozen=True)
class CacheEntry:
    """A ref (``reference`` set), or a model/config directory that no ref reaches (``reference`` None)."""

    reference: str | None  # registry/repository:tag
    digest: str | None  # what the ref holds (a manifest or an index); None if the ref file is unreadable
    manifests: tuple[str, ...]  # the manifest digests behind it: itself, or the children an index lists
    model_dirs: tuple[Path, ...]  # whole models (one per --subpath)
    config_dirs: tuple[Path, ...]
    size: int  # bytes of its cached blobs, each counted once
    filtered_dirs: tuple[Path, ...] = ()  # the files a fetch with --include/--exclude chose: not the whole model

    @property
    def has_model_dir(self) -> bool:
        return bool(self.model_dirs)

    def to_json(self) -> dict[str, object]:
        return {"reference": self.reference, "digest": self.digest, "manifests": list(self.manifests),
                "model_dir": self.has_model_dir, "models": [str(p) for p in self.model_dirs],
                "filtered": [str(p) for p in self.filtered_dirs], "configs": [str(p) for p in self.config_dirs],
                "size": self.size}


@dataclass(frozen=True)
class CacheInfo:
    root: Path
    entries: tuple[CacheEntry, ...]
    blob_count: int
    blob_bytes: int  # everything under blobs/, each inode once

    def to_json(self) -> dict[str, object]:
        return {"root": str(self.root), "entries": [entry.to_json() for entry in self.entries],
                "blobs": {"count": self.blob_count, "bytes": self.blob_bytes}}


def _blob_size(store: Store, digests: Iterable[str]) -> int:
    return unique_size(store.blob_path(digest) for digest in digests)


def scan_cache(store: Store) -> CacheInfo:
    """One entry per ref, then one per manifest digest with a model/config directory that no ref reaches."""
    refs = list(store.refs())
    directories: dict[str, dict[str, tuple[Path, ...]]] = {"model": {}, "filtered": {}, "config": {}}
    for directory in store.model_dirs():
        by_digest = directories["filtered" if directory.filtered else directory.kind]
        by_digest[directory.manifest_digest] = (*by_digest.get(directory.manifest_digest, ()), directory.path)
    models, filtered, configs = directories["model"], directories["filtered"], directories["config"]
    entries = []
    for ref in refs:
        behind = manifests_behind(store, ref.target) if ref.target else ()
        used: set[str] = set().union(*(blobs_of(store, digest) for digest in behind))
        entries.append(CacheEntry(ref.name or str(ref.path), ref.target, behind,
                                  tuple(p for d in behind for p in models.get(d, ())),
                                  tuple(p for d in behind for p in configs.get(d, ())), _blob_size(store, used),
                                  tuple(p for d in behind for p in filtered.get(d, ()))))
    referenced = referenced_manifests(store, (ref.target for ref in refs if ref.target))
    for digest in sorted((models.keys() | filtered.keys() | configs.keys()) - referenced):
        model_dirs, filtered_dirs = models.get(digest, ()), filtered.get(digest, ())
        config_dirs = configs.get(digest, ())
        if isinstance(document(store, digest), Manifest):
            size = _blob_size(store, blobs_of(store, digest))
        else:  # the manifest is gone: count what the directories hold
            size = unique_size(path for directory in (*model_dirs, *filtered_dirs, *config_dirs)
                               for path in walk_files(directory))
        entries.append(CacheEntry(None, digest, (digest,), model_dirs, config_dirs, size, filtered_dirs))
    blobs = list(store.blobs())
    return CacheInfo(store.root, tuple(entries), len(blobs), unique_size(blob.path for blob in blobs))
