"""Files already on disk (a cached blob, a file being packed): their digest, and placing them under a second name.
Shared by the cache (fetch side) and the layout writer (push side)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

from .errors import InvalidModelError

log = logging.getLogger(__name__)

_HASH_CHUNK = 4 << 20


def file_sha256(path: Path) -> str:
    """``sha256:<hex>`` of a file, read in 4 MiB chunks (flat memory for multi-GB shards)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def link_or_copy(source: Path, target: Path) -> None:
    """Hard link (no second copy on disk); copy only where the filesystem cannot link."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        raise InvalidModelError(f"two layers both write {target.name!r}",
                                "re-push the artifact with one layer per file")
    try:
        os.link(source, target)
    except OSError as exc:
        log.warning("cannot hard-link %s (%s); copying instead", target.name, exc.strerror)
        shutil.copyfile(source, target)


def list_files(directory: Path) -> list[str]:
    """The regular files under ``directory``, as sorted relative paths (a model directory's contents)."""
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*") if path.is_file())
