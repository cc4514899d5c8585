"""Placing a file that already exists on disk (a cached blob, a file being packed) under a second name."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from .errors import InvalidModelError

log = logging.getLogger(__name__)


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
