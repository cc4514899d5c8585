"""Content-addressed cache: verified blobs shared by every model and tag, manifests, a tag index, model dirs.

    blobs/sha256/<hex>            verified, read-only
    manifests/sha256/<hex>        raw manifest bytes
    refs/<registry>/<repo>/@tags/<tag>        manifest digest of the tag's last successful fetch (--offline)
    refs/<registry>/<repo>/@digests/<hex>     a fetch by digest, so that prune keeps it
                                              ('@' is in no repository or tag name: no path can collide)
    models/sha256/<hex>/          materialised model directory (hard links to blobs, extracted tar files);
                                  <hex>-<hash>/ for a --subpath, <hex>-filtered-<hash>/ for --include/--exclude
    configs/sha256/<hex>/         the same without weights, for vLLM's `model` while weights stream in
    tmp/                          temp files, scratch directories, fetch markers (fetching-*)
    unsynced/<hex>                a blob renamed into place whose bytes may not be on disk yet
    records/<hex>.json            what a finished fetch made (its model directory, the blobs it links), under a
                                  hash of what was asked: a cached fetch answers from it (cached.py)
    records/files/<kind>-<name>.json  the files (and sizes) a model or config directory was built with
                                  (cache/contents.py: a fetch and verify find a file missing from it)
    records/local-dirs/<hex>.json the files the last `--local-dir` placement put in a directory (hash of its path)
    signatures/sha256/<hex>.json  the signatures that verified for a manifest (signatures/policy.py): --offline
                                  verifies from them again, with the keys in force then
    locks/<hex>.lock, locks/prune.lock

This module is the only code that knows these paths: everything else asks the Store, and lists the cache through
its typed iterators (``blobs``, ``manifests``, ``refs``, ``model_dirs``, ``scratch_entries``).

Correctness comes from atomic renames (temp file, os.replace), not from the locks: locks only stop two
processes downloading the same blob twice. A half-written file is never visible under its final name.

A blob is renamed into place before its bytes are on disk (fsync would stall every download: see
docs/fetching.md): first a small durable marker unsynced/<hex> names it and this boot, a background thread
fsyncs it and then drops the marker. A marker left by an earlier boot (power lost before the sync) gets its blob
re-hashed when the next Store opens, before anything is served from it.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import errors
from ..digests import digest_hex, sha256_digest
from ..files import file_sha256
from ..reference import Reference
from ..settings import settings
from .usage import tree_inodes

if TYPE_CHECKING:
    from ..oci import Descriptor

log = logging.getLogger(__name__)


def fsync(fd: int) -> None:
    # fsync makes a small file (manifest, ref, unsynced marker) durable before it gets its final name. Blobs are
    # synced in the background instead (BackgroundSync). A throwaway cache (CI, an ephemeral pod) may skip all of
    # it with OCI_CRANE_NO_FSYNC=1: a killed process still never leaves a partial file, a power loss may.
    if not settings().no_fsync:
        os.fsync(fd)

TAGS, DIGESTS = "@tags", "@digests"  # ref directories under refs/<registry>/<repository>/
LAYOUT_MARKER = ".layout-2"  # in refs/: the refs were moved to the @tags/ layout
FETCHING = "fetching-"  # tmp/ marker of a fetch in progress
_HEX = re.compile(r"[a-f0-9]{64}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
FILTERED = "filtered-"  # in a model directory's name: the files --include/--exclude chose, not the model
# A model or config directory: the manifest digest's hex, then -<hash of --subpath> or -filtered-<hash of both>
_DIR_NAME = re.compile(r"([a-f0-9]{64})(?:-(filtered-)?[a-f0-9]+)?")
_DIR_KINDS = (("model", "models"), ("config", "configs"))


@dataclass(frozen=True)
class DigestFile:
    """A file under blobs/sha256/ or manifests/sha256/; ``digest`` is None when its name is not a sha256 hex."""

    path: Path
    digest: str | None
    size: int


@dataclass(frozen=True)
class RefFile:
    """A file under refs/. For refs/<registry>/<repository>/@tags/<tag> (``tag`` set) or .../@digests/<hex>
    (``digest`` set) registry and repository are set too; for any other file all four are None."""

    path: Path
    registry: str | None
    repository: str | None
    tag: str | None
    digest: str | None  # the digest a fetch by digest named
    target: str | None  # the manifest or index digest the file holds; None if it holds none

    @property
    def name(self) -> str | None:
        """registry/repository:tag or registry/repository@sha256:hex, as a reference names it."""
        if self.tag is not None:
            return f"{self.registry}/{self.repository}:{self.tag}"
        if self.digest is not None:
            return f"{self.registry}/{self.repository}@{self.digest}"
        return None


@dataclass(frozen=True)
class ModelDir:
    """A model directory (``kind`` "model") or its config-only twin (``kind`` "config") of a manifest."""

    kind: str
    path: Path
    manifest_digest: str
    filtered: bool = False  # made by a fetch with --include/--exclude: some of the model's files only


@dataclass(frozen=True)
class ScratchEntry:
    """A file or directory under tmp/: a download or model directory in progress, a fetch marker, a leftover."""

    path: Path
    fetching: str | None  # for a fetch marker: the digest whose blobs and directories the running fetch needs


def _model_name(manifest_digest: str, subpath: str | None, variant: str | None = None) -> str:
    """A model directory's name: the manifest digest's hex, plus ``-<hash of --subpath>`` when one was chosen, or
    of --subpath and ``variant`` (the --include/--exclude filters) after "filtered-" when filtered: never the full
    model's name, and `cache ls` can tell it apart."""
    key = f"{subpath or ''}\n{variant}" if variant else subpath
    if not key:
        return digest_hex(manifest_digest)
    marker = FILTERED if variant else ""
    return f"{digest_hex(manifest_digest)}-{marker}{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def default_cache_dir() -> Path:
    explicit = settings().cache_dir  # OCI_CRANE_LOADER_CACHE
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "oci-crane-loader"


