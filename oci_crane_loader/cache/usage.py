"""Disk usage of what the cache lists: files in a tree, inodes, bytes counted once per inode."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path


def walk_files(root: Path) -> Iterator[Path]:
    """Every non-directory under root (root itself if it is a file); symlinks are not followed."""
    if not root.is_dir() or root.is_symlink():
        if root.exists() or root.is_symlink():
            yield root
        return
    for directory, _dirs, files in os.walk(root):
        for name in files:
            yield Path(directory) / name


def unique_size(paths: Iterable[Path]) -> int:
    """Bytes of the files, each inode once (hard links share one)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            info = path.lstat()
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


def inodes_of(paths: Iterable[Path]) -> set[tuple[int, int]]:
    found = set()
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            info = path.lstat()
            found.add((info.st_dev, info.st_ino))
    return found


def tree_inodes(root: Path) -> set[tuple[int, int]]:
    return inodes_of(walk_files(root))


def freed_by(root: Path) -> int:
    """Bytes freed by deleting root: files with no other hard link (a linked blob is counted as a blob)."""
    return unique_size(path for path in walk_files(root) if path.lstat().st_nlink == 1)


def newest_mtime(root: Path) -> float:
    newest = root.lstat().st_mtime
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            with contextlib.suppress(FileNotFoundError):
                newest = max(newest, (Path(directory) / name).lstat().st_mtime)
    return newest
