"""Inspect and clean the cache: list refs and models, re-hash blobs and manifests, prune what no ref reaches.

Reachability: ``refs/`` -> a manifest digest (an index reaches every child it lists) -> that manifest's config
and layer blobs. Model and config directories are kept for reachable manifest digests only.

Deletion follows huggingface_hub's order: model/config directories, then refs, then manifests, then blobs, so an
interrupted prune never leaves a model directory whose blobs are gone. A model directory is first renamed into
``tmp/``, so it leaves ``models/`` in one step: fetch trusts any directory there to be complete. A blob whose
download lock is held by another process is skipped, never deleted.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import filelock

from . import errors
from .formats import Action, recognise
from .oci import Index, Manifest, parse_manifest_or_index, sha256_digest
from .progress import human
from .reference import Reference
from .store import DIGESTS, FETCHING, LAYOUT_MARKER, TAGS, Store, file_sha256, fsync_dir

TMP_MAX_AGE = 3600.0  # seconds: older tmp/ entries are leftovers of interrupted runs
_HEX = re.compile(r"[a-f0-9]{64}")
_DIR_NAME = re.compile(r"([a-f0-9]{64})(-[a-f0-9]+)?")  # a manifest digest, plus a hash of --subpath if chosen
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_EMPTY_CONFIG = sha256_digest(b"{}")
_DIR_KINDS = (("model", "models"), ("config", "configs"))


# --- results -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CacheEntry:
    """A ref (``reference`` set), or a model/config directory that no ref reaches (``reference`` None)."""

    reference: str | None  # registry/repository:tag
    digest: str | None  # what the ref holds (a manifest or an index); None if the ref file is unreadable
    manifests: tuple[str, ...]  # the manifest digests behind it: itself, or the children an index lists
    model_dirs: tuple[Path, ...]
    config_dirs: tuple[Path, ...]
    size: int  # bytes of its cached blobs, each counted once

    @property
    def has_model_dir(self) -> bool:
        return bool(self.model_dirs)

    def to_json(self) -> dict[str, object]:
        return {"reference": self.reference, "digest": self.digest, "manifests": list(self.manifests),
                "model_dir": self.has_model_dir, "models": [str(p) for p in self.model_dirs],
                "configs": [str(p) for p in self.config_dirs], "size": self.size}


@dataclass(frozen=True)
class CacheInfo:
    root: Path
    entries: tuple[CacheEntry, ...]
    blob_count: int
    blob_bytes: int  # everything under blobs/, each inode once

    def to_json(self) -> dict[str, object]:
        return {"root": str(self.root), "entries": [entry.to_json() for entry in self.entries],
                "blobs": {"count": self.blob_count, "bytes": self.blob_bytes}}


@dataclass(frozen=True)
class Problem:
    kind: str  # blob, manifest, ref, model, config
    path: Path  # the damaged file, or the model/config directory
    detail: str

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "path": str(self.path), "detail": self.detail}


@dataclass(frozen=True)
class VerifyReport:
    root: Path
    blobs: int
    manifests: int
    refs: int
    directories: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {"root": str(self.root), "ok": self.ok, "checked": {"blobs": self.blobs, "manifests": self.manifests,
                "refs": self.refs, "directories": self.directories},
                "problems": [problem.to_json() for problem in self.problems]}

    def error(self) -> errors.IntegrityError:
        shown = ", ".join(str(problem.path) for problem in self.problems[:3])
        more = f" and {len(self.problems) - 3} more" if len(self.problems) > 3 else ""
        return errors.IntegrityError(
            f"{len(self.problems)} damaged cache entr{'y' if len(self.problems) == 1 else 'ies'}: {shown}{more}",
            "run `oci-crane cache prune --damaged`, then fetch the model again")


@dataclass(frozen=True)
class Removal:
    kind: str  # tmp, model, config, ref, manifest, blob
    path: Path
    bytes: int  # freed on disk (a file still linked from elsewhere frees nothing)

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


# --- reading the cache ---------------------------------------------------------------------------------------

def _walk_files(root: Path) -> Iterator[Path]:
    """Every non-directory under root (root itself if it is a file); symlinks are not followed."""
    if not root.is_dir() or root.is_symlink():
        if root.exists() or root.is_symlink():
            yield root
        return
    for directory, _dirs, files in os.walk(root):
        for name in files:
            yield Path(directory) / name


def _unique_size(paths: Iterable[Path]) -> int:
    seen: set[tuple[int, int]] = set()
    total = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            info = path.lstat()
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


def _inodes(root: Path) -> set[tuple[int, int]]:
    found = set()
    for path in _walk_files(root):
        with contextlib.suppress(FileNotFoundError):
            info = path.lstat()
            found.add((info.st_dev, info.st_ino))
    return found


def _freed_by(root: Path) -> int:
    """Bytes freed by deleting root: files with no other hard link (a linked blob is counted as a blob)."""
    return _unique_size(path for path in _walk_files(root) if path.lstat().st_nlink == 1)


def _entries(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except FileNotFoundError:
        return []


def _digest_files(directory: Path) -> list[Path]:
    return [path for path in _entries(directory) if path.is_file() and _HEX.fullmatch(path.name)]


@dataclass(frozen=True)
class _Ref:
    reference: str | None  # None: a file under refs/ that is not refs/<registry>/<repository>/@tags/<tag>
    path: Path
    digest: str | None  # None: the file does not hold a digest


def _ref_name(parts: tuple[str, ...]) -> str | None:
    """registry/repository:tag or registry/repository@sha256:hex for refs/<registry>/<repository>/@tags/<tag>
    or .../@digests/<hex>; None for any other path."""
    if len(parts) < 4:
        return None
    repository = f"{parts[0]}/{'/'.join(parts[1:-2])}"
    if parts[-2] == TAGS:
        return f"{repository}:{parts[-1]}"
    if parts[-2] == DIGESTS and _HEX.fullmatch(parts[-1]):
        return f"{repository}@sha256:{parts[-1]}"
    return None


def _refs(store: Store) -> list[_Ref]:
    base = store.root / "refs"
    found = []
    for path in sorted(_walk_files(base)):
        parts = path.relative_to(base).parts
        if parts == (LAYOUT_MARKER,):
            continue
        reference = _ref_name(parts)
        try:
            text = path.read_text().strip()
        except (OSError, UnicodeDecodeError):
            text = ""
        found.append(_Ref(reference, path, text if _DIGEST.fullmatch(text) else None))
    return found


def _document(store: Store, digest: str) -> Manifest | Index | None:
    """A cached manifest or index, if present, intact and valid (never deletes anything, unlike Store)."""
    try:
        raw = store.manifest_path(digest).read_bytes()
    except OSError:
        return None
    if sha256_digest(raw) != digest:
        return None
    try:
        return parse_manifest_or_index(raw)
    except errors.OciCraneError:
        return None


def _manifests_behind(store: Store, digest: str) -> tuple[str, ...]:
    document = _document(store, digest)
    if isinstance(document, Index):
        return tuple(child.digest for child in document.manifests)
    return (digest,)


def _blobs_of(store: Store, manifest_digest: str) -> set[str]:
    document = _document(store, manifest_digest)
    if not isinstance(document, Manifest):
        return set()
    return {document.config.digest, *(layer.digest for layer in document.layers)}


def _referenced_manifests(store: Store, refs: list[_Ref]) -> set[str]:
    referenced: set[str] = set()
    for ref in refs:
        if ref.digest is not None:
            referenced.add(ref.digest)
            referenced.update(_manifests_behind(store, ref.digest))
    return referenced


def _dirs(store: Store, sub: str) -> dict[str, tuple[Path, ...]]:
    """Manifest digest -> its directories under models/ or configs/ (one per --subpath chosen)."""
    found: dict[str, tuple[Path, ...]] = {}
    for path in _entries(store.root / sub / "sha256"):
        match = _DIR_NAME.fullmatch(path.name)
        if match and path.is_dir():
            digest = f"sha256:{match[1]}"
            found[digest] = (*found.get(digest, ()), path)
    return found


def _all_dirs(store: Store) -> Iterator[tuple[str, str, Path]]:
    """(kind, manifest digest, directory) for every model and config directory."""
    for kind, sub in _DIR_KINDS:
        for digest, directories in _dirs(store, sub).items():
            for directory in directories:
                yield kind, digest, directory


def _blob_size(store: Store, digests: Iterable[str]) -> int:
    return _unique_size(store.blob_path(digest) for digest in digests)


def scan_cache(store: Store) -> CacheInfo:
    """One entry per ref, then one per manifest digest with a model/config directory that no ref reaches."""
    refs = _refs(store)
    models, configs = _dirs(store, "models"), _dirs(store, "configs")
    entries = []
    for ref in refs:
        behind = _manifests_behind(store, ref.digest) if ref.digest else ()
        used: set[str] = set().union(*(_blobs_of(store, digest) for digest in behind))
        entries.append(CacheEntry(ref.reference or str(ref.path), ref.digest, behind,
                                  tuple(p for d in behind for p in models.get(d, ())),
                                  tuple(p for d in behind for p in configs.get(d, ())), _blob_size(store, used)))
    referenced = _referenced_manifests(store, refs)
    for digest in sorted((models.keys() | configs.keys()) - referenced):
        model_dirs, config_dirs = models.get(digest, ()), configs.get(digest, ())
        if isinstance(_document(store, digest), Manifest):
            size = _blob_size(store, _blobs_of(store, digest))
        else:  # the manifest is gone: count what the directories hold
            size = _unique_size(path for directory in (*model_dirs, *config_dirs) for path in _walk_files(directory))
        entries.append(CacheEntry(None, digest, (digest,), model_dirs, config_dirs, size))
    blobs = [path for path in _entries(store.root / "blobs" / "sha256") if path.is_file()]
    return CacheInfo(store.root, tuple(entries), len(blobs), _unique_size(blobs))


# --- verify --------------------------------------------------------------------------------------------------

def _hash_problem(kind: str, path: Path) -> Problem | None:
    if not _HEX.fullmatch(path.name):
        return Problem(kind, path, "the file name is not a sha256 digest")
    try:
        actual = file_sha256(path)
    except OSError as exc:
        return Problem(kind, path, f"cannot be read ({exc.strerror})")
    if actual != f"sha256:{path.name}":
        return Problem(kind, path, f"content hashes to {actual}")
    return None


def _linked_blobs(store: Store, digest: str, weights: bool) -> tuple[set[str], list[str]] | None:
    """The blobs a model (``weights``) or config directory of this manifest hard-links, and the blobs it needs
    that are missing; None if the manifest or its plan cannot be read (then only the general link check runs)."""
    document = _document(store, digest)
    if not isinstance(document, Manifest):
        return None
    config_digest = document.config.digest
    missing = []
    if config_digest == _EMPTY_CONFIG:
        config = b"{}"
    else:
        try:
            config = store.blob_path(config_digest).read_bytes()
        except OSError:
            return set(), [config_digest]
    try:
        plan = recognise(document, config)
    except errors.OciCraneError:
        return None
    linked = {layer.descriptor.digest for layer in plan.layers
              if layer.action in (Action.FILE, Action.SHARD) and (weights or not layer.weights)}
    missing += sorted(d for d in linked if not store.blob_path(d).is_file())
    return linked, missing


def _directory_problems(store: Store, kind: str, digest: str, directory: Path,
                        blob_inodes: set[tuple[int, int]]) -> list[Problem]:
    """Every hard-linked file (link count > 1) must be the very inode of one of this manifest's blobs."""
    problems = []
    expected = _linked_blobs(store, digest, weights=kind == "model")
    allowed = blob_inodes
    if expected is not None:
        linked, missing = expected
        problems += [Problem(kind, directory, f"needs blob {d} which is missing from the cache") for d in missing]
        allowed = _inodes_of(store.blob_path(d) for d in linked)
    for path in _walk_files(directory):
        info = path.lstat()
        if info.st_nlink > 1 and (info.st_dev, info.st_ino) not in allowed:
            problems.append(Problem(kind, directory, f"{path.relative_to(directory)} is hard-linked to a file "
                                                     "that is not its blob"))
    return problems


