"""The files of one resumable ranged download (registry/transfer.py), named and opened by the cache.

    tmp/<hex>.partial            the blob's bytes so far, preallocated (sparse) to its size
    tmp/<hex>.partial.json       how far each range got (``state``), replaced whole from ``state_temp``

These names are predictable, and a cache may be shared by a group (mode 2775): someone else can plant a symlink,
or a hard link to one of your files, at them. So nothing here follows a symlink (O_NOFOLLOW), a new file is
created with O_EXCL, and a partial file is resumed only if fstat shows a regular file of ours, with one link and
the blob's size; anything else is discarded (the name unlinked, never written through) and the download starts
from zero. The download itself holds the one descriptor ``create`` or ``resume`` returned.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import SYMLINK_ERRNOS, create_new, open_nofollow, write_new

log = logging.getLogger(__name__)

_STATE_LIMIT = 1 << 20  # a state file lists a few dozen ranges; more is not ours


@dataclass(frozen=True)
class PartialPaths:
    """What the Store hands a ranged download (``Store.partial_paths``): its paths, and the cache root for the
    fix of an error."""

    data: Path
    state: Path
    state_temp: Path
    cache_root: Path

    def discard(self) -> None:
        for path in (self.data, self.state, self.state_temp):
            path.unlink(missing_ok=True)  # unlink never follows a symlink: a planted one just goes

    def create(self, size: int) -> int:
        """A new, empty partial file of ``size`` bytes (sparse), opened for reading and writing; what was there
        before (an earlier attempt, a planted link) is discarded."""
        self.discard()
        fd = create_new(self.data, readable=True)
        try:
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def resume(self, size: int) -> int | None:
        """The partial file an earlier attempt left, opened for reading and writing, if it is one: a regular file
        of ours, with one link (not a hard link to another file) and ``size`` bytes. None otherwise."""
        try:
            fd = open_nofollow(self.data, os.O_RDWR)
        except OSError as exc:
            if exc.errno in SYMLINK_ERRNOS:
                log.warning("%s is a symlink, not a download of ours: not resumed", self.data)
            return None
        info = os.fstat(fd)
        why = _untrusted(info, size)
        if why is None:
            return fd
        os.close(fd)
        if why != "size":
            log.warning("%s is %s, not a download of ours: not resumed", self.data, why)
        return None

    def adopt(self, written: Path, size: int) -> bool:
        """Make ``written`` (a temp file of ours holding the blob's first bytes) the partial file, grown (sparse) to
        ``size``: opened without following a symlink, checked to be ours, grown through that descriptor, then
        renamed over the partial's name. False, and nothing kept, when it is not a file of ours."""
        try:
            fd = open_nofollow(written, os.O_RDWR)
        except OSError:
            return False
        try:
            if _untrusted(os.fstat(fd), None) is not None:
                return False
            os.ftruncate(fd, size)
            self.discard()
            os.replace(written, self.data)
        finally:
            os.close(fd)
        return True

    def load_state(self) -> dict[str, Any] | None:
        """The state file's JSON object, None when there is none or it is not ours (a symlink, someone else's)."""
        try:
            fd = open_nofollow(self.state)
        except OSError:
            return None
        try:
            if _untrusted(os.fstat(fd), None) is not None:
                return None
            state = json.loads(os.read(fd, _STATE_LIMIT))
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)
        return state if isinstance(state, dict) else None

    def save_state(self, state: object) -> None:
        """Write the state file whole: a new ``state_temp`` (the name unlinked first), renamed over ``state``."""
        self.state_temp.unlink(missing_ok=True)
        write_new(self.state_temp, json.dumps(state).encode())
        os.replace(self.state_temp, self.state)


def _untrusted(info: os.stat_result, size: int | None) -> str | None:
    """Why a file found at a download's name is not one this user's download left; None when it is."""
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        return f"owned by user {info.st_uid}"
    if info.st_nlink != 1:
        return f"a file with {info.st_nlink} names (a hard link)"
    if size is not None and info.st_size != size:
        return "size"
    return None