def fsync_dir(path: Path) -> None:
    if settings().no_fsync:
        return
    with contextlib.suppress(OSError):  # not every platform lets you open a directory
        _fsync_file(path)


class Store:
    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser().resolve() if root else default_cache_dir().resolve()
        try:
            for sub in ("blobs/sha256", "manifests/sha256", "refs", "models/sha256", "configs/sha256", "tmp", "locks"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            self._try_migrate_refs()
            recover_unsynced(self)
        except OSError as exc:
            raise errors.cache_os_error(exc, f"create the cache at {self.root}", self.root) from exc

    # --- paths -------------------------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest_hex(digest)

    def manifest_path(self, digest: str) -> Path:
        return self.root / "manifests" / "sha256" / digest_hex(digest)

    def model_path(self, manifest_digest: str, subpath: str | None = None, variant: str | None = None) -> Path:
        return self.root / "models" / "sha256" / _model_name(manifest_digest, subpath, variant)

    def config_path(self, manifest_digest: str, subpath: str | None = None) -> Path:
        """Config and tokenizer files only: what vLLM reads as `model` before the weights stream in."""
        return self.root / "configs" / "sha256" / _model_name(manifest_digest, subpath)

    def ref_path(self, reference: Reference) -> Path:
        """Where a fetch of ``reference`` is recorded: its digest if it names one, else its tag."""
        repository = self.root / "refs" / reference.registry / reference.repository
        if reference.digest is not None:
            return repository / DIGESTS / digest_hex(reference.digest)
        assert reference.tag is not None
        return repository / TAGS / reference.tag

    def partial_path(self, digest: str) -> Path:
        """A download in progress that a later attempt, or another process, may resume (under the blob's lock)."""
        return self.root / "tmp" / f"{digest_hex(digest)}.partial"

    def partial_bytes(self, descriptor: Descriptor) -> int:
        """Bytes of the blob that its ranged download has on disk (its partial file's allocated blocks: the file is
        preallocated, sparse, to the blob's size); 0 without a partial file of that size."""
        try:
            info = self.partial_path(descriptor.digest).stat()
        except FileNotFoundError:
            return 0
        return min(info.st_blocks * 512, descriptor.size) if info.st_size == descriptor.size else 0

    def unwritten_partial_bytes(self, exclude: Collection[str] = ()) -> int:
        """Bytes that ranged downloads running now (their blob's lock is held) have yet to write into their
        preallocated partial files, blobs in ``exclude`` aside. A partial file nobody downloads does not grow."""
        total = 0
        for path in _sorted_entries(self.root / "tmp"):
            hex_digest = path.name.removesuffix(".partial")
            if not (path.name.endswith(".partial") and _HEX.fullmatch(hex_digest)) or f"sha256:{hex_digest}" in exclude:
                continue
            with self.try_blob_lock(f"sha256:{hex_digest}", create=False) as free:
                if free:
                    continue
            with contextlib.suppress(FileNotFoundError):  # finished meanwhile
                info = path.stat()
                total += max(0, info.st_size - info.st_blocks * 512)
        return total

    def temp_path(self, hint: str) -> Path:
        """Unique per process and call, inside the cache so that os.replace and os.link stay on one filesystem."""
        return self.root / "tmp" / f"{hint}.{os.getpid()}.{uuid.uuid4().hex[:12]}.incomplete"

    # --- locks -------------------------------------------------------------------------------------------------
    def _lock_file(self, name: str) -> Path:
        return self.root / "locks" / f"{name}.lock"

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        import filelock  # here: a cached fetch takes no lock

        lock = filelock.FileLock(str(self._lock_file(name)))
        try:
            lock.acquire(timeout=1)
        except filelock.Timeout:
            log.info("waiting for another process that holds the cache lock %s", name)
            try:
                lock.acquire(timeout=settings().lock_timeout)
            except filelock.Timeout as exc:
                raise errors.CacheError(f"gave up after {settings().lock_timeout:.0f}s waiting for cache lock {name}",
                                        "if no other oci-crane process runs, delete the lock file in "
                                        f"{self.root / 'locks'}") from exc
        try:
            yield
        finally:
            lock.release()

    def prune_lock(self) -> contextlib.AbstractContextManager[None]:
        """Held by a prune, so that two prunes do not delete under each other."""
        return self._lock("prune")

    @contextlib.contextmanager
    def try_blob_lock(self, digest: str, *, create: bool) -> Iterator[bool]:
        """Holds the blob's download lock (True) unless a download holds it (False), without waiting. Without
        ``create`` a missing lock file counts as free and none is made (a dry run changes nothing)."""
        lock_file = self._lock_file(digest_hex(digest))
        if not create and not lock_file.exists():
            yield True
            return
        import filelock

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

    # --- blobs -------------------------------------------------------------------------------------------------
    def has_blob(self, descriptor: Descriptor) -> bool:
        return self.has_blob_sized(descriptor.digest, descriptor.size)

    def has_blob_sized(self, digest: object, size: object) -> bool:
        """Whether the blob is cached with this size (a cheap look: no hashing; a bad digest is not cached)."""
        if not isinstance(digest, str) or not isinstance(size, int) or not _DIGEST.fullmatch(digest):
            return False
        try:
            return self.blob_path(digest).stat().st_size == size
        except FileNotFoundError:
            return False

    def write_blob(self, descriptor: Descriptor, fill: Callable[[Path], object], *,
                   source: str | None = None) -> bool:
        """Store a blob unless it is cached already; True when this call wrote it.

        Under the blob's lock (one download per blob across threads and processes) the cache is checked again,
        then ``fill`` writes a unique temp file and returns the sha256 digest (a str) of the bytes it wrote when
        it hashed them as they arrived (anything else: the file is hashed here, one more pass). Size and digest
        are checked before the file gets its final, read-only name. The temp file is removed whatever happens.
        ``source`` names the blob in errors."""
        if self.has_blob(descriptor):
            return False
        with self._lock(digest_hex(descriptor.digest)):
            if self.has_blob(descriptor):  # another writer finished it while we waited
                return False
            temp = self.temp_path(digest_hex(descriptor.digest))
            try:
                with background_sync().downloading():
                    hashed = fill(temp)
                self._commit_blob(temp, descriptor, source or f"blob {descriptor.digest}",
                                  hashed if isinstance(hashed, str) else None)
            finally:
                temp.unlink(missing_ok=True)
        return True

    def _commit_blob(self, temp: Path, descriptor: Descriptor, source: str, hashed: str | None = None) -> None:
        """Verify size and digest of a written temp file, then give it its final, read-only name; its bytes
        reach the disk in the background (see the module docstring)."""
        size = temp.stat().st_size
        if size != descriptor.size:
            raise errors.IntegrityError(
                f"{source} is {size} bytes but its descriptor says {descriptor.size} ({descriptor.digest})")
        actual = hashed or file_sha256(temp)
        if actual != descriptor.digest:
            raise errors.IntegrityError(f"{source} has digest {actual}, expected {descriptor.digest}")
        final = self.blob_path(descriptor.digest)
        marker = None if settings().no_fsync else self._mark_unsynced(descriptor.digest)
        os.chmod(temp, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)  # shared by hard links: protect it
        os.replace(temp, final)
        if marker is not None:
            background_sync().submit(final, marker)

    def _mark_unsynced(self, digest: str) -> Path:
        """A durable note, made before the blob's rename, that its bytes may not be on disk yet (two small
        fsyncs: milliseconds, where the blob's own fsync takes as long as the disk needs to write it)."""
        marker = self.root / "unsynced" / digest_hex(digest)
        marker.parent.mkdir(exist_ok=True)  # made when first needed: a read-only cache of an older version opens
        with open(marker, "w") as handle:
            handle.write(f"{boot_id()} {os.getpid()}\n")
            handle.flush()
            os.fsync(handle.fileno())
        fsync_dir(marker.parent)
        return marker

    # --- manifests and refs ------------------------------------------------------------------------------------
    def _atomic_write(self, final: Path, data: bytes) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = self.temp_path(final.name)
        try:
            with open(temp, "wb") as handle:
                handle.write(data)
                handle.flush()
                fsync(handle.fileno())
            os.replace(temp, final)
        finally:
            temp.unlink(missing_ok=True)

    def save_manifest(self, raw: bytes) -> str:
        digest = sha256_digest(raw)
        path = self.manifest_path(digest)
        if not path.exists():
            self._atomic_write(path, raw)
        return digest

    def load_manifest(self, digest: str, *, discard_damaged: bool = True) -> bytes | None:
        """The cached bytes if intact. A damaged copy is never returned; it is deleted unless ``discard_damaged``
        is False (`cache ls` and `verify` only look)."""
        path = self.manifest_path(digest)
        if not path.exists():
            return None
        raw = path.read_bytes()
        if sha256_digest(raw) != digest:  # a damaged cache entry must not be trusted
            if discard_damaged:
                path.unlink(missing_ok=True)
            return None
        return raw

    def save_ref(self, reference: Reference, digest: str) -> None:
        """Record a successful fetch: only then does a tag move (a failed fetch leaves the old model reachable)."""
        path = self.ref_path(reference)
        with contextlib.suppress(OSError):
            if path.read_text().strip() == (reference.digest or digest):
                return  # unchanged: an offline fetch from a read-only cache writes nothing
        self._atomic_write(path, (reference.digest or digest).encode())

    def load_ref(self, reference: Reference) -> str | None:
        if reference.digest:
            return reference.digest
        try:
            return self.ref_path(reference).read_text().strip()
        except FileNotFoundError:
            return None

    def forget_ref(self, reference: Reference) -> str | None:
        """Delete the ref of a tag or of a fetch by digest; returns what it held, None if there was none."""
        path = self.ref_path(reference)
        try:
            held = path.read_text().strip()
        except FileNotFoundError:
            return None
        self.remove_ref_file(path)
        return held

    def remove_ref_file(self, path: Path) -> None:
        """Delete a file under refs/ and the directories it leaves empty."""
        path.unlink(missing_ok=True)
        stop = self.root / "refs"
        parent = path.parent
        while parent != stop and parent.is_relative_to(stop):
            try:
                parent.rmdir()
            except OSError:
                return
            parent = parent.parent

    def _migrate_refs(self) -> None:
        """Caches written before the @tags/ layout hold refs/<registry>/<repo>/<tag>: move each such file to
        .../@tags/<tag> once (a tag `b` of `r/a` and the repository `r/a/b` could not both be cached there)."""
        marker = self.root / "refs" / LAYOUT_MARKER
        if marker.exists():
            return
        for directory, _dirs, files in os.walk(self.root / "refs"):
            parent = Path(directory)
            if parent.name in (TAGS, DIGESTS) or parent == self.root / "refs":
                continue
            for name in files:
                (parent / TAGS).mkdir(exist_ok=True)
                with contextlib.suppress(FileNotFoundError):  # another process moved it first
                    os.replace(parent / name, parent / TAGS / name)
        marker.touch()

    def _try_migrate_refs(self) -> None:
        try:
            self._migrate_refs()
        except OSError as exc:  # a read-only cache still serves what the new layout holds
            log.warning("cannot move the refs of %s to the @tags/ layout: %s", self.root, exc)

    @contextlib.contextmanager
    def fetching(self, digest: str) -> Iterator[None]:
        """While a fetch runs, before its ref is written: a marker in tmp/ that tells prune to keep what
        ``digest`` reaches."""
        marker = self.temp_path(f"{FETCHING}{digest_hex(digest)[:16]}")
        try:
            marker.write_text(digest)
        except OSError:  # a read-only cache: an offline fetch, nothing to protect
            yield
            return
        try:
            yield
        finally:
            marker.unlink(missing_ok=True)

    # --- signatures ------------------------------------------------------------------------------------------
    def signatures_path(self, manifest_digest: str) -> Path:
        return self.root / "signatures" / "sha256" / f"{digest_hex(manifest_digest)}.json"

    def save_signatures(self, manifest_digest: str, data: bytes) -> None:
        """The signatures verified for a manifest; a read-only cache keeps what it had (an offline fetch)."""
        try:
            self._atomic_write(self.signatures_path(manifest_digest), data)
        except OSError as exc:
            log.warning("cannot keep the signatures of %s in the cache: %s", manifest_digest, exc)

    def load_signatures(self, manifest_digest: str, *, max_size: int = 4 << 20) -> bytes | None:
        try:
            with open(self.signatures_path(manifest_digest), "rb", opener=_open_nofollow) as handle:
                data = handle.read(max_size + 1)
        except OSError:
            return None
        return data if len(data) <= max_size else None

    # --- fetch records ------------------------------------------------------------------------------------------
    def _record_path(self, key: str) -> Path:
        return self.root / "records" / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    def save_record(self, key: str, record: dict[str, object]) -> None:
        """Best effort and not fsynced: a record lost or torn is a slower fetch, never a wrong one."""
        final = self._record_path(key)
        temp = self.temp_path("record")
        try:
            final.parent.mkdir(exist_ok=True)
            temp.write_text(json.dumps(record))
            os.replace(temp, final)
        except OSError as exc:  # a read-only cache
            log.debug("cannot save the fetch record %s: %s", final, exc)
        finally:
            temp.unlink(missing_ok=True)

    def load_record(self, key: str, *, max_size: int = 1 << 20) -> dict[str, object] | None:
        """The record saved for ``key``; None when there is none or it is not one (torn, edited, oversized, nested
        past what the parser takes)."""
        try:
            with open(self._record_path(key), "rb", opener=_open_nofollow) as handle:
                text = handle.read(max_size + 1)
            if len(text) > max_size:
                return None
            record = json.loads(text)
        except (OSError, ValueError, RecursionError):
            return None
        return record if isinstance(record, dict) else None

    def model_files_path(self, directory: Path) -> Path:
        """Where the files a model or config directory was built with are recorded (cache/contents.py): beside
        the fetch records, not inside the directory, whose listing is the model."""
        return self.root / "records" / "files" / f"{directory.parent.parent.name}-{directory.name}.json"

    def placement_path(self, target: Path) -> Path:
        """Where the files a `--local-dir` placement put in ``target`` (a resolved path) are recorded."""
        return self.root / "records" / "local-dirs" / f"{hashlib.sha256(str(target).encode()).hexdigest()}.json"

    def model_dir_named(self, name: object) -> Path | None:
        """models/sha256/<name> when ``name`` is a model directory's name (never a path) and it exists."""
        if not isinstance(name, str) or not _DIR_NAME.fullmatch(name):
            return None
        path = self.root / "models" / "sha256" / name
        try:  # a real directory, never a symlink planted to lead elsewhere
            return path if stat.S_ISDIR(path.lstat().st_mode) else None
        except OSError:
            return None

    def drop_stale_records(self) -> None:
        """Records whose model directory is gone (pruned): they would only make a fetch look twice."""
        for path in _sorted_entries(self.root / "records"):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                if self.model_dir_named(json.loads(path.read_text()).get("dir")) is None:
                    path.unlink()

    # --- scratch space -----------------------------------------------------------------------------------------
    def scratch_dir(self, prefix: str) -> Path:
        """A new empty directory in tmp/, for the caller to remove (`cache prune` removes it once an hour old)."""
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=f".{os.getpid()}.incomplete", dir=self.root / "tmp"))

    def scratch_shares_filesystem(self, path: Path) -> bool:
        """Whether files at ``path`` can be hard-linked into a scratch directory (one filesystem)."""
        return (self.root / "tmp").stat().st_dev == path.stat().st_dev

    # --- models ------------------------------------------------------------------------------------------------
    def new_model_dir(self, manifest_digest: str) -> Path:
        path = self.temp_path(f"model-{digest_hex(manifest_digest)[:16]}")
        path.mkdir()
        return path

    def publish_dir(self, temp: Path, final: Path) -> Path:
        """Rename a finished directory into place; a concurrent winner's copy is kept and ours dropped."""
        try:
            os.rename(temp, final)
        except OSError:
            if not final.is_dir():
                raise
            remove_tree(temp)
        fsync_dir(final.parent)
        return final

    def discard_dir(self, path: Path) -> None:
        """Delete a model or config directory. It is renamed into tmp/ first, so it leaves models/ in one step
        (fetch trusts any directory there to be complete); an interrupted delete leaves a tmp/ leftover only."""
        doomed = self.temp_path(f"prune-{path.name[:16]}")
        os.rename(path, doomed)
        fsync_dir(path.parent)
        shutil.rmtree(doomed)

    # --- listing -----------------------------------------------------------------------------------------------
    def blobs(self) -> Iterator[DigestFile]:
        return _digest_files(self.root / "blobs" / "sha256")

    def manifests(self) -> Iterator[DigestFile]:
        return _digest_files(self.root / "manifests" / "sha256")

    def refs(self) -> Iterator[RefFile]:
        """Every file under refs/ but the layout marker, sorted by path: valid refs and strays alike."""
        base = self.root / "refs"
        for path in sorted(Path(directory) / name for directory, _dirs, files in os.walk(base) for name in files):
            parts = path.relative_to(base).parts
            if parts == (LAYOUT_MARKER,):
                continue
            try:
                text = path.read_text().strip()
            except (OSError, UnicodeDecodeError):
                text = ""
            target = text if _DIGEST.fullmatch(text) else None
            registry = repository = tag = digest = None
            if len(parts) >= 4 and (parts[-2] == TAGS or (parts[-2] == DIGESTS and _HEX.fullmatch(parts[-1]))):
                registry, repository = parts[0], "/".join(parts[1:-2])
                if parts[-2] == TAGS:
                    tag = parts[-1]
                else:
                    digest = f"sha256:{parts[-1]}"
            yield RefFile(path, registry, repository, tag, digest, target)

    def model_dirs(self) -> Iterator[ModelDir]:
        """Every model directory, then every config directory, sorted by name (one per --subpath chosen)."""
        for kind, sub in _DIR_KINDS:
            for path in _sorted_entries(self.root / sub / "sha256"):
                match = _DIR_NAME.fullmatch(path.name)
                if match and path.is_dir():
                    yield ModelDir(kind, path, f"sha256:{match[1]}", filtered=match[2] is not None)

    def scratch_entries(self) -> Iterator[ScratchEntry]:
        for path in _sorted_entries(self.root / "tmp"):
            fetching = None
            if path.name.startswith(FETCHING):
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    text = path.read_text().strip()
                    fetching = text if _DIGEST.fullmatch(text) else None
            yield ScratchEntry(path, fetching)


