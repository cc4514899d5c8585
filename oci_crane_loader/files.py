"""Files already on disk (a cached blob, a file being packed): their digest, and placing them under a second name.
Shared by the cache (fetch side) and the layout writer (push side).

Opening is done once, by descriptor: a path is opened with O_NOFOLLOW (never through a symlink planted at its last
component), checked with fstat, and then hashed, linked or copied from that descriptor, so a file swapped for a
symlink after the check is never what gets read (docs/security.md).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

from .errors import CacheError, InvalidModelError

log = logging.getLogger(__name__)

_HASH_CHUNK = 4 << 20
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# What open(2) says for O_NOFOLLOW on a symlink: ELOOP (Linux, macOS), EMLINK (FreeBSD)
SYMLINK_ERRNOS = {errno.ELOOP, errno.EMLINK}


def create_new(path: Path | str, mode: int = 0o666, *, readable: bool = False) -> int:
    """A new file, opened for writing: O_EXCL (never an existing file, nor what a symlink there names) and
    O_NOFOLLOW. The name must be free: a temp name is unique, a fixed name is unlinked first."""
    access = os.O_RDWR if readable else os.O_WRONLY
    return os.open(path, access | os.O_CREAT | os.O_EXCL | NOFOLLOW | _CLOEXEC, mode)


def write_new(path: Path, data: bytes, *, sync: Callable[[int], None] | None = None) -> None:
    """``data`` into a new file at ``path`` (see create_new), ``sync`` called on its descriptor before it closes."""
    fd = create_new(path)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync is not None:
            sync(fd)
    finally:
        os.close(fd)


def open_nofollow(path: Path | str, flags: int = os.O_RDONLY) -> int:
    """``path`` opened without following a symlink at its last component (OSError ELOOP if it is one), and without
    waiting for a writer if a FIFO was put there (O_NONBLOCK: no effect on a regular file's reads and writes)."""
    return os.open(path, flags | NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0))


def fd_sha256(fd: int) -> str:
    """``sha256:<hex>`` of an open file from its start, read with pread in 4 MiB chunks (the offset is untouched)."""
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _HASH_CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return "sha256:" + digest.hexdigest()


def file_sha256(path: Path) -> str:
    """``sha256:<hex>`` of a file, read in 4 MiB chunks (flat memory for multi-GB shards)."""
    fd = os.open(path, os.O_RDONLY | _CLOEXEC)
    try:
        return fd_sha256(fd)
    finally:
        os.close(fd)


def link_fd(fd: int, source: Path, target: Path) -> None:
    """A hard link at ``target`` (a free name) to the open file ``fd`` (opened from ``source``), never to whatever
    ``source`` names now: linkat(2) of /proc/self/fd/N with AT_SYMLINK_FOLLOW on Linux; elsewhere a link of the path,
    kept only if it is the same inode (else OSError, and the caller copies from the descriptor)."""
    proc = f"/proc/self/fd/{fd}"
    # With a directory descriptor Python calls linkat(2), which honours AT_SYMLINK_FOLLOW; plain link(2) would
    # link the /proc symlink itself (EXDEV).
    directory = os.open(target.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
    try:
        os.link(proc if os.path.exists(proc) else source, target.name, dst_dir_fd=directory, follow_symlinks=True)
    finally:
        os.close(directory)
    found, ours = os.stat(target, follow_symlinks=False), os.fstat(fd)
    if (found.st_dev, found.st_ino) != (ours.st_dev, ours.st_ino):  # the path was swapped since it was opened
        os.unlink(target)
        raise OSError(errno.ESTALE, f"{source} changed since it was opened")


def copy_fd(fd: int, target: Path, mode: int = 0o644, *, hashing: bool = False) -> str | None:
    """Copy the open file ``fd`` (from its start) into a new file ``target`` (see create_new); with ``hashing``,
    return the sha256 digest of the bytes copied (read once)."""
    digest = hashlib.sha256() if hashing else None
    out = create_new(target, mode)
    try:
        offset = 0
        while chunk := os.pread(fd, _HASH_CHUNK, offset):
            if digest is not None:
                digest.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view):]
            offset += len(chunk)
    finally:
        os.close(out)
    return "sha256:" + digest.hexdigest() if digest is not None else None


def regular_file(fd: int, shown: object) -> os.stat_result:
    """fstat of an open file that must be a regular file (not a FIFO, a device or a directory)."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise InvalidModelError(f"{shown} is not a regular file", "keep only regular files in the directory")
    return info


def link_or_copy(source: Path, target: Path) -> None:
    """Hard link (no second copy on disk); copy only where the filesystem cannot link. ``source`` is opened once,
    without following a symlink, and the link or copy is made from that descriptor."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(target):
        raise InvalidModelError(f"two layers both write {target.name!r}",
                                "re-push the artifact with one layer per file")
    try:
        fd = open_nofollow(source)
    except OSError as exc:
        if exc.errno not in SYMLINK_ERRNOS:
            raise
        raise CacheError(f"{source} is a symlink, where the cache keeps a file (someone else wrote it there)",
                         f"delete {source} (oci-crane cache prune --damaged) and fetch again") from None
    try:
        info = regular_file(fd, source)
        try:
            link_fd(fd, source, target)
        except OSError as exc:
            log.warning("cannot hard-link %s (%s); copying instead", target.name, exc.strerror)
            copy_fd(fd, target, stat.S_IMODE(info.st_mode) | 0o200)
    finally:
        os.close(fd)


def unique_name(hint: str) -> str:
    """A name no other process or call picks: for a temp file beside its final one."""
    return f".{hint}.{os.getpid()}.{uuid.uuid4().hex[:12]}.incomplete"


def list_files(directory: Path) -> list[str]:
    """The regular files under ``directory``, as sorted relative paths (a model directory's contents)."""
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*") if path.is_file())