def _inodes_of(paths: Iterable[Path]) -> set[tuple[int, int]]:
    found = set()
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            info = path.lstat()
            found.add((info.st_dev, info.st_ino))
    return found


def verify_cache(store: Store) -> VerifyReport:
    """Re-hash every blob and manifest, check every ref holds a digest and every model/config directory links
    the blobs of its manifest."""
    blobs = [path for path in _entries(store.root / "blobs" / "sha256") if path.is_file()]
    manifests = [path for path in _entries(store.root / "manifests" / "sha256") if path.is_file()]
    problems = [p for path in blobs if (p := _hash_problem("blob", path))]
    problems += [p for path in manifests if (p := _hash_problem("manifest", path))]
    refs = _refs(store)
    problems += [Problem("ref", ref.path, "not refs/<registry>/<repository>/@tags/<tag> or @digests/<hex>"
                         if ref.reference is None
                         else "does not hold a sha256 digest") for ref in refs
                 if ref.reference is None or ref.digest is None]
    blob_inodes = _inodes_of(blobs)
    directories = 0
    for kind, digest, directory in _all_dirs(store):
        directories += 1
        problems += _directory_problems(store, kind, digest, directory, blob_inodes)
    return VerifyReport(store.root, len(blobs), len(manifests), len(refs), directories, tuple(problems))


