"""Download progress on stderr: one updating line on a terminal, one line per finished blob otherwise."""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # for annotations only: the command line imports this without pydantic
    from .oci import Descriptor


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    raise AssertionError("unreachable")


class Progress:
    def __init__(self, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.interactive = enabled and self.stream.isatty()
        self._lock = threading.Lock()
        self._total = self._done = self._blobs = self._finished = 0
        self._started = time.monotonic()
        self._last_draw = 0.0

    def start(self, total: int, blobs: int) -> None:
        with self._lock:
            self._total, self._blobs, self._done, self._finished = total, blobs, 0, 0
            self._started = time.monotonic()

    def advance(self, delta: int) -> None:
        with self._lock:
            self._done += delta
            if self.interactive and time.monotonic() - self._last_draw > 0.2:
                self._draw()

    def skipped(self, size: int) -> None:
        with self._lock:
            self._done += size
            self._finished += 1

    def finished(self, descriptor: Descriptor) -> None:
        with self._lock:
            self._finished += 1
            if self.interactive:
                self._draw()
            elif self.enabled and self._blobs:  # the config blob, fetched before planning, is not worth a line
                print(f"fetched {descriptor.digest[:19]} ({human(descriptor.size)}) [{self._finished}/{self._blobs}]",
                      file=self.stream, flush=True)

    def _draw(self) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        line = (f"\r{self._finished}/{self._blobs} blobs  {human(self._done)} / {human(self._total)}  "
                f"{human(self._done / elapsed)}/s ")
        self.stream.write(line)
        self.stream.flush()
        self._last_draw = time.monotonic()

    def close(self) -> None:
        if self.interactive and self._blobs:
            self.stream.write("\n")
            self.stream.flush()
