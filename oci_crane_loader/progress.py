"""Progress on stderr. On a terminal: a bar per file being downloaded and one for the total, with percent, bytes,
rate and ETA, drawn by `rich` (imported only then: `oci-crane --help` and scripts never load it). Elsewhere (a pipe,
CI): one plain line per finished file. Off with --quiet or OCI_CRANE_DISABLE_PROGRESS=1 (the caller decides).

pull.py reports: ``start`` (a batch of blobs, with the file names the plan knows), ``begin`` (a download starts,
in the thread that downloads it), ``advance`` (bytes, from several threads), ``waiting``/``resumed`` (a retry's
wait, counted down on its bar), ``finished``, ``skipped`` (cached), ``close``.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TextIO

from .errors import printable

if TYPE_CHECKING:  # for annotations only: the command line imports this without pydantic
    from .oci import Descriptor

NAME_WIDTH = 40  # longer file names are shown by their end, which tells shards apart


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    raise AssertionError("unreachable")


def short_name(name: str) -> str:
    shown = printable(name)  # names come from the artifact: they cannot drive the terminal
    return shown if len(shown) <= NAME_WIDTH else "..." + shown[-(NAME_WIDTH - 3):]


class Progress:
    def __init__(self, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.interactive = enabled and self.stream.isatty()
        self._lock = threading.Lock()
        self._total = self._blobs = self._finished = 0
        self._names: dict[str, str] = {}  # digest -> the file's path in the model, where the plan knows it
        self._current: dict[int, str] = {}  # thread id -> the digest it downloads (advance names no digest)
        self._tasks: dict[str, Any] = {}  # digest -> its rich task
        self._bars: Any = None  # rich.progress.Progress while a batch is drawn on a terminal
        self._total_task: Any = None

    def name(self, descriptor: Descriptor) -> str:
        """The file's path, or the digest's short form for what is named only once materialised (shards)."""
        return short_name(self._names.get(descriptor.digest) or descriptor.digest[:19])

    def start(self, total: int, blobs: int, names: Mapping[str, str] | None = None) -> None:
        with self._lock:
            self._total, self._blobs, self._finished = total, blobs, 0
            self._names = dict(names or {})
            if self.interactive and blobs and self._bars is None:
                self._bars = _terminal_bars(self.stream)
                self._bars.start()
                self._total_task = self._bars.add_task(f"total ({blobs} files)", total=total)

    def begin(self, descriptor: Descriptor) -> None:
        """A download of ``descriptor`` starts in this thread (called once, before its first byte)."""
        with self._lock:
            self._current[threading.get_ident()] = descriptor.digest
            if self._bars is not None and descriptor.digest not in self._tasks:
                self._tasks[descriptor.digest] = self._bars.add_task(self.name(descriptor), total=descriptor.size)

    def advance(self, delta: int, digest: str | None = None) -> None:
        """``delta`` bytes of ``digest`` (None: of what this thread began) arrived; negative when a retry restarts."""
        with self._lock:
            if self._bars is None:
                return
            task = self._tasks.get(digest or self._current.get(threading.get_ident(), ""))
            if task is not None:
                self._bars.advance(task, delta)
            self._bars.advance(self._total_task, delta)

    def waiting(self, descriptor: Descriptor, seconds: float, why: str) -> None:
        """``descriptor``'s download waits ``seconds`` more before its next try (``why``: a rate limit's
        Retry-After, or a broken stream): on a terminal its bar says so, counting down; elsewhere the warning line
        pull.py logs says it once."""
        with self._lock:
            task = self._tasks.get(descriptor.digest)
            if self._bars is not None and task is not None:
                self._bars.update(task, description=f"{self.name(descriptor)}: {printable(why)}, next try in "
                                                    f"{max(0.0, seconds):.0f} s")

    def resumed(self, descriptor: Descriptor) -> None:
        """The wait is over: the bar is named after its file again."""
        with self._lock:
            task = self._tasks.get(descriptor.digest)
            if self._bars is not None and task is not None:
                self._bars.update(task, description=self.name(descriptor))

    def skipped(self, size: int) -> None:
        with self._lock:
            self._finished += 1
            if self._bars is not None:
                self._bars.advance(self._total_task, size)

    def finished(self, descriptor: Descriptor) -> None:
        with self._lock:
            self._current.pop(threading.get_ident(), None)
            if not (self.enabled and self._blobs):  # the config blob, fetched before planning, is not worth a line
                return
            self._finished += 1
            line = f"fetched {self.name(descriptor)} ({human(descriptor.size)}) [{self._finished}/{self._blobs}]"
            if self._bars is not None:
                task = self._tasks.pop(descriptor.digest, None)
                if task is not None:
                    self._bars.remove_task(task)
                self._bars.console.print(line, markup=False, highlight=False)
            else:
                print(line, file=self.stream, flush=True)

    def close(self) -> None:
        with self._lock:
            if self._bars is not None:
                self._bars.stop()
            self._bars, self._total_task = None, None
            self._tasks.clear()
            self._current.clear()

    @contextlib.contextmanager
    def working(self, doing: str) -> Iterator[None]:
        """A step without byte counts (packing; `crane push` where the OS does not count its reads): a spinner and
        the time elapsed on a terminal, a line when it starts and one when it ends elsewhere."""
        started = time.monotonic()
        if not self.enabled:
            yield
            return
        if self.interactive:
            spinner = _spinner(self.stream)
            spinner.add_task(printable(doing))
            with spinner:
                yield
        else:
            print(f"{printable(doing)} ...", file=self.stream, flush=True)
            yield
        print(f"{printable(doing)}: done in {time.monotonic() - started:.1f}s", file=self.stream, flush=True)

    @contextlib.contextmanager
    def transfer(self, doing: str, total: int) -> Iterator[Callable[[int], None]]:
        """A step whose bytes are counted (`crane push`): on a terminal one bar with percent, bytes, rate and ETA;
        elsewhere the lines of ``working``. Yields the function that takes each delta (capped at ``total``: what
        is counted may include a little more than the payload)."""
        if not self.interactive:
            with self.working(doing):
                yield lambda delta: None
            return
        started = time.monotonic()
        bars = _terminal_bars(self.stream)
        task = bars.add_task(printable(doing), total=total)
        done = 0

        def advance(delta: int) -> None:
            nonlocal done
            step = max(0, min(delta, total - done))
            done += step
            bars.advance(task, step)

        with bars:
            yield advance
            bars.update(task, completed=total)  # done: what crane skipped (blobs the registry had) or sent last
        print(f"{printable(doing)}: done in {time.monotonic() - started:.1f}s", file=self.stream, flush=True)


def _terminal_bars(stream: TextIO) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import Progress as Bars

    return Bars(TextColumn("{task.description}", markup=False), BarColumn(), TaskProgressColumn(),
                DownloadColumn(binary_units=True), TransferSpeedColumn(), TimeRemainingColumn(),
                console=Console(file=stream, highlight=False))


def _spinner(stream: TextIO) -> Any:
    from rich.console import Console
    from rich.progress import Progress as Bars
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    return Bars(SpinnerColumn(), TextColumn("{task.description}", markup=False), TimeElapsedColumn(),
                console=Console(file=stream, highlight=False), transient=True)
