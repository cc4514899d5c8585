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
    records/local-dirs/<hex>.json the files the last `--local-dir` placement put in a directory (hash of its path),
                                  and that path
    signatures/sha256/<hex>.json  the signatures that verified for a manifest (signatures/policy.py): --offline
                                  verifies from them again, with the keys in force then
    locks/<hex>.lock, locks/prune.lock

This module is the only code that knows these paths: everything else asks the Store, and lists the cache through
its typed iterators (``blobs``, ``manifests``, ``refs``, ``model_dirs``, ``scratch_entries``).

Correctness comes from atomic renames (temp file, os.replace), not from the locks: locks only stop two
processes downloading the same blob twice. A half-written file is never visible under its final name. When its
bytes reach the disk is cache/durability.py's business (background fsync, recovery after a power loss).

A cache may be shared by a group (mode 2775, umask 002), whose members can plant symlinks at its predictable
names: every file written here is created new (O_EXCL, O_NOFOLLOW) under a unique temp name and renamed into
place, which replaces whatever is at the final name instead of writing through it; refs are written relative to
directory descriptors opened with O_NOFOLLOW; a blob is committed from a descriptor (fstat, fchmod), never by path
(docs/security.md, "A cache shared by a group").
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import errors
from ..digests import digest_hex, sha256_digest
from ..files import NOFOLLOW, SYMLINK_ERRNOS, create_new, fd_sha256, open_nofollow, write_new
from ..reference import Reference
from ..settings import settings
from .durability import background_sync, fsync_dir, mark_unsynced, recover_unsynced
from .partial import PartialPaths
from .usage import tree_inodes

if TYPE_CHECKING:
    from ..oci import Descriptor

log = logging.getLogger(__name__)


