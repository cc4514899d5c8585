"""When cache files reach the disk: fsync of small files, the background fsync of blobs, and recovery after a power
loss (cache/store.py calls these; it alone knows the paths).

A blob is renamed into place before its bytes are on disk (fsync would stall every download: see
docs/fetching.md): first a small durable marker unsynced/<hex> names it and this boot, a background thread
fsyncs it and then drops the marker. A marker left by an earlier boot (power lost before the sync) gets its blob
re-hashed when the next Store opens, before anything is served from it.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..files import file_sha256, write_new

log = logging.getLogger(__name__)

_HEX = re.compile(r"[a-f0-9]{64}")  # a marker's name: its blob's digest


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform lets you open a directory
        fsync_file(path)


def boot_id() -> str:
    """This boot's id (Linux); elsewhere "" which no marker matches, so every marker of a dead process counts as
    from an earlier boot and its blob is re-hashed (safe, only slower)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_unsynced(marker: Path, temp: Path) -> None:
    """A durable note at ``marker``, made before a blob's rename, that its bytes may not be on disk yet (two small
    fsyncs: milliseconds, where the blob's own fsync takes as long as the disk needs to write it). Written to the
    new file ``temp`` and renamed over ``marker``: whatever is at that predictable name (a symlink someone planted)
    is replaced, never written through."""
    marker.parent.mkdir(exist_ok=True)  # made when first needed: a read-only cache of an older version opens
    try:
        write_new(temp, f"{boot_id()} {os.getpid()}\n".encode(), sync=os.fsync)
        os.replace(temp, marker)
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(marker.parent)


def recover_unsynced(markers: Path, blob_path: Callable[[str], Path],
                     discard_linking: Callable[[set[tuple[int, int]]], None]) -> None:
    """Settle the unsynced markers a process left (killed, or gone before its background sync ended): from this
    boot the bytes are in the page cache, so fsync them; from an earlier boot (a power loss or crash came first)
    re-hash the blob and delete it if torn, then ``discard_linking`` its (device, inode): the model and config
    directories that link it hold the same torn bytes, and the next fetch downloads and builds them again. A
    marker of a live process is its own business."""
    try:
        entries = sorted(markers.iterdir())
    except FileNotFoundError:  # the common case: one failed lookup
        return
    torn: set[tuple[int, int]] = set()
    for path in entries:
        try:
            boot, pid = path.read_text().split()
        except (OSError, ValueError):
            boot, pid = "", "0"
        if not _HEX.fullmatch(path.name):
            continue
        digest = f"sha256:{path.name}"
        this_boot = boot != "" and boot == boot_id()
        if this_boot and pid.isdigit() and _alive(int(pid)):
            continue
        blob = blob_path(digest)
        if this_boot:  # the bytes are in the page cache: synced in the background, not on this command's path
            if blob.exists():
                background_sync().submit(blob, path)
            continue
        with contextlib.suppress(FileNotFoundError):
            if file_sha256(blob) != digest:
                log.warning("blob %s was torn by a crash before it reached the disk: deleted", digest)
                found = blob.stat()
                torn.add((found.st_dev, found.st_ino))
                blob.unlink()
        with contextlib.suppress(OSError):  # a read-only cache: its blobs were checked, the marker may stay
            path.unlink(missing_ok=True)
    if torn:
        discard_linking(torn)


class BackgroundSync:
    """One daemon thread that fsyncs blobs after their rename, then drops their unsynced markers. It starts only
    once no download has run for SETTLE seconds: an fsync while bytes still arrive competes with them for the disk,
    and a process cannot exit while one of its threads is inside fsync. A normal exit does not wait for it: what is
    left is handed to a detached process (``_hand_over``), so that a command returns once its model is ready; a
    killed process leaves the markers, and the next Store to open settles them (recover_unsynced)."""

    SETTLE = 2.0  # seconds; a CLI fetch exits before that, a long-lived process (vLLM) syncs after its downloads

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Path, Path]] = queue.Queue()
        self._pending: dict[Path, Path] = {}  # marker -> blob, submitted and not synced yet
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._downloads = 0  # downloads running now (``downloading``)
        self._quiet_since = time.monotonic()
        self._urgent = False  # ``wait`` was called: sync now, quiet or not
        self._idle = threading.Event()
        self._idle.set()
        threading.Thread(target=self._run, name="oci-crane-fsync", daemon=True).start()
        atexit.register(self._hand_over)

    def submit(self, blob: Path, marker: Path) -> None:
        with self._lock:
            if marker in self._pending:
                return
            self._pending[marker] = blob
            self._idle.clear()
        self._queue.put((blob, marker))

    @contextlib.contextmanager
    def downloading(self) -> Iterator[None]:
        """Around a download: the fsyncs wait for it (and SETTLE seconds more)."""
        with self._lock:
            self._downloads += 1
        try:
            yield
        finally:
            with self._changed:
                self._downloads -= 1
                self._quiet_since = time.monotonic()
                self._changed.notify_all()

    def _hand_over(self) -> None:
        """At exit: the blobs not synced yet go to a detached Python process that syncs them and drops their
        markers (if it dies too, the markers stay for the next Store to settle)."""
        with self._lock:
            pending = [str(each) for pair in self._pending.items() for each in (pair[1], pair[0])]
            self._pending.clear()
        if not pending:
            return
        import subprocess
        import sys

        with contextlib.suppress(OSError):
            subprocess.Popen([sys.executable, "-c", _SYNC_LATER, *pending], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                             close_fds=True)

    def wait(self, timeout: float | None = None) -> bool:
        """True once every submitted blob is synced (tests, and callers that want durability now: no settling)."""
        with self._changed:
            self._urgent = True
            self._changed.notify_all()
        return self._idle.wait(timeout)

    def _wait_for_quiet(self) -> None:
        with self._changed:
            while not self._urgent:
                left = None if self._downloads else self._quiet_since + self.SETTLE - time.monotonic()
                if left is not None and left <= 0:
                    return
                self._changed.wait(left)

    def _run(self) -> None:
        while True:
            blob, marker = self._queue.get()
            self._wait_for_quiet()
            try:
                fsync_file(blob)
                fsync_dir(blob.parent)
                marker.unlink(missing_ok=True)
            except OSError as exc:  # the marker stays: the next Store settles it
                log.debug("background fsync of %s failed: %s", blob, exc)
            with self._lock:
                self._pending.pop(marker, None)
                if not self._pending:
                    self._idle.set()


# The detached syncer's whole program (argv: blob marker blob marker ...): standard library only, quick to start.
_SYNC_LATER = """
import os, sys
args = sys.argv[1:]
for blob, marker in zip(args[::2], args[1::2]):
    try:
        fd = os.open(blob, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fd = os.open(os.path.dirname(blob), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(marker)
    except OSError:
        pass
"""


@functools.cache
def background_sync() -> BackgroundSync:
    return BackgroundSync()
