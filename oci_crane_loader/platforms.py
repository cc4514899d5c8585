"""Which platform this host is, as Go names it (GOOS/GOARCH): for telling whether a crane binary can run here, and
for choosing an image index's child. One answer, so the two never disagree about the CPU."""

from __future__ import annotations

import platform

# platform.machine() as Go's GOARCH names it (also the OCI image-spec's architecture values).
_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i686": "386", "i386": "386",
           "armv7l": "arm", "riscv64": "riscv64", "ppc64le": "ppc64le", "ppc64": "ppc64", "s390x": "s390x"}


def host_platform(os: str | None = None) -> str:
    """This machine as GOOS/GOARCH, e.g. ``linux/amd64`` or ``darwin/arm64``; ``os`` names another OS on this CPU
    (``"linux"`` for an image index: models run in linux containers, also from macOS)."""
    machine = platform.machine().lower()
    return f"{os or platform.system().lower()}/{_GOARCH.get(machine, machine)}"
