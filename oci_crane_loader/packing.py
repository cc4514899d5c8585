"""What both writers (formats/dmr_pack.py, formats/modelpack_pack.py) share: which files of a model directory
are packed, its config.json, the times written into documents, and deterministic tars.

Hidden files and directories (``.git/``, ``.cache/``) and Python bytecode are left out; symlinks are followed when
they resolve inside the directory and refused when not. The same directory always packs to the same digests:
times come from SOURCE_DATE_EPOCH or the files' mtimes, never the clock.

A file is packed from one descriptor (``open_packed``): what is hashed, linked or copied into the layout, and
described in its annotations is the file that was opened and checked to be inside the directory, even if its name
is swapped for a symlink meanwhile (docs/security.md).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import stat
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidModelError
from .files import SYMLINK_ERRNOS, open_nofollow

# Python bytecode is a by-product of running the model's code, never part of the model (modctl skips it too).
_SKIPPED_DIRS = {"__pycache__"}
_SKIPPED_SUFFIXES = (".pyc", ".pyo")


def collect_files(model_dir: Path) -> list[str]:
    """The files to pack: POSIX paths relative to ``model_dir``, sorted.

    Hidden files and directories (``.git/``, ``.cache/``, ``.gitattributes``) and Python bytecode are skipped.
    A symlink is followed when it resolves inside the directory (its target's bytes are packed under the link's
    name); one that escapes the directory, dangles or loops is refused with InvalidModelError."""
    root = model_dir.resolve()
    found: list[str] = []

    def walk(directory: Path, prefix: str, active: frozenset[Path]) -> None:
        with os.scandir(directory) as entries:
            names = sorted(entry.name for entry in entries)
        for name in names:
            if name.startswith(".") or name in _SKIPPED_DIRS or name.endswith(_SKIPPED_SUFFIXES):
                continue
            relative = f"{prefix}{name}"
            if "\\" in name or "\n" in name:
                raise InvalidModelError(f"{model_dir}/{relative}: a file name with a backslash or newline",
                                        "rename the file: readers refuse such paths")
            path = directory / name
            if path.is_symlink():
                _check_link(model_dir, root, path, relative)
            if path.is_dir():
                real = path.resolve()
                if real in active:
                    raise InvalidModelError(f"{model_dir}/{relative} is a symlink loop (it points at its own parent)",
                                            "remove the link")
                walk(path, f"{relative}/", active | {real})
            elif path.is_file():
                found.append(relative)
            # sockets, FIFOs and devices are not model files: left out

    if not root.is_dir():
        raise InvalidModelError(f"{model_dir} is not a directory",
                                "pass the model directory (the one holding config.json and the .safetensors files)")
    walk(root, "", frozenset({root}))
    return sorted(found)


def _check_link(model_dir: Path, root: Path, path: Path, relative: str) -> None:
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # dangling (FileNotFoundError) or a loop (RuntimeError before 3.13)
        raise InvalidModelError(f"{model_dir}/{relative} is a broken symlink (-> {os.readlink(path)})",
                                "fix or remove the link") from exc
    if target != root and not target.is_relative_to(root):
        raise InvalidModelError(
            f"{model_dir}/{relative} is a symlink to {target}, outside the model directory",
            "push a directory that holds the files themselves: copy it with `cp -rL SRC DST` (a Hugging Face "
            "cache snapshot links into ../../blobs: use `huggingface-cli download REPO --local-dir DIR`)")


@dataclass(frozen=True)
class PackedFile:
    """One file of the model directory, open: pack from ``fd`` and ``info`` (its fstat), never from its path."""

    name: str  # relative POSIX path, as collect_files gives it
    fd: int
    info: os.stat_result


@contextlib.contextmanager
def open_packed(model_dir: Path, name: str) -> Iterator[PackedFile]:
    """``name`` (from collect_files) opened once for packing. A symlink is followed only to a file inside the
    directory, as collect_files checked; the file it leads to is opened with O_NOFOLLOW, must be a regular file, and
    where the OS tells where an open file is (Linux, macOS) that must be inside the directory too. So a name swapped
    for a symlink out of the directory (to ~/.docker/config.json, say) after the check is refused, never read."""
    root = model_dir.resolve()
    try:
        real = (root / name).resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise _changed(model_dir, name, "is gone or is now a broken symlink") from exc
    if real != root and not real.is_relative_to(root):
        raise _changed(model_dir, name, f"is now a symlink to {real}, outside the model directory")
    try:
        fd = open_nofollow(real)
    except OSError as exc:
        if exc.errno in SYMLINK_ERRNOS:
            raise _changed(model_dir, name, "was replaced by a symlink") from None
        raise _changed(model_dir, name, f"cannot be opened ({exc.strerror})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _changed(model_dir, name, "is no longer a regular file")
        opened = _opened_path(fd)
        if opened is not None and opened != root and not opened.is_relative_to(root):
            raise _changed(model_dir, name, f"was opened at {opened}, outside the model directory")
        yield PackedFile(name, fd, info)
    finally:
        os.close(fd)


def _changed(model_dir: Path, name: str, what: str) -> InvalidModelError:
    return InvalidModelError(f"{model_dir}/{name} {what} (it changed after it was checked, while packing)",
                             "keep the model directory unchanged while it is pushed, then push again")


def _opened_path(fd: int) -> Path | None:
    """Where the kernel says an open file is (the real path, every symlink resolved); None where it cannot say."""
    try:
        if sys.platform.startswith("linux"):
            return Path(os.readlink(f"/proc/self/fd/{fd}").removesuffix(" (deleted)"))
        if sys.platform == "darwin":
            import fcntl

            return Path(os.fsdecode(fcntl.fcntl(fd, fcntl.F_GETPATH, bytes(1024)).rstrip(b"\0")))
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EINVAL):  # no /proc (a sandbox): the other checks still hold
            raise
    return None


def model_files(model_dir: Path) -> list[str]:
    """Relative paths, config and tokenizer files first, then weights, each group sorted by path."""
    return sorted(collect_files(model_dir), key=lambda name: (name.endswith(".safetensors"), name))


@dataclass(frozen=True)
class SourceTimes:
    """The times a pack writes, from SOURCE_DATE_EPOCH (read once per pack) or the files' mtimes."""

    epoch: int | None  # SOURCE_DATE_EPOCH when set: it also replaces every file's own mtime
    newest: int  # the newest mtime among the files

    @classmethod
    def read(cls, model_dir: Path, files: list[str]) -> SourceTimes:
        explicit = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
        epoch = None
        if explicit:
            try:
                epoch = int(explicit)
            except ValueError:
                raise InvalidModelError(
                    f"SOURCE_DATE_EPOCH={explicit!r} is not a whole number of seconds",
                    "set it to a Unix time, e.g. SOURCE_DATE_EPOCH=$(date +%s), or unset it") from None
        return cls(epoch, max((int((model_dir / name).stat().st_mtime) for name in files), default=0))

    @property
    def created(self) -> str:
        """The artifact's creation time: SOURCE_DATE_EPOCH if set (reproducible builds), else the newest mtime."""
        return timestamp(self.epoch if self.epoch is not None else self.newest)


def timestamp(epoch: int) -> str:
    """RFC 3339 in UTC, as Go's time.Time marshals a whole second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def read_hf_config(model_dir: Path) -> dict[str, Any] | None:
    """The model's config.json (Hugging Face's), None where there is none; anything but a JSON object is refused."""
    path = model_dir / "config.json"
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidModelError(f"{path} is not valid JSON ({exc})",
                                "fix config.json (python -m json.tool config.json shows where)") from exc
    if not isinstance(document, dict):
        raise InvalidModelError(f"{path} is not a JSON object", "fix config.json")
    return document


def deterministic_tar(model_dir: Path, names: list[str]) -> bytes:
    """Sorted, zero mtimes and owners, so the same directory gives the same digest."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(names):
            with open_packed(model_dir, name) as packed, open(packed.fd, "rb", closefd=False) as handle:
                info = tar.gettarinfo(arcname=name, fileobj=handle)
                info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
                tar.addfile(info, handle)
    return buffer.getvalue()
