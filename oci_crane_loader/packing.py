"""What both writers (formats/dmr_pack.py, formats/modelpack_pack.py) share: which files of a model directory
are packed, its config.json, the times written into documents, and deterministic tars.

Hidden files and directories (``.git/``, ``.cache/``) and Python bytecode are left out; symlinks are followed when
they resolve inside the directory and refused when not. The same directory always packs to the same digests:
times come from SOURCE_DATE_EPOCH or the files' mtimes, never the clock.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidModelError

# Python bytecode is a by-product of running the model's code, never part of the model (modctl skips it too).
_SKIPPED_DIRS = {"__pycache__"}
_SKIPPED_SUFFIXES = (".pyc", ".pyo")


def collect_files(model_dir: Path) -> list[str]:
    """The files to pack: POSIX paths relative to ``model_dir``, sorted.

    Hidden files and directories (``.git/``, ``.cache/``, ``.gitattributes``) and Python bytecode are skipped.
    A symlink is followed when it resolves inside the directory (its target's bytes are packed under the link's
    name); one that escapes the directory, dangles or loops is refused with InvalidModelError."""
    root = model_dir.resolve()
    found: list[str] = []

    def walk(directory: Path, prefix: str, active: frozenset[Path]) -> None:
        with os.scandir(directory) as entries:
            names = sorted(entry.name for entry in entries)
        for name in names:
            if name.startswith(".") or name in _SKIPPED_DIRS or name.endswith(_SKIPPED_SUFFIXES):
                continue
            relative = f"{prefix}{name}"
            if "\\" in name or "\n" in name:
                raise InvalidModelError(f"{model_dir}/{relative}: a file name with a backslash or newline",
                                        "rename the file: readers refuse such paths")
            path = directory / name
            if path.is_symlink():
                _check_link(model_dir, root, path, relative)
            if path.is_dir():
                real = path.resolve()
                if real in active:
                    raise InvalidModelError(f"{model_dir}/{relative} is a symlink loop (it points at its own parent)",
                                            "remove the link")
                walk(path, f"{relative}/", active | {real})
            elif path.is_file():
                found.append(relative)
            # sockets, FIFOs and devices are not model files: left out

    if not root.is_dir():
        raise InvalidModelError(f"{model_dir} is not a directory",
                                "pass the model directory (the one holding config.json and the .safetensors files)")
    walk(root, "", frozenset({root}))
    return sorted(found)


def _check_link(model_dir: Path, root: Path, path: Path, relative: str) -> None:
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # dangling (FileNotFoundError) or a loop (RuntimeError before 3.13)
        raise InvalidModelError(f"{model_dir}/{relative} is a broken symlink (-> {os.readlink(path)})",
                                "fix or remove the link") from exc
    if target != root and not target.is_relative_to(root):
        raise InvalidModelError(
            f"{model_dir}/{relative} is a symlink to {target}, outside the model directory",
            "push a directory that holds the files themselves: copy it with `cp -rL SRC DST` (a Hugging Face "
            "cache snapshot links into ../../blobs: use `huggingface-cli download REPO --local-dir DIR`)")


def model_files(model_dir: Path) -> list[str]:
    """Relative paths, config and tokenizer files first, then weights, each group sorted by path."""
    return sorted(collect_files(model_dir), key=lambda name: (name.endswith(".safetensors"), name))


@dataclass(frozen=True)
class SourceTimes:
    """The times a pack writes, from SOURCE_DATE_EPOCH (read once per pack) or the files' mtimes."""

    epoch: int | None  # SOURCE_DATE_EPOCH when set: it also replaces every file's own mtime
    newest: int  # the newest mtime among the files

    @classmethod
    def read(cls, model_dir: Path, files: list[str]) -> SourceTimes:
        explicit = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
        epoch = None
        if explicit:
            try:
                epoch = int(explicit)
            except ValueError:
                raise InvalidModelError(
                    f"SOURCE_DATE_EPOCH={explicit!r} is not a whole number of seconds",
                    "set it to a Unix time, e.g. SOURCE_DATE_EPOCH=$(date +%s), or unset it") from None
        return cls(epoch, max((int((model_dir / name).stat().st_mtime) for name in files), default=0))

    @property
    def created(self) -> str:
        """The artifact's creation time: SOURCE_DATE_EPOCH if set (reproducible builds), else the newest mtime."""
        return timestamp(self.epoch if self.epoch is not None else self.newest)


def timestamp(epoch: int) -> str:
    """RFC 3339 in UTC, as Go's time.Time marshals a whole second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def read_hf_config(model_dir: Path) -> dict[str, Any] | None:
    """The model's config.json (Hugging Face's), None where there is none; anything but a JSON object is refused."""
    path = model_dir / "config.json"
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidModelError(f"{path} is not valid JSON ({exc})",
                                "fix config.json (python -m json.tool config.json shows where)") from exc
    if not isinstance(document, dict):
        raise InvalidModelError(f"{path} is not a JSON object", "fix config.json")
    return document


def deterministic_tar(model_dir: Path, names: list[str]) -> bytes:
    """Sorted, zero mtimes and owners, so the same directory gives the same digest."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(names):
            info = tar.gettarinfo(model_dir / name, arcname=name)
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
            with open(model_dir / name, "rb") as handle:
                tar.addfile(info, handle)
    return buffer.getvalue()
