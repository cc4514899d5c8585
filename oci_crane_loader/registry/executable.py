"""Which OS and CPU an executable was built for, read from its header (this host's: platforms.host_platform).

Enough of ELF and Mach-O to tell a crane built for another machine (a wheel installed on the wrong platform,
a binary copied from a laptop) from one that can run here, and to say so in `doctor` and in warnings.
"""

from __future__ import annotations

import struct
from pathlib import Path

# ELF e_machine values (System V ABI) and Mach-O cputype values (mach/machine.h), as Go's GOARCH names.
_ELF_MACHINES = {0x03: "386", 0x28: "arm", 0x3E: "amd64", 0xB7: "arm64", 0xF3: "riscv64", 0x15: "ppc64",
                 0x16: "s390x"}
_MACHO_CPUS = {0x01000007: "amd64", 0x0100000C: "arm64", 7: "386", 12: "arm"}
_MACHO_MAGICS = {b"\xcf\xfa\xed\xfe": "<", b"\xce\xfa\xed\xfe": "<", b"\xfe\xed\xfa\xcf": ">", b"\xfe\xed\xfa\xce": ">"}


def executable_platform(path: str | Path) -> str | None:
    """GOOS/GOARCH of an ELF (``linux/...``) or Mach-O (``darwin/...``) file; None for scripts and the unknown."""
    try:
        with open(path, "rb") as file:
            head = file.read(20)
    except OSError:
        return None
    if head[:4] == b"\x7fELF" and len(head) >= 20:
        order = "<" if head[5] == 1 else ">"  # EI_DATA: 1 little endian, 2 big endian
        (machine,) = struct.unpack(order + "H", head[18:20])
        if machine == 0x15 and order == "<":  # EM_PPC64 is both of Go's ppc64 (big) and ppc64le
            return "linux/ppc64le"
        return f"linux/{_ELF_MACHINES.get(machine, f'elf-machine-{machine:#x}')}"
    macho_order = _MACHO_MAGICS.get(head[:4])
    if macho_order is not None and len(head) >= 8:
        (cputype,) = struct.unpack(macho_order + "i", head[4:8])
        return f"darwin/{_MACHO_CPUS.get(cputype, f'cputype-{cputype:#x}')}"
    if head[:4] == b"\xca\xfe\xba\xbe":  # a universal (fat) Mach-O: several CPUs in one file
        return "darwin/universal"
    return None