TAGS, DIGESTS = "@tags", "@digests"  # ref directories under refs/<registry>/<repository>/
LAYOUT_MARKER = ".layout-2"  # in refs/: the refs were moved to the @tags/ layout
FETCHING = "fetching-"  # tmp/ marker of a fetch in progress
_HEX = re.compile(r"[a-f0-9]{64}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
FILTERED = "filtered-"  # in a model directory's name: the files --include/--exclude chose, not the model
# A model or config directory: the manifest digest's hex, then -<hash of --subpath> or -filtered-<hash of both>
_DIR_NAME = re.compile(r"([a-f0-9]{64})(?:-(filtered-)?[a-f0-9]+)?")
_DIR_KINDS = (("model", "models"), ("config", "configs"))
_LAYOUT = ("blobs/sha256", "manifests/sha256", "refs", "models/sha256", "configs/sha256", "tmp", "locks")
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | NOFOLLOW


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


class Store:
    """The cache at ``root`` (default: OCI_CRANE_LOADER_CACHE, else ~/.cache/oci-crane-loader). ``lock_timeout``
    (seconds to wait for another process's lock) and ``fsync`` (False: a throwaway cache that skips every fsync)
    default to the settings, read once here; an entry point that has its own values passes them.

    Opening is cheap: the layout's directories (made if missing), and one look at unsynced/ (settled there and
    then, not at the first write: a cached fetch writes nothing, and a torn blob must go before anything serves
    it). Refs of an older layout are moved on first use of refs/, not at open."""

    def __init__(self, root: Path | str | None = None, *, lock_timeout: float | None = None,
                 fsync: bool | None = None) -> None:
        self.root = Path(root).expanduser().resolve() if root else default_cache_dir().resolve()
        if lock_timeout is None or fsync is None:
            current = settings()
            lock_timeout = current.lock_timeout if lock_timeout is None else lock_timeout
            fsync = not current.no_fsync if fsync is None else fsync
        self.lock_timeout = lock_timeout
        # fsync makes a small file (manifest, ref, unsynced marker) durable before it gets its final name; blobs
        # are synced in the background (durability.py). A throwaway cache (CI, an ephemeral pod) may skip it all
        # with OCI_CRANE_NO_FSYNC=1: a killed process still never leaves a partial file, a power loss may.
        self.fsync = fsync
        self._refs_migrated = False
        try:
            for sub in _LAYOUT:
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            recover_unsynced(self.root / "unsynced", self.blob_path, self._discard_dirs_linking)
        except OSError as exc:
            raise errors.cache_os_error(exc, f"create the cache at {self.root}", self.root) from exc

    def _sync(self, fd: int) -> None:
        if self.fsync:
            os.fsync(fd)

    def _sync_dir(self, path: Path) -> None:
        if self.fsync:
            fsync_dir(path)

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
        self._migrate_refs_once()
        repository = self.root / "refs" / reference.registry / reference.repository
        if reference.digest is not None:
            return repository / DIGESTS / digest_hex(reference.digest)
        assert reference.tag is not None
        return repository / TAGS / reference.tag

    def partial_paths(self, digest: str) -> PartialPaths:
        """The files of a ranged download in progress, which a later attempt, or another process, may resume (under
        the blob's lock): its bytes, its state file and that file's temp (cache/partial.py opens them safely)."""
        data = self.root / "tmp" / f"{digest_hex(digest)}.partial"
        state = data.with_name(data.name + ".json")
        return PartialPaths(data, state, state.with_name(state.name + ".new"), self.root)

    def partial_bytes(self, descriptor: Descriptor) -> int:
        """Bytes of the blob that its ranged download has on disk (its partial file's allocated blocks: the file is
        preallocated, sparse, to the blob's size); 0 without a partial file of that size (a symlink counts 0)."""
        try:
            info = self.partial_paths(descriptor.digest).data.lstat()
        except FileNotFoundError:
            return 0
        regular = stat.S_ISREG(info.st_mode) and info.st_size == descriptor.size
        return min(info.st_blocks * 512, descriptor.size) if regular else 0

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
                info = path.lstat()
                if stat.S_ISREG(info.st_mode):
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
                lock.acquire(timeout=self.lock_timeout)
            except filelock.Timeout as exc:
                raise errors.CacheError(f"gave up after {self.lock_timeout:.0f}s waiting for cache lock {name}",
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
        reach the disk in the background (durability.py).

        The temp file is opened once, without following a symlink, and must be a regular file of ours with one
        name: what is checked, hashed and made read-only (fchmod) is that descriptor; after the rename the final
        name must hold the same inode."""
        try:
            fd = open_nofollow(temp)
        except OSError as exc:
            if exc.errno not in SYMLINK_ERRNOS:
                raise
            raise self._planted(temp) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or (
                    hasattr(os, "geteuid") and info.st_uid != os.geteuid()):
                raise self._planted(temp)
            if info.st_size != descriptor.size:
                raise errors.IntegrityError(f"{source} is {info.st_size} bytes but its descriptor says "
                                            f"{descriptor.size} ({descriptor.digest})")
            actual = hashed or fd_sha256(fd)
            if actual != descriptor.digest:
                raise errors.IntegrityError(f"{source} has digest {actual}, expected {descriptor.digest}")
            final = self.blob_path(descriptor.digest)
            marker = self._mark_unsynced(descriptor.digest) if self.fsync else None
            os.fchmod(fd, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)  # shared by hard links: protect it
            os.replace(temp, final)
            placed = final.lstat()
            if (placed.st_dev, placed.st_ino) != (info.st_dev, info.st_ino):  # swapped between fstat and rename
                final.unlink(missing_ok=True)
                raise self._planted(temp)
        finally:
            os.close(fd)
        if marker is not None:
            background_sync().submit(final, marker)

    def _planted(self, path: Path) -> errors.CacheError:
        return errors.CacheError(
            f"{path} was replaced by a symlink or a file that is not ours while we wrote it",
            f"only trusted users may write {self.root} (docs/security.md, a cache shared by a group); fetch again")

    def _mark_unsynced(self, digest: str) -> Path:
        """A durable note, made before the blob's rename, that its bytes may not be on disk yet (durability.py)."""
        marker = self.root / "unsynced" / digest_hex(digest)
        mark_unsynced(marker, self.temp_path("unsynced"))
        return marker

    # --- manifests and refs ------------------------------------------------------------------------------------
    def _atomic_write(self, final: Path, data: bytes, directory: int | None = None) -> None:
        """``data`` at ``final``: a new temp file (O_EXCL, O_NOFOLLOW), synced, renamed over whatever is there (a
        rename replaces a symlink, never writes through it). ``directory``: a descriptor of final's directory."""
        if directory is None:
            final.parent.mkdir(parents=True, exist_ok=True)
        temp = self.temp_path(final.name)
        try:
            write_new(temp, data, sync=self._sync)
            os.replace(temp, final.name if directory is not None else final, dst_dir_fd=directory)
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
        with self._ref_dirs(path.parent, create=True) as directories:
            self._atomic_write(path, (reference.digest or digest).encode(), directories[-1])

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
        """Delete a file under refs/ and the directories it leaves empty (never through a symlinked directory)."""
        names = path.parent.relative_to(self.root / "refs").parts
        try:
            with self._ref_dirs(path.parent, create=False) as directories:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path.name, dir_fd=directories[-1])
                for depth in reversed(range(len(names))):  # directories[depth] holds names[depth]
                    try:
                        os.rmdir(names[depth], dir_fd=directories[depth])
                    except OSError:
                        return
        except FileNotFoundError:
            return

    @contextlib.contextmanager
    def _ref_dirs(self, directory: Path, *, create: bool) -> Iterator[list[int]]:
        """Descriptors of refs/ and of each directory below it down to ``directory``, opened with O_NOFOLLOW (made
        where missing when ``create``): a symlink planted on the way is refused, never followed out of the cache.
        FileNotFoundError for a missing one without ``create``."""
        base = self.root / "refs"
        opened: list[int] = []
        try:
            opened.append(self._open_ref_dir(str(base), None, base))
            shown = base
            for name in directory.relative_to(base).parts:
                shown = shown / name
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, dir_fd=opened[-1])
                opened.append(self._open_ref_dir(name, opened[-1], shown))
            yield opened
        finally:
            for fd in opened:
                os.close(fd)

    @staticmethod
    def _open_ref_dir(name: str, parent: int | None, shown: Path) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (*SYMLINK_ERRNOS, errno.ENOTDIR):
                raise
            raise errors.CacheError(f"{shown} is a symlink or a file, where the cache keeps a directory of refs",
                                    f"remove {shown} (someone with write access to the cache put it there)") from None

    def _migrate_refs(self) -> None:
        """Caches written before the @tags/ layout hold refs/<registry>/<repo>/<tag>: move each such file to
        .../@tags/<tag> once (a tag `b` of `r/a` and the repository `r/a/b` could not both be cached there)."""
        base = self.root / "refs"
        marker = base / LAYOUT_MARKER
        if marker.exists():
            return
        for directory, _dirs, files in os.walk(base):  # os.walk does not descend into symlinked directories
            parent = Path(directory)
            if parent.name in (TAGS, DIGESTS) or parent == base or not files:
                continue
            with self._ref_dirs(parent / TAGS, create=True) as directories:
                for name in files:
                    with contextlib.suppress(FileNotFoundError):  # another process moved it first
                        os.replace(name, name, src_dir_fd=directories[-2], dst_dir_fd=directories[-1])
        with contextlib.suppress(FileExistsError):
            os.close(create_new(marker))

    def _migrate_refs_once(self) -> None:
        if self._refs_migrated:
            return
        self._refs_migrated = True
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
            write_new(marker, digest.encode())
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
            with open(self.signatures_path(manifest_digest), "rb", opener=open_nofollow) as handle:
                data = handle.read(max_size + 1)
        except OSError:
            return None
        return data if len(data) <= max_size else None

    def signature_files(self) -> Iterator[DigestFile]:
        """signatures/sha256/<hex>.json, each with the digest of the manifest it vouches for (None: misnamed)."""
        for path in _sorted_entries(self.root / "signatures" / "sha256"):
            with contextlib.suppress(FileNotFoundError):
                info = path.lstat()
                hex_part = path.name.removesuffix(".json")
                named = path.name.endswith(".json") and _HEX.fullmatch(hex_part)
                yield DigestFile(path, f"sha256:{hex_part}" if named else None, info.st_size)

    # --- fetch records ------------------------------------------------------------------------------------------
    def _record_path(self, key: str) -> Path:
        return self.root / "records" / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    def save_record(self, key: str, record: dict[str, object]) -> None:
        """Best effort and not fsynced: a record lost or torn is a slower fetch, never a wrong one."""
        final = self._record_path(key)
        temp = self.temp_path("record")
        try:
            final.parent.mkdir(exist_ok=True)
            write_new(temp, json.dumps(record).encode())
            os.replace(temp, final)
        except OSError as exc:  # a read-only cache
            log.debug("cannot save the fetch record %s: %s", final, exc)
        finally:
            temp.unlink(missing_ok=True)

    def load_record(self, key: str, *, max_size: int = 1 << 20) -> dict[str, object] | None:
        """The record saved for ``key``; None when there is none or it is not one (torn, edited, oversized, nested
        past what the parser takes)."""
        try:
            with open(self._record_path(key), "rb", opener=open_nofollow) as handle:
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

    def placement_records(self) -> Iterator[tuple[Path, Path | None]]:
        """Each `--local-dir` placement record and the directory it was made for (None: not recorded, older)."""
        for path in _sorted_entries(self.root / "records" / "local-dirs"):
            target = None
            with contextlib.suppress(OSError, ValueError, AttributeError, RecursionError):
                with open(path, "rb", opener=open_nofollow) as handle:
                    named = json.loads(handle.read(1 << 20)).get("target")
                target = Path(named) if isinstance(named, str) and named.startswith("/") else None
            yield path, target

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

    def scratch_is_private(self) -> bool:
        """Whether only this user can rename or delete what it puts in tmp/: nobody else may write there, or tmp/ is
        sticky (as /tmp is). A cache shared by a group (mode 2775) is neither: a member could swap a scratch
        directory for a symlink to one of their own while we fill it."""
        mode = (self.root / "tmp").stat().st_mode
        return not mode & (stat.S_IWGRP | stat.S_IWOTH) or bool(mode & stat.S_ISVTX)

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
        self._sync_dir(final.parent)
        return final

    def _discard_dirs_linking(self, inodes: set[tuple[int, int]]) -> None:
        """The model and config directories holding one of ``inodes`` (torn blobs, see durability.py)."""
        for directory in list(self.model_dirs()):
            if tree_inodes(directory.path) & inodes:
                log.warning("%s links a torn blob: deleted, the next fetch builds it again", directory.path)
                self.discard_dir(directory.path)
        self.drop_stale_records()

    def discard_dir(self, path: Path) -> None:
        """Delete a model or config directory. It is renamed into tmp/ first, so it leaves models/ in one step
        (fetch trusts any directory there to be complete); an interrupted delete leaves a tmp/ leftover only."""
        doomed = self.temp_path(f"prune-{path.name[:16]}")
        os.rename(path, doomed)
        self._sync_dir(path.parent)
        shutil.rmtree(doomed)

    # --- listing -----------------------------------------------------------------------------------------------
    def blobs(self) -> Iterator[DigestFile]:
        return _digest_files(self.root / "blobs" / "sha256")

    def manifests(self) -> Iterator[DigestFile]:
        return _digest_files(self.root / "manifests" / "sha256")

    def refs(self) -> Iterator[RefFile]:
        """Every file under refs/ but the layout marker, sorted by path: valid refs and strays alike."""
        self._migrate_refs_once()
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
