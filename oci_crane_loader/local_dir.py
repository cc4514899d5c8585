"""`fetch --local-dir DIR`: a cached model's files placed in a directory the user chose (``hf download --local-dir``).

Each file becomes a hard link to the cached one where DIR is on the cache's file system, a copy otherwise. Every
write goes to a temporary name in the target directory first and is renamed into place, so no final name ever holds
a partial file. A file already there with the right content is left untouched (a second run changes nothing); one
with other content is replaced and reported; files the model does not have are left alone and reported.

All paths under DIR are opened relative to directory descriptors with O_NOFOLLOW: a symlink inside DIR (planted
before or during the run) is never followed, so nothing is written outside DIR.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LocalDirError
from .paths import safe_relative_path
from .settings import settings

log = logging.getLogger(__name__)

_TEMP_PREFIX = ".oci-crane-partial."
_COPY_CHUNK = 8 << 20
# link(2) fails with these where the files cannot share an inode: another device, a file system without hard links,
# fs.protected_hardlinks, the link count limit. A copy is the answer to each.
_CANNOT_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)


@dataclass
class LocalDirReport:
    """What placing a model in DIR did, file by file (paths relative to DIR)."""

    path: Path
    linked: list[str] = field(default_factory=list)  # new hard links to the cache
    copied: list[str] = field(default_factory=list)  # new copies (DIR on another file system)
    unchanged: list[str] = field(default_factory=list)  # already there with the model's content
    replaced: list[str] = field(default_factory=list)  # were there with other content (or as a symlink): replaced
    extra: list[str] = field(default_factory=list)  # in DIR, not in the model: left alone

    def to_json(self) -> dict[str, object]:
        return {"linked": self.linked, "copied": self.copied, "unchanged": self.unchanged,
                "replaced": self.replaced, "extra": self.extra}

    def warnings(self) -> list[str]:
        """The lines a person should see: what was overwritten, and what DIR holds besides the model."""
        lines = []
        if self.replaced:
            lines.append(f"replaced {len(self.replaced)} file(s) in {self.path} whose content differed from the "
                         f"model: {_some(self.replaced)}")
        if self.extra:
            lines.append(f"{len(self.extra)} file(s) in {self.path} are not part of the model and were left "
                         f"alone: {_some(self.extra)}")
        return lines


def _some(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def place_model(model_dir: Path, files: list[str], target: Path | str, *, unreported: str | None = None
                ) -> LocalDirReport:
    """Make ``target`` hold the cached model's ``files`` (relative paths under ``model_dir``). ``unreported``: a
    directory right under ``target`` that is not counted among the extra files (a cache placed there)."""
    if not str(target).strip():
        raise LocalDirError("--local-dir is empty", "name the directory the model should go to")
    target = Path(target).expanduser()
    report = LocalDirReport(target)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise LocalDirError(f"--local-dir {target} exists and is not a directory") from None
    except OSError as exc:
        raise _os_error(exc, target) from None
    wanted = {safe_relative_path(name, "model file") for name in files}
    with ExitStack() as stack:
        # DIR itself may be a symlink (/models -> /mnt/models): the user named it. Below it, nothing is followed.
        root = os.open(target, _DIR_FLAGS & ~getattr(os, "O_NOFOLLOW", 0))
        stack.callback(os.close, root)
        for name in sorted(wanted):
            try:
                _place(model_dir / name, root, name, target, report)
            except OSError as exc:
                raise _os_error(exc, target / name) from None
        report.extra = sorted(name for name in _walk_files(root, "", target) - wanted
                              if unreported is None or name.split("/", 1)[0] != unreported)
    return report


def _place(source: Path, root: int, name: str, target: Path, report: LocalDirReport) -> None:
    *parents, base = name.split("/")
    with _directory(root, parents, target) as folder:
        source_stat = os.stat(source)
        existing = _lstat(base, folder)
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            raise LocalDirError(f"{target / name} is a directory, where the model has a file",
                                "move that directory away, or choose another --local-dir")
        if existing is not None and stat.S_ISREG(existing.st_mode) and _same_content(source, source_stat, base,
                                                                                      folder, existing):
            report.unchanged.append(name)
            return
        how = _link_or_copy(source, source_stat, folder, base)
        (report.linked if how == "linked" else report.copied).append(name)
        if existing is not None:
            report.replaced.append(name)


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


def _link_or_copy(source: Path, source_stat: os.stat_result, folder: int, name: str) -> str:
    """Put ``source`` at ``name`` in ``folder`` through a temporary name and a rename (which replaces a file or a
    symlink there, never what a symlink points to)."""
    temporary = f"{_TEMP_PREFIX}{secrets.token_hex(8)}"
    try:
        try:
            os.link(source, temporary, dst_dir_fd=folder)
            how = "linked"
        except OSError as exc:
            if exc.errno not in _CANNOT_LINK:
                raise
            log.debug("cannot hard-link %s (%s); copying", name, exc.strerror)
            _copy(source, source_stat, folder, temporary)
            how = "copied"
        os.rename(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=folder)
        raise
    return how


def _copy(source: Path, source_stat: os.stat_result, folder: int, temporary: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(temporary, flags, stat.S_IMODE(source_stat.st_mode) | 0o200, dir_fd=folder)
    with open(fd, "wb") as out, open(source, "rb") as data:
        while chunk := data.read(_COPY_CHUNK):
            out.write(chunk)
        out.flush()
        if not settings().no_fsync:
            os.fsync(out.fileno())
        os.utime(out.fileno(), ns=(source_stat.st_atime_ns, source_stat.st_mtime_ns))


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
