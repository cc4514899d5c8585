"""`oci-crane cache prune` and `cache rm`: delete what no ref reaches (or what verify found damaged), delete a ref.

Deletion follows huggingface_hub's order: model/config directories, then refs, then manifests, then blobs, so an
interrupted prune never leaves a model directory whose blobs are gone. A model directory leaves models/ in one
step (Store.discard_dir). A blob whose download lock is held by another process is skipped, never deleted.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .. import errors
from ..reference import Reference
from .reachability import blobs_of, referenced_manifests
from .store import Store
from .usage import freed_by, inodes_of, newest_mtime, tree_inodes
from .verify import verify_cache

TMP_MAX_AGE = 3600.0  # seconds: older tmp/ entries are leftovers of interrupted runs
_ORDER = {"tmp": 0, "model": 1, "config": 1, "ref": 2, "manifest": 3, "signatures": 3, "placement": 3,
          "blob": 4}


@dataclass(frozen=True)
class Removal:
    kind: str  # tmp, model, config, ref, manifest, signatures, placement, blob
    path: Path
    bytes: int  # freed on disk (a file still linked from elsewhere frees nothing)
    digest: str | None = field(default=None, compare=False)  # a blob's: prune takes its download lock

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "path": str(self.path), "bytes": self.bytes}


@dataclass(frozen=True)
class PruneReport:
    dry_run: bool
    removed: tuple[Removal, ...]  # with dry_run: what would be removed
    skipped: tuple[Removal, ...]  # blobs another process is downloading right now

    @property
    def freed(self) -> int:
        return sum(removal.bytes for removal in self.removed)

    def to_json(self) -> dict[str, object]:
        return {"dry_run": self.dry_run, "freed": self.freed, "removed": [r.to_json() for r in self.removed],
                "skipped": [r.to_json() for r in self.skipped]}


def _unreferenced(store: Store, tmp_age: float) -> list[Removal]:
    now = time.time()
    removals: list[Removal] = []
    keep_inodes: set[tuple[int, int]] = set()  # files of kept directories: their blobs stay, whatever else
    running: list[str] = []  # what fetches in progress need: their ref is written only once they succeed
    for entry in store.scratch_entries():
        if now - newest_mtime(entry.path) > tmp_age:
            removals.append(Removal("tmp", entry.path, freed_by(entry.path)))
        else:
            keep_inodes |= tree_inodes(entry.path)
            if entry.fetching is not None:
                running.append(entry.fetching)
    targets = [ref.target for ref in store.refs() if ref.target is not None]
    referenced = referenced_manifests(store, targets + running)
    for directory in store.model_dirs():
        if directory.manifest_digest in referenced:
            keep_inodes |= tree_inodes(directory.path)
        else:
            removals.append(Removal(directory.kind, directory.path, freed_by(directory.path)))
    for manifest in store.manifests():
        if manifest.digest is not None and manifest.digest not in referenced:
            removals.append(Removal("manifest", manifest.path, manifest.size))
    # The signatures kept for --offline belong to their manifest; a placement record to a --local-dir that exists.
    removals += [Removal("signatures", kept.path, kept.size) for kept in store.signature_files()
                 if kept.digest is not None and kept.digest not in referenced]
    removals += [Removal("placement", record, _size(record)) for record, target in store.placement_records()
                 if target is not None and not target.is_dir()]
    kept_blobs: set[str] = set().union(*(blobs_of(store, digest) for digest in referenced))
    for blob in store.blobs():
        if blob.digest is not None and blob.digest not in kept_blobs and not inodes_of([blob.path]) & keep_inodes:
            removals.append(Removal("blob", blob.path, blob.size, blob.digest))
    return removals


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except FileNotFoundError:  # gone since it was listed
        return 0


def _damaged(store: Store) -> list[Removal]:
    report = verify_cache(store)
    bad_inodes = inodes_of(p.path for p in report.problems if p.kind == "blob")
    broken_dirs = {p.path for p in report.problems if p.kind in ("model", "config")}
    removals = [Removal(directory.kind, directory.path, freed_by(directory.path))
                for directory in store.model_dirs()
                if directory.path in broken_dirs or tree_inodes(directory.path) & bad_inodes]
    blob_digests = {blob.path: blob.digest for blob in store.blobs()}
    for kind in ("ref", "manifest", "blob"):
        removals += [Removal(kind, p.path, p.path.stat().st_size, blob_digests.get(p.path) if kind == "blob" else None)
                     for p in report.problems if p.kind == kind]
    return removals


def _delete(store: Store, removal: Removal) -> None:
    path = removal.path
    if removal.kind in ("model", "config"):
        store.discard_dir(path)
        store.model_files_path(path).unlink(missing_ok=True)  # what it was built with: nothing to check now
    elif removal.kind == "ref":
        store.remove_ref_file(path)
    elif path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def prune_cache(store: Store, *, dry_run: bool = False, damaged: bool = False,
                tmp_age: float = TMP_MAX_AGE) -> PruneReport:
    """Default: tmp/ leftovers older than ``tmp_age``, model/config dirs and manifests no ref reaches, then
    blobs no kept manifest lists (and no kept directory links). ``damaged``: what verify_cache reports instead."""
    lock = contextlib.nullcontext() if dry_run else store.prune_lock()
    with lock:
        planned = sorted(_damaged(store) if damaged else _unreferenced(store, tmp_age),
                         key=lambda removal: _ORDER[removal.kind])
        removed, skipped = [], []
        for removal in planned:
            if removal.kind != "blob" or removal.digest is None:  # a misnamed file is nobody's download
                if not dry_run:
                    _delete(store, removal)
                removed.append(removal)
                continue
            with store.try_blob_lock(removal.digest, create=not dry_run) as free:
                if not free:
                    skipped.append(removal)
                    continue
                if not dry_run:
                    _delete(store, removal)
                removed.append(removal)
        if not dry_run:
            store.drop_stale_records()
    return PruneReport(dry_run, tuple(removed), tuple(skipped))


def discard_blobs(store: Store, blobs: Iterable[tuple[str, int]]) -> list[Path]:
    """Set aside blobs (digest, size) a fetch found damaged (of another size: cut, or written through a hard link)
    with every model and config directory that links them, as `prune --damaged` would, so that the fetch downloads
    and builds them again; the directories deleted. A blob another process has replaced meanwhile is kept, and one
    whose download another process holds is left to it (its download replaces the file)."""
    inodes: dict[str, tuple[int, int]] = {}
    for digest, size in blobs:
        with contextlib.suppress(FileNotFoundError):
            info = store.blob_path(digest).stat()
            if info.st_size != size:
                inodes[digest] = (info.st_dev, info.st_ino)
    doomed = [directory.path for directory in store.model_dirs()
              if tree_inodes(directory.path) & set(inodes.values())]
    for path in doomed:
        with contextlib.suppress(FileNotFoundError):  # another process deleted it first
            store.discard_dir(path)
    for digest, inode in inodes.items():
        with store.try_blob_lock(digest, create=True) as free, contextlib.suppress(FileNotFoundError):
            if free and inodes_of([store.blob_path(digest)]) == {inode}:  # not replaced meanwhile
                store.blob_path(digest).unlink()
    store.drop_stale_records()
    return doomed


def remove_ref(store: Store, reference: Reference) -> str:
    """Delete the ref of a tag or of a fetch by digest; returns the digest it held. Nothing else is deleted."""
    held = store.forget_ref(reference)
    if held is None:
        raise errors.OciCraneError(f"{reference.name} is not in the cache at {store.root}",
                                   "`oci-crane cache ls` lists the cached references")
    return held