def _open_nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0))


def boot_id() -> str:
    """This boot's id (Linux); elsewhere "" which no marker matches, so every marker of a dead process counts as
    from an earlier boot and its blob is re-hashed (safe, only slower)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_unsynced(store: Store) -> None:
    """Settle the unsynced markers a process left (killed, or gone before its background sync ended): from this
    boot the bytes are in the page cache, so fsync them; from an earlier boot (a power loss or crash came first)
    re-hash the blob and delete it if torn, with the model and config directories that link it (their copy of
    the bytes is the same torn inode): the next fetch downloads and builds them again. A marker of a live process
    is its own business."""
    torn: set[tuple[int, int]] = set()
    for path in _sorted_entries(store.root / "unsynced"):
        try:
            boot, pid = path.read_text().split()
        except (OSError, ValueError):
            boot, pid = "", "0"
        if not _HEX.fullmatch(path.name):
            continue
        digest = f"sha256:{path.name}"
        this_boot = boot != "" and boot == boot_id()
        if this_boot and pid.isdigit() and _alive(int(pid)):
            continue
        blob = store.blob_path(digest)
        if this_boot:  # the bytes are in the page cache: synced in the background, not on this command's path
            if blob.exists():
                background_sync().submit(blob, path)
            continue
        with contextlib.suppress(FileNotFoundError):
            if file_sha256(blob) != digest:
                log.warning("blob %s was torn by a crash before it reached the disk: deleted", digest)
                found = blob.stat()
                torn.add((found.st_dev, found.st_ino))
                blob.unlink()
        with contextlib.suppress(OSError):  # a read-only cache: its blobs were checked, the marker may stay
            path.unlink(missing_ok=True)
    if torn:
        _discard_dirs_linking(store, torn)


def _discard_dirs_linking(store: Store, inodes: set[tuple[int, int]]) -> None:
    for directory in list(store.model_dirs()):
        if tree_inodes(directory.path) & inodes:
            log.warning("%s links a torn blob: deleted, the next fetch builds it again", directory.path)
            store.discard_dir(directory.path)
    store.drop_stale_records()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BackgroundSync:
    """One daemon thread that fsyncs blobs after their rename, then drops their unsynced markers. It starts only
    once no download has run for SETTLE seconds: an fsync while bytes still arrive competes with them for the disk,
    and a process cannot exit while one of its threads is inside fsync. A normal exit does not wait for it: what is
    left is handed to a detached process (``_hand_over``), so that a command returns once its model is ready; a
    killed process leaves the markers, and the next Store to open settles them (recover_unsynced)."""

    SETTLE = 2.0  # seconds; a CLI fetch exits before that, a long-lived process (vLLM) syncs after its downloads

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Path, Path]] = queue.Queue()
        self._pending: dict[Path, Path] = {}  # marker -> blob, submitted and not synced yet
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._downloads = 0  # downloads running now (``downloading``)
        self._quiet_since = time.monotonic()
        self._urgent = False  # ``wait`` was called: sync now, quiet or not
        self._idle = threading.Event()
        self._idle.set()
        threading.Thread(target=self._run, name="oci-crane-fsync", daemon=True).start()
        atexit.register(self._hand_over)

    def submit(self, blob: Path, marker: Path) -> None:
        with self._lock:
            if marker in self._pending:
                return
            self._pending[marker] = blob
            self._idle.clear()
        self._queue.put((blob, marker))

    @contextlib.contextmanager
    def downloading(self) -> Iterator[None]:
        """Around a download: the fsyncs wait for it (and SETTLE seconds more)."""
        with self._lock:
            self._downloads += 1
        try:
            yield
        finally:
            with self._changed:
                self._downloads -= 1
                self._quiet_since = time.monotonic()
                self._changed.notify_all()

    def _hand_over(self) -> None:
        """At exit: the blobs not synced yet go to a detached Python process that syncs them and drops their
        markers (if it dies too, the markers stay for the next Store to settle)."""
        with self._lock:
            pending = [str(each) for pair in self._pending.items() for each in (pair[1], pair[0])]
            self._pending.clear()
        if not pending:
            return
        import subprocess
        import sys

        with contextlib.suppress(OSError):
            subprocess.Popen([sys.executable, "-c", _SYNC_LATER, *pending], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                             close_fds=True)

    def wait(self, timeout: float | None = None) -> bool:
        """True once every submitted blob is synced (tests, and callers that want durability now: no settling)."""
        with self._changed:
            self._urgent = True
            self._changed.notify_all()
        return self._idle.wait(timeout)

    def _wait_for_quiet(self) -> None:
        with self._changed:
            while not self._urgent:
                left = None if self._downloads else self._quiet_since + self.SETTLE - time.monotonic()
                if left is not None and left <= 0:
                    return
                self._changed.wait(left)

    def _run(self) -> None:
        while True:
            blob, marker = self._queue.get()
            self._wait_for_quiet()
            try:
                _fsync_file(blob)
                fsync_dir(blob.parent)
                marker.unlink(missing_ok=True)
            except OSError as exc:  # the marker stays: the next Store settles it
                log.debug("background fsync of %s failed: %s", blob, exc)
            with self._lock:
                self._pending.pop(marker, None)
                if not self._pending:
                    self._idle.set()


# The detached syncer's whole program (argv: blob marker blob marker ...): standard library only, quick to start.
_SYNC_LATER = """
import os, sys
args = sys.argv[1:]
for blob, marker in zip(args[::2], args[1::2]):
    try:
        fd = os.open(blob, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fd = os.open(os.path.dirname(blob), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(marker)
    except OSError:
        pass
"""


@functools.cache
def background_sync() -> BackgroundSync:
    return BackgroundSync()


def _sorted_entries(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except FileNotFoundError:
        return []


def _digest_files(directory: Path) -> Iterator[DigestFile]:
    for path in _sorted_entries(directory):
        try:
            info = path.stat()
        except FileNotFoundError:  # deleted since it was listed
            continue
        if stat.S_ISREG(info.st_mode):
            yield DigestFile(path, f"sha256:{path.name}" if _HEX.fullmatch(path.name) else None, info.st_size)


def remove_tree(path: Path) -> None:
    # Read-only blobs linked inside are fine: unlinking needs write access to the directory, not the file.
    shutil.rmtree(path, ignore_errors=True)
