"""A node's mirror configuration as the tests write it: a registries.conf naming one mirror for one registry."""

from __future__ import annotations

from pathlib import Path


def registries_conf(path: Path, upstream: str, mirror: str | None, *, pull_from_mirror: str = "all",
                    blocked: bool = False) -> dict[str, str]:
    """A registries.conf naming ``mirror`` for ``upstream``; the environment that makes it the one read."""
    mirror_table = (f'[[registry.mirror]]\nlocation = "{mirror}"\ninsecure = true\n'
                    f'pull-from-mirror = "{pull_from_mirror}"\n') if mirror else ""
    path.write_text(f'[[registry]]\nprefix = "{upstream}"\nlocation = "{upstream}"\ninsecure = true\n'
                    f'blocked = {"true" if blocked else "false"}\n{mirror_table}')
    return {"CONTAINERS_REGISTRIES_CONF": str(path), "OCI_CRANE_HOSTS_DIR": str(path.parent / "no-certs.d")}
