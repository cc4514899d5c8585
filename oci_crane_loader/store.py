"""Content-addressed cache: verified blobs shared by every model and tag, manifests, a tag index, model dirs.

    blobs/sha256/<hex>            verified, read-only
    manifests/sha256/<hex>        raw manifest bytes
    refs/<registry>/<repo>/@tags/<tag>        manifest digest of the tag's last successful fetch (--offline)
    refs/<registry>/<repo>/@digests/<hex>     a fetch by digest, so that prune keeps it
                                              ('@' is in no repository or tag name: no path can collide)
    models/sha256/<hex>/          materialised model directory (hard links to blobs, extracted tar files)
    configs/sha256/<hex>/         the same without weights, for vLLM's `model` while weights stream in
    tmp/, locks/

Correctness comes from atomic renames (temp file, fsync, os.replace), not from the locks: locks only stop two
processes downloading the same blob twice. A half-written file is never visible under its final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import filelock

from . import errors
from .oci import Descriptor, digest_hex, sha256_digest
from .reference import Reference
from .settings import settings

log = logging.getLogger(__name__)


def fsync(fd: int) -> None:
    # fsync makes a blob durable before it gets its final name (a crash must not leave a zero-filled file there).
    # It costs disk write-back time (about 40% of a cold loopback fetch, see `nox -s bench`); a throwaway cache
    # (CI, an ephemeral pod) may skip it with OCI_CRANE_NO_FSYNC=1.
    if not settings().no_fsync:
        os.fsync(fd)

_HASH_CHUNK = 4 << 20
TAGS, DIGESTS = "@tags", "@digests"  # ref directories under refs/<registry>/<repository>/
LAYOUT_MARKER = ".layout-2"
FETCHING = "fetching-"  # tmp/ marker of a fetch in progress  # in refs/: the refs were moved to the @tags/ layout


def _model_name(manifest_digest: str, subpath: str | None) -> str:
    """A model directory's name: the manifest digest's hex, plus ``-<hash of --subpath>`` when one was chosen."""
    suffix = f"-{hashlib.sha256(subpath.encode()).hexdigest()[:12]}" if subpath else ""
    return digest_hex(manifest_digest) + suffix


def default_cache_dir() -> Path:
    explicit = settings().cache_dir  # OCI_CRANE_LOADER_CACHE
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "oci-crane-loader"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def fsync_dir(path: Path) -> None:
    if settings().no_fsync:
        return
    with contextlib.suppress(OSError):  # not every platform lets you open a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Store:
    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser().resolve() if root else default_cache_dir().resolve()
        try:
            for sub in ("blobs/sha256", "manifests/sha256", "refs", "models/sha256", "configs/sha256", "tmp", "locks"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            self._try_migrate_refs()
        except OSError as exc:
            raise errors.cache_os_error(exc, f"create the cache at {self.root}", self.root) from exc

    # --- paths -------------------------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest_hex(digest)

    def manifest_path(self, digest: str) -> Path:
        return self.root / "manifests" / "sha256" / digest_hex(digest)

    def model_path(self, manifest_digest: str, subpath: str | None = None) -> Path:
        return self.root / "models" / "sha256" / _model_name(manifest_digest, subpath)

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

    def temp_path(self, hint: str) -> Path:
        """Unique per process and call, inside the cache so that os.replace and os.link stay on one filesystem."""
        return self.root / "tmp" / f"{hint}.{os.getpid()}.{uuid.uuid4().hex[:12]}.incomplete"

    # --- locks -------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        lock = filelock.FileLock(str(self.root / "locks" / f"{name}.lock"))
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

    # --- blobs -------------------------------------------------------------------------------------------------
    def has_blob(self, descriptor: Descriptor) -> bool:
        try:
            return self.blob_path(descriptor.digest).stat().st_size == descriptor.size
        except FileNotFoundError:
            return False

    def commit_blob(self, temp: Path, descriptor: Descriptor, source: str) -> Path:
        """Verify size and digest of a downloaded temp file, then give it its final, read-only name."""
        size = temp.stat().st_size
        if size != descriptor.size:
            raise errors.IntegrityError(
                f"{source} is {size} bytes but its descriptor says {descriptor.size} ({descriptor.digest})")
        actual = file_sha256(temp)
        if actual != descriptor.digest:
            raise errors.IntegrityError(f"{source} has digest {actual}, expected {descriptor.digest}")
        final = self.blob_path(descriptor.digest)
        with open(temp, "rb+") as handle:
            fsync(handle.fileno())
        os.chmod(temp, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)  # shared by hard links: protect it
        os.replace(temp, final)
        fsync_dir(final.parent)
        return final

    def write_blob_bytes(self, data: bytes, descriptor: Descriptor) -> Path:
        temp = self.temp_path(digest_hex(descriptor.digest))
        try:
            temp.write_bytes(data)
            return self.commit_blob(temp, descriptor, f"blob {descriptor.digest}")
        finally:
            temp.unlink(missing_ok=True)

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

    def load_manifest(self, digest: str) -> bytes | None:
        path = self.manifest_path(digest)
        if not path.exists():
            return None
        raw = path.read_bytes()
        if sha256_digest(raw) != digest:  # a damaged cache entry must not be trusted
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


def remove_tree(path: Path) -> None:
    # Read-only blobs linked inside are fine: unlinking needs write access to the directory, not the file.
    shutil.rmtree(path, ignore_errors=True)
