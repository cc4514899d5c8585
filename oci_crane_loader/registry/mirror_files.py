"""Where a node's mirror configuration lives, and whether any of it is there.

containers/image's lookup order for registries.conf (``$CONTAINERS_REGISTRIES_CONF``, else
``$REGISTRIES_CONFIG_PATH``, else ``~/.config/containers/registries.conf`` when it exists, else
``/etc/containers/registries.conf``; then the drop-in directories) and containerd's hosts roots
(``OCI_CRANE_HOSTS_DIR`` as settings.py parses it, default ``/etc/containerd/certs.d``). mirrors.py reads what
these name; sources.py asks ``present()`` first, so that a fetch on a node with no mirror configuration pays a few
``stat`` calls, never the TOML parser. Standard library only, nothing parsed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOSTS_DIR = "/etc/containerd/certs.d"


@dataclass(frozen=True)
class MirrorFiles:
    main: Path  # the registries.conf in force
    main_must_exist: bool  # chosen by a variable or found in the user's home: its absence is an error
    drop_in_dirs: tuple[Path, ...]  # registries.conf.d directories, in the order their files apply
    hosts_roots: tuple[Path, ...]  # containerd's config_path roots

    def present(self) -> bool:
        """Whether any configuration may be in force: a main file (or one that must exist), a ``*.conf`` drop-in,
        or anything under a containerd root. False means: no mirror, no rewrite, nothing blocked."""
        if self.main_must_exist or self.main.exists():
            return True
        return any(_has_entry(directory, suffix=".conf") for directory in self.drop_in_dirs) or \
            any(_has_entry(root) for root in self.hosts_roots)


def locate(environ: Mapping[str, str], root: Path = Path("/"), hosts_dirs: Sequence[Path] = ()) -> MirrorFiles:
    """The files containers/image and containerd would read on this node; ``root`` stands for ``/`` (tests)."""
    home = Path(environ.get("HOME") or Path.home())
    system_file = root / "etc/containers/registries.conf"
    system_dir = root / "etc/containers/registries.conf.d"
    user_file = home / ".config/containers/registries.conf"
    user_dir = home / ".config/containers/registries.conf.d"
    roots = tuple(hosts_dirs) or (root / DEFAULT_HOSTS_DIR.lstrip("/"),)
    chosen = environ.get("CONTAINERS_REGISTRIES_CONF") or environ.get("REGISTRIES_CONFIG_PATH")
    if chosen:
        return MirrorFiles(Path(chosen), True, (system_dir, user_dir), roots)
    if user_file.exists():
        return MirrorFiles(user_file, True, (user_dir,), roots)
    return MirrorFiles(system_file, False, (system_dir, user_dir), roots)


def _has_entry(directory: Path, suffix: str = "") -> bool:
    """Whether ``directory`` holds an entry (ending in ``suffix``); one that cannot be listed counts, so that
    mirrors.py reports why rather than the fetch silently skipping it."""
    try:
        with os.scandir(directory) as entries:
            return any(entry.name.endswith(suffix) for entry in entries)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
