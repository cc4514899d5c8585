"""The files a model or config directory was built with, recorded as it is built (Store.model_files_path), so
that a file deleted from it later is noticed: a fetch builds the directory again, `cache verify` reports it, and
`cache prune --damaged` removes it. Also the small JSON records the `--local-dir` placement keeps.

Standard library only: the cached fetch (cached.py) calls ``missing_files`` before it serves a directory.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from ..files import write_new
from .store import Store
from .usage import walk_files


def built_files(directory: Path) -> dict[str, int]:
    """Every regular file under ``directory`` (relative path: size): what a directory holds once built."""
    found = {}
    for path in walk_files(directory):
        info = path.lstat()
        if stat.S_ISREG(info.st_mode):
            found[str(path.relative_to(directory))] = info.st_size
    return dict(sorted(found.items()))


def save_built_files(store: Store, directory: Path, files: dict[str, int]) -> None:
    """Record ``files`` for the model or config directory ``directory`` (its final path); written before the
    directory is published, so that a published directory has its record."""
    save_json(store, store.model_files_path(directory), {"files": files})


def recorded_files(store: Store, directory: Path) -> dict[str, int] | None:
    """The files ``directory`` was built with, or None without a usable record."""
    record = load_json(store.model_files_path(directory))
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or not all(isinstance(name, str) and isinstance(size, int)
                                              for name, size in files.items()):
        return None
    return files


def missing_files(store: Store, directory: Path) -> list[str] | None:
    """The files ``directory`` was built with that are no longer there as built (gone, not a regular file, or of
    another size), sorted: [] when it is whole. None when nothing is recorded for it (built by an older version,
    or the record was lost): it cannot be judged, and a fetch should take the full path, which checks it against
    a fresh build and records it."""
    files = recorded_files(store, directory)
    if files is None:
        return None
    return absent_from(directory, files)


def absent_from(directory: Path, files: dict[str, int]) -> list[str]:
    """The names of ``files`` missing from ``directory`` or of another size."""
    return sorted(name for name, size in files.items() if not _present(directory / name, size))


def _present(path: Path, size: int) -> bool:
    try:
        info = path.lstat()
    except OSError:  # gone, or a parent is no longer a directory
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size == size


def some(names: list[str], shown: int = 3) -> str:
    """The first few of ``names``, and how many more: for one line of text."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def save_json(store: Store, final: Path, data: object) -> None:
    """A small record under the cache root, written whole or not at all (temp file, rename). Not fsynced: a lost
    record makes a later run slower or less informed, never wrong."""
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = store.temp_path("record")
    try:
        write_new(temp, json.dumps(data).encode())  # O_EXCL|O_NOFOLLOW, as every file written in the cache
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)


def load_json(path: Path) -> object | None:
    try:
        loaded: object = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return loaded