# --- prune ---------------------------------------------------------------------------------------------------

def _newest_mtime(root: Path) -> float:
    newest = root.lstat().st_mtime
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            with contextlib.suppress(FileNotFoundError):
                newest = max(newest, (Path(directory) / name).lstat().st_mtime)
    return newest


def _unreferenced(store: Store, tmp_age: float) -> list[Removal]:
    now = time.time()
    removals: list[Removal] = []
    keep_inodes: set[tuple[int, int]] = set()  # files of kept directories: their blobs stay, whatever else
    running: list[_Ref] = []  # fetches in progress: their ref is written only once they succeed
    for entry in _entries(store.root / "tmp"):
        if now - _newest_mtime(entry) > tmp_age:
            removals.append(Removal("tmp", entry, _freed_by(entry)))
        else:
            keep_inodes |= _inodes(entry)
            if entry.name.startswith(FETCHING):
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    running.append(_Ref(None, entry, entry.read_text().strip()))
    refs = _refs(store)
    referenced = _referenced_manifests(store, refs + running)
    for kind, digest, directory in _all_dirs(store):
        if digest in referenced:
            keep_inodes |= _inodes(directory)
        else:
            removals.append(Removal(kind, directory, _freed_by(directory)))
    for path in _digest_files(store.root / "manifests" / "sha256"):
        if f"sha256:{path.name}" not in referenced:
            removals.append(Removal("manifest", path, path.stat().st_size))
    kept_blobs: set[str] = set().union(*(_blobs_of(store, digest) for digest in referenced))
    for path in _digest_files(store.root / "blobs" / "sha256"):
        info = path.stat()
        if f"sha256:{path.name}" not in kept_blobs and (info.st_dev, info.st_ino) not in keep_inodes:
            removals.append(Removal("blob", path, info.st_size))
    return removals


