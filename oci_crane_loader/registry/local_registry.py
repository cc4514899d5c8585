"""A registry on 127.0.0.1 for the demo and the tests: `crane registry serve`, its log drained and kept."""

from __future__ import annotations

import contextlib
import queue
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .. import errors
from .crane import start_crane


@dataclass
class LocalRegistry:
    """A running `crane registry serve`. ``log()`` returns every request line it has logged so far."""

    host: str
    process: subprocess.Popen[bytes]
    lines: list[str]

    def log(self) -> str:
        return "\n".join(self.lines)

    def blob_downloads(self) -> list[str]:
        """The digest of every blob GET so far, in order (pushes only HEAD blobs, so they do not count)."""
        return re.findall(r"\bGET /v2/\S+/blobs/(sha256:[a-f0-9]{64})", "\n".join(self.lines))


@contextlib.contextmanager
def serve_registry(disk: Path | None = None, startup_timeout: float = 30) -> Iterator[LocalRegistry]:
    """Start `crane registry serve` on 127.0.0.1 (a free port), drain its log, and always stop it."""
    args = ["registry", "serve", "--address", "127.0.0.1:0"]
    if disk is not None:
        disk.mkdir(parents=True, exist_ok=True)  # the registry fails uploads, not start-up, when it is missing
        args += ["--disk", str(disk)]
    process = start_crane(*args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines: list[str] = []
    port: queue.Queue[str] = queue.Queue()

    def drain() -> None:  # an undrained stderr pipe would block the registry once it fills
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            match = re.search(r"serving on port (\d+)", line)
            if match:
                port.put(match[1])

    threading.Thread(target=drain, name="crane-registry-log", daemon=True).start()
    try:
        try:
            number = port.get(timeout=startup_timeout)
        except queue.Empty:
            raise errors.CraneError("`crane registry serve` did not start: " + "; ".join(lines[-5:]),
                                    "check that crane works: oci-crane doctor",
                                    command=["crane", *args]) from None
        yield LocalRegistry(f"127.0.0.1:{number}", process, lines)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
