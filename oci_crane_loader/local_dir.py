"""`fetch --local-dir DIR`: a cached model's files placed in a directory the user chose (``hf download --local-dir``).

How each file gets there (``mode``, `--local-dir-mode`):

- ``copy`` (the default): a file of DIR's own, which the user may edit without touching the cache: a reflink where
  the file system has them (Linux FICLONE: btrfs, XFS, bcachefs; the cache's blocks are shared until written), a
  plain copy otherwise.
- ``link``: a hard link to the cache's read-only file where DIR is on the cache's file system (no second copy on
  disk), a copy otherwise. For a directory served read-only: a write through a link (root ignores the mode)
  changes the cached blob, which the next fetch notices by its size, sets aside and downloads again.

Every write goes to a temporary name in the target directory first and is renamed into place, so no final name ever
holds a partial file. A file already there with the right content is left untouched (a second run changes nothing),
except that in copy mode a hard link into the cache is replaced by a copy; one with other content is replaced and
reported. A file the last placement into DIR put there (recorded in the cache), that this model does not have and
that nobody changed since, is removed; any other file the model does not have is left alone and reported.

DIR is locked for the placement (flock on DIR's own descriptor: nothing is written beside it or inside it for the
lock), so two fetches into one DIR take turns and each leaves its own model whole. DIR may not be the cache, hold it
or lie inside it: a model's file paths (``blobs/sha256/...``, ``refs/...``) could then overwrite the cache's own.

All paths under DIR are opened relative to directory descriptors with O_NOFOLLOW: a symlink inside DIR (planted
before or during the run) is never followed, so nothing is written outside DIR.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from .cache.contents import load_json, save_json, some
from .cache.store import Store, default_cache_dir
from .errors import InvalidModelError, LocalDirError, UsageError
from .options import LOCAL_DIR_MODES as MODES
from .paths import safe_relative_path

log = logging.getLogger(__name__)

_TEMP_PREFIX = ".oci-crane-partial."
_COPY_CHUNK = 8 << 20
# link(2) fails with these where the files cannot share an inode: another device, a file system without hard links,
# fs.protected_hardlinks, the link count limit. A copy is the answer to each.
_CANNOT_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_FICLONE = 0x40049409  # Linux's <linux/fs.h> _IOW(0x94, 9, int): make the file a reflink of another


@dataclass
class LocalDirReport:
    """What placing a model in DIR did, file by file (paths relative to DIR)."""

    path: Path
    linked: list[str] = field(default_factory=list)  # new hard links to the cache (--local-dir-mode link)
    copied: list[str] = field(default_factory=list)  # new copies (reflinks where the file system has them)
    unchanged: list[str] = field(default_factory=list)  # already there with the model's content
    replaced: list[str] = field(default_factory=list)  # were there with other content (or as a symlink): replaced
    removed: list[str] = field(default_factory=list)  # placed by the last fetch into DIR, not in this model
    extra: list[str] = field(default_factory=list)  # in DIR, not in the model: left alone

    def to_json(self) -> dict[str, object]:
        return {"linked": self.linked, "copied": self.copied, "unchanged": self.unchanged,
                "replaced": self.replaced, "removed": self.removed, "extra": self.extra}

    def warnings(self) -> list[str]:
        """The lines a person should see: what was overwritten or removed, and what DIR holds besides the model."""
        lines = []
        if self.replaced:
            lines.append(f"replaced {len(self.replaced)} file(s) in {self.path} whose content differed from the "
                         f"model: {some(self.replaced, 5)}")
        if self.removed:
            lines.append(f"removed {len(self.removed)} file(s) from {self.path} that the last fetch into it had "
                         f"placed and this model does not have: {some(self.removed, 5)}")
        if self.extra:
            lines.append(f"{len(self.extra)} file(s) in {self.path} are not part of the model and were left "
                         f"alone: {some(self.extra, 5)}")
        return lines


def cache_root(cache_dir: str | Path | None) -> Path:
    """The cache root a fetch with ``cache_dir`` (--cache-dir; None: OCI_CRANE_LOADER_CACHE or the default) uses."""
    return (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()).resolve()


def check_local_dir(target: Path | str, cache: Path, *, mode: str = MODES[0], unreported: str | None = None) -> None:
    """Refuse a mode not in MODES, and a DIR that is the cache, holds it or lies inside it, symlinks resolved: the
    model's file paths would then name the cache's own files, and a hostile artifact could replace another model's
    blobs and refs. ``unreported``: the one directory right under DIR that may be the cache (kserve-init's)."""
    if mode not in MODES:
        raise UsageError(f"--local-dir-mode {mode!r} is not one of {', '.join(MODES)}",
                         "copy (files you may edit) or link (hard links to the cache, for read-only use)")
    if not str(target).strip():
        raise LocalDirError("--local-dir is empty", "name the directory the model should go to")
    place, cache = Path(target).expanduser().resolve(), cache.expanduser().resolve()
    if unreported is not None and cache == place / unreported:
        return
    if place == cache or place.is_relative_to(cache) or cache.is_relative_to(place):
        how = "is" if place == cache else "lies inside" if place.is_relative_to(cache) else "holds"
        raise UsageError(f"--local-dir {target} {how} the cache at {cache}: a model's file paths could overwrite "
                         "the cache's own files there",
                         "choose a --local-dir outside the cache, or another --cache-dir")


def place_model(model_dir: Path, files: list[str], target: Path | str, *, store: Store, mode: str = MODES[0],
                unreported: str | None = None) -> LocalDirReport:
    """Make ``target`` hold the cached model's ``files`` (relative paths under ``model_dir``, a directory of
    ``store``), as ``mode`` says (MODES). ``unreported``: a directory right under ``target`` that is not counted
    among the extra files (the cache kserve-init keeps there while it runs)."""
    check_local_dir(target, store.root, mode=mode, unreported=unreported)
    target = Path(target).expanduser()
    report = LocalDirReport(target)
    wanted = {safe_relative_path(name, "model file") for name in files}
    if unreported is not None and any(name.split("/", 1)[0] == unreported for name in wanted):
        raise InvalidModelError(f"the model has files under {unreported}/, where this run keeps its cache",
                                "re-push the artifact with other file paths")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise LocalDirError(f"--local-dir {target} exists and is not a directory") from None
    except OSError as exc:
        raise _os_error(exc, target) from None
    with ExitStack() as stack:
        # DIR itself may be a symlink (/models -> /mnt/models): the user named it. Below it, nothing is followed.
        root = os.open(target, _DIR_FLAGS & ~getattr(os, "O_NOFOLLOW", 0))
        stack.callback(os.close, root)  # closing it also releases the lock
        _lock(root, target, store.lock_timeout)
        record = store.placement_path(target.resolve())
        previous = _placed_before(record)
        placed: dict[str, list[int]] = {}
        for name in sorted(wanted):
            try:
                placed[name] = _place(model_dir / name, root, name, target, report, mode, fsync=store.fsync)
            except OSError as exc:
                raise _os_error(exc, target / name) from None
        for name in sorted(set(previous) - wanted):
            _remove_leftover(root, name, previous[name], report)
        report.extra = sorted(name for name in _walk_files(root, "", target) - wanted
                              if unreported is None or name.split("/", 1)[0] != unreported)
        if placed != previous:
            try:
                save_json(store, record, {"files": placed, "target": str(target.resolve())})  # prune reads it
            except OSError as exc:  # a read-only cache: the next placement leaves these files as extra ones
                log.debug("cannot record what was placed in %s: %s", target, exc)
    return report


def _lock(root: int, target: Path, timeout: float) -> None:
    """Hold DIR for this placement (flock on its descriptor, released when it is closed), waiting as long as a cache
    lock would. Where the file system has no flock (some NFS mounts) the placement runs unlocked."""
    try:
        import fcntl
    except ImportError:
        return
    deadline = None
    while True:
        try:
            fcntl.flock(root, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except OSError as exc:
            log.debug("cannot lock %s (%s): placing the model without a lock", target, exc.strerror)
            return
        if deadline is None:
            log.info("waiting for another fetch that is placing a model in %s", target)
            deadline = time.monotonic() + timeout
        elif time.monotonic() > deadline:
            raise LocalDirError(f"gave up after {timeout:.0f}s waiting for another fetch that is "
                                f"placing a model in {target}", "let it finish, or choose another --local-dir")
        time.sleep(0.05)


def _placed_before(record: Path) -> dict[str, list[int]]:
    """What the last placement into DIR put there: path -> [size, mtime_ns] as it left each file."""
    loaded = load_json(record)
    files = loaded.get("files") if isinstance(loaded, dict) else None
    if not isinstance(files, dict):
        return {}
    return {name: value for name, value in files.items() if isinstance(name, str) and isinstance(value, list)
            and len(value) == 2 and all(isinstance(number, int) for number in value)}


def _place(source: Path, root: int, name: str, target: Path, report: LocalDirReport, mode: str, *,
           fsync: bool) -> list[int]:
    """Put one file in place; its [size, mtime_ns] as it is left."""
    *parents, base = name.split("/")
    with _directory(root, parents, target) as folder:
        source_stat = os.stat(source)
        existing = _lstat(base, folder)
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            raise LocalDirError(f"{target / name} is a directory, where the model has a file",
                                "move that directory away, or choose another --local-dir")
        # In copy mode a hard link into the cache (an earlier link-mode run) becomes a copy: an edit through it
        # would change the cache.
        shares_cache = existing is not None and (existing.st_dev, existing.st_ino) == (source_stat.st_dev,
                                                                                       source_stat.st_ino)
        if (existing is not None and stat.S_ISREG(existing.st_mode) and not (mode == "copy" and shares_cache)
                and _same_content(source, source_stat, base, folder, existing)):
            report.unchanged.append(name)
            return [existing.st_size, existing.st_mtime_ns]
        how = _link_or_copy(source, source_stat, folder, base, link=mode == "link", fsync=fsync)
        (report.linked if how == "linked" else report.copied).append(name)
        if existing is not None and not shares_cache:
            report.replaced.append(name)
        now = os.stat(base, dir_fd=folder, follow_symlinks=False)
        return [now.st_size, now.st_mtime_ns]


def _remove_leftover(root: int, name: str, was: list[int], report: LocalDirReport) -> None:
    """Remove ``name`` if it is still the file the last placement left ([size, mtime_ns] as recorded), and the
    directories that leaves empty; anything else there is the user's, and is reported as extra."""
    try:
        name = safe_relative_path(name, "recorded file")
    except InvalidModelError:
        return
    *parents, base = name.split("/")
    with ExitStack() as stack:
        folders = [root]
        try:
            for part in parents:
                folders.append(os.open(part, _DIR_FLAGS, dir_fd=folders[-1]))
                stack.callback(os.close, folders[-1])
            info = _lstat(base, folders[-1])
            if info is None or not stat.S_ISREG(info.st_mode) or [info.st_size, info.st_mtime_ns] != was:
                return
            os.unlink(base, dir_fd=folders[-1])
        except OSError as exc:  # moved, replaced by a symlink, not ours to change: left as it is
            log.debug("left %s in place: %s", name, exc)
            return
        report.removed.append(name)
        for depth in range(len(parents) - 1, -1, -1):
            try:
                os.rmdir(parents[depth], dir_fd=folders[depth])
            except OSError:  # not empty: the user's, or the model's
                return


@contextmanager
def _directory(root: int, parents: list[str], target: Path) -> Iterator[int]:
    """The descriptor of DIR/a/b for parents [a, b], creating what is missing; a symlink on the way is refused."""
    with ExitStack() as stack:
        current = root
        for depth, part in enumerate(parents):
            shown = target.joinpath(*parents[: depth + 1])
            with suppress(FileExistsError):
                os.mkdir(part, dir_fd=current)
            current = _open_dir(part, current, shown)
            stack.callback(os.close, current)
        yield current


def _open_dir(name: str, parent: int, shown: Path) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):  # EMLINK: FreeBSD's O_NOFOLLOW on a symlink
            kind = "a symlink" if os.path.islink(shown) else "not a directory"
            raise LocalDirError(f"{shown} is {kind}, where the model has a directory (nothing is written through "
                                "symlinks, so that nothing lands outside --local-dir)",
                                f"remove or rename {shown}, or choose another --local-dir") from None
        raise


def _lstat(name: str, folder: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _same_content(source: Path, source_stat: os.stat_result, name: str, folder: int,
                  existing: os.stat_result) -> bool:
    if (existing.st_dev, existing.st_ino) == (source_stat.st_dev, source_stat.st_ino):
        return True  # our own hard link
    if existing.st_size != source_stat.st_size:
        return False
    if existing.st_mtime_ns == source_stat.st_mtime_ns:
        return True  # our own copy: copies keep the cached file's mtime (rsync's quick check)
    fd = os.open(name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0), dir_fd=folder)
    with open(fd, "rb") as theirs, open(source, "rb") as ours:
        while True:
            chunk = ours.read(_COPY_CHUNK)
            if chunk != theirs.read(_COPY_CHUNK):
                return False
            if not chunk:
                return True


def _link_or_copy(source: Path, source_stat: os.stat_result, folder: int, name: str, *, link: bool,
                  fsync: bool) -> str:
    """Put ``source`` at ``name`` in ``folder`` through a temporary name and a rename (which replaces a file or a
    symlink there, never what a symlink points to): a hard link if ``link`` and the file system allows, else a
    copy of DIR's own."""
    temporary = f"{_TEMP_PREFIX}{secrets.token_hex(8)}"
    how = "copied"
    try:
        if link:
            try:
                os.link(source, temporary, dst_dir_fd=folder)
                how = "linked"
            except OSError as exc:
                if exc.errno not in _CANNOT_LINK:
                    raise
                log.debug("cannot hard-link %s (%s); copying", name, exc.strerror)
        if how == "copied":
            _copy(source, source_stat, folder, temporary, fsync=fsync)
        os.rename(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=folder)
        raise
    return how


def _copy(source: Path, source_stat: os.stat_result, folder: int, temporary: str, *, fsync: bool) -> None:
    """A new file, writable by its owner, with the cached file's bytes and times (the times make a second run's
    quick check find it unchanged): a reflink where the file system has them, else the bytes copied."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(temporary, flags, stat.S_IMODE(source_stat.st_mode) | 0o200, dir_fd=folder)
    with open(fd, "wb") as out, open(source, "rb") as data:
        if not _reflink(data.fileno(), out.fileno()):
            while chunk := data.read(_COPY_CHUNK):
                out.write(chunk)
            out.flush()
        if fsync:  # the store's choice (OCI_CRANE_NO_FSYNC)
            os.fsync(out.fileno())
        os.utime(out.fileno(), ns=(source_stat.st_atime_ns, source_stat.st_mtime_ns))


def _reflink(source: int, target: int) -> bool:
    """Make ``target`` share ``source``'s blocks (copy on write), where the file system can (Linux: btrfs, XFS with
    reflink, bcachefs); False otherwise (another file system, ext4, tmpfs, macOS: the caller copies)."""
    if not sys.platform.startswith("linux"):
        return False
    import fcntl

    try:
        fcntl.ioctl(target, _FICLONE, source)
    except OSError as exc:
        log.debug("no reflink (%s); copying", exc.strerror)
        os.ftruncate(target, 0)  # nothing half-cloned stays under the copy
        return False
    return True


def _walk_files(folder: int, prefix: str, target: Path) -> set[str]:
    """Every non-directory under ``folder`` (symlinks included, never followed), as paths relative to DIR."""
    found: set[str] = set()
    with os.scandir(folder) as entries:
        names = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    for name, is_dir in names:
        relative = f"{prefix}{name}"
        if not is_dir:
            found.add(relative)
            continue
        try:
            child = os.open(name, _DIR_FLAGS, dir_fd=folder)
        except OSError:  # swapped for a symlink meanwhile, or unreadable: reported as it is
            found.add(relative)
            continue
        try:
            found |= _walk_files(child, f"{relative}/", target)
        finally:
            os.close(child)
    return found


def _os_error(exc: OSError, where: Path) -> LocalDirError:
    fixes = {
        errno.ENOSPC: f"free disk space where {where} is, or choose another --local-dir",
        errno.EDQUOT: f"free space within your disk quota where {where} is, or choose another --local-dir",
        errno.EACCES: f"give your user write access to {where}, or choose another --local-dir",
        errno.EROFS: f"{where} is on a read-only file system: choose another --local-dir",
    }
    return LocalDirError(f"cannot write {where} ({exc.strerror or exc})", fixes.get(exc.errno or 0))