def _damaged(store: Store) -> list[Removal]:
    report = verify_cache(store)
    bad_inodes = _inodes_of(p.path for p in report.problems if p.kind == "blob")
    broken_dirs = {p.path for p in report.problems if p.kind in ("model", "config")}
    removals = []
    for kind, _digest, directory in _all_dirs(store):
        if directory in broken_dirs or _inodes(directory) & bad_inodes:
            removals.append(Removal(kind, directory, _freed_by(directory)))
    for kind in ("ref", "manifest", "blob"):
        removals += [Removal(kind, p.path, p.path.stat().st_size) for p in report.problems if p.kind == kind]
    return removals


@contextlib.contextmanager
def _blob_lock(store: Store, path: Path, *, create: bool) -> Iterator[bool]:
    """Held (True) unless a download holds locks/<hex>.lock; without ``create`` a missing lock file counts as
    free and none is made (dry runs change nothing)."""
    lock_file = store.root / "locks" / f"{path.name}.lock"
    if not create and not lock_file.exists():
        yield True
        return
    lock = filelock.FileLock(str(lock_file))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def _remove_empty_parents(path: Path, stop: Path) -> None:
    parent = path.parent
    while parent != stop and parent.is_relative_to(stop):
        try:
            parent.rmdir()
        except OSError:
            return
        parent = parent.parent


def _delete(store: Store, removal: Removal) -> None:
    path = removal.path
    if removal.kind in ("model", "config"):
        doomed = store.temp_path(f"prune-{path.name[:16]}")
        os.rename(path, doomed)  # gone from models/ in one step; the rest is a tmp/ leftover if interrupted
        fsync_dir(path.parent)
        shutil.rmtree(doomed)
    elif path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
        if removal.kind == "ref":
            _remove_empty_parents(path, store.root / "refs")


_ORDER = {"tmp": 0, "model": 1, "config": 1, "ref": 2, "manifest": 3, "blob": 4}


def prune_cache(store: Store, *, dry_run: bool = False, damaged: bool = False,
                tmp_age: float = TMP_MAX_AGE) -> PruneReport:
    """Default: tmp/ leftovers older than ``tmp_age``, model/config dirs and manifests no ref reaches, then
    blobs no kept manifest lists (and no kept directory links). ``damaged``: what verify_cache reports instead."""
    lock = contextlib.nullcontext() if dry_run else store.lock("prune")
    with lock:
        planned = sorted(_damaged(store) if damaged else _unreferenced(store, tmp_age),
                         key=lambda removal: _ORDER[removal.kind])
        removed, skipped = [], []
        for removal in planned:
            if removal.kind != "blob":
                if not dry_run:
                    _delete(store, removal)
                removed.append(removal)
                continue
            with _blob_lock(store, removal.path, create=not dry_run) as free:
                if not free:
                    skipped.append(removal)
                    continue
                if not dry_run:
                    _delete(store, removal)
                removed.append(removal)
    return PruneReport(dry_run, tuple(removed), tuple(skipped))


def remove_ref(store: Store, reference: Reference) -> str:
    """Delete the ref of a tag or of a fetch by digest; returns the digest it held. Nothing else is deleted."""
    path = store.ref_path(reference)
    try:
        digest = path.read_text().strip()
    except FileNotFoundError:
        raise errors.OciCraneError(f"{reference.name} is not in the cache at {store.root}",
                                   "`oci-crane cache ls` lists the cached references") from None
    path.unlink()
    _remove_empty_parents(path, store.root / "refs")
    return digest


# --- text output ---------------------------------------------------------------------------------------------

def _short(digest: str | None) -> str:
    return digest[:19] if digest else "(unreadable)"


def format_info(info: CacheInfo) -> str:
    rows = [("REFERENCE", "DIGEST", "MODEL DIR", "SIZE")]
    for entry in info.entries:
        model = "yes" if entry.has_model_dir else "config only" if entry.config_dirs else "no"
        rows.append((entry.reference or "(no ref)", _short(entry.digest), model, human(entry.size)))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>10}".rstrip() for r in rows]
    lines.append(f"blobs: {info.blob_count} files, {human(info.blob_bytes)} in {info.root / 'blobs'}")
    return "\n".join(lines)


def format_verify(report: VerifyReport) -> str:
    lines = [f"{'DAMAGED':<8} {p.kind:<8} {p.path}: {p.detail}" for p in report.problems]
    lines.append(f"checked {report.blobs} blobs, {report.manifests} manifests, {report.refs} refs, "
                 f"{report.directories} model/config directories: "
                 + ("all intact" if report.ok else f"{len(report.problems)} damaged"))
    return "\n".join(lines)


def format_prune(report: PruneReport) -> str:
    verb = "would remove" if report.dry_run else "removed"
    lines = [f"{verb} {r.kind:<8} {r.path} ({human(r.bytes)})" for r in report.removed]
    lines += [f"skipped  blob     {r.path} (being downloaded by another process)" for r in report.skipped]
    lines.append(f"{'would free' if report.dry_run else 'freed'} {human(report.freed)} "
                 f"({len(report.removed)} entries)")
    return "\n".join(lines)
