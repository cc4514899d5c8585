"""Format recognition: manifest + config in, one Plan out (which layer becomes which file(s)).

Each format module exposes ``recognise(manifest, config) -> Plan | None``; the first that claims an artifact
wins. Adding a format means adding a module and listing it in ``_RECOGNISERS``.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from enum import Enum

from ..errors import InvalidModelError, UnsupportedFormatError
from ..oci import Descriptor, Manifest


class Action(str, Enum):
    FILE = "file"  # the blob is the file: hard-linked into place at ``path``
    TAR = "tar"  # a tar archive (plain, gzip or zstd: sniffed), extracted under ``path`` (None: the root)
    IMAGE = "image"  # a container image layer: extracted in manifest order over the earlier ones, whiteouts applied
    SHARD = "shard"  # an unnamed safetensors shard: named after download (DMR v0.1), see materialize.py


@dataclass(frozen=True)
class LayerPlan:
    descriptor: Descriptor
    action: Action
    path: str | None = None  # FILE: the file's relative path; TAR: the directory to extract into (None: root)
    weights: bool = False  # large: downloaded in parallel, never needed by `inspect`


@dataclass(frozen=True)
class Plan:
    format: str
    layers: list[LayerPlan]
    skipped: list[Descriptor] = field(default_factory=list)
    # The model directory is the shallowest directory holding config.json (KitOps, container images), not the
    # root of what the layers hold; the user may name it instead (--subpath).
    find_root: bool = False

    @property
    def streamable(self) -> bool:
        """Weights that are whole files (one blob each) can be read while later blobs download; weights inside
        tar or image layers exist only once their archive is extracted, next to the config they may carry."""
        return not self.find_root and all(layer.action in (Action.FILE, Action.SHARD) for layer in self.weight_layers)

    @property
    def weight_layers(self) -> list[LayerPlan]:
        return [layer for layer in self.layers if layer.weights]

    @property
    def small_layers(self) -> list[LayerPlan]:
        return [layer for layer in self.layers if not layer.weights]


# Deeper or longer paths than any model or image holds; past them mkdir recurses too deep or the OS refuses the name.
MAX_PATH_DEPTH = 256
MAX_NAME_BYTES = 255


def safe_relative_path(raw: str, where: str) -> str:
    """A layer's or tar entry's path, normalised; anything absolute or escaping the model directory is refused,
    and so is a name the filesystem cannot take (not UTF-8, a component over 255 bytes, over 256 levels deep)."""
    text = raw
    if not text or "\x00" in text or text.startswith("/") or "\\" in text or (len(text) > 1 and text[1] == ":"):
        raise InvalidModelError(f"{where}: unsafe path {raw!r} (absolute, empty or with backslashes)",
                                "re-push the artifact with relative file paths")
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate from a JSON \ud800 escape: no file system can name it
        raise InvalidModelError(f"{where}: path {raw!r} is not valid UTF-8",
                                "re-push the artifact with UTF-8 file names") from None
    normal = posixpath.normpath(text)
    if normal in (".", "") or normal == ".." or normal.startswith("../"):
        raise InvalidModelError(f"{where}: path {raw!r} escapes the model directory",
                                "re-push the artifact with relative file paths")
    parts = [part.encode() for part in normal.split("/")]
    if len(parts) > MAX_PATH_DEPTH or max(len(part) for part in parts) > MAX_NAME_BYTES:
        shown = raw if len(raw) <= 80 else raw[:80] + "..."
        raise InvalidModelError(f"{where}: path {shown!r} is over {MAX_PATH_DEPTH} directories deep or has a "
                                f"name over {MAX_NAME_BYTES} bytes", "re-push the artifact with shorter paths")
    return normal


def check_unique_paths(layers: list[LayerPlan]) -> None:
    seen: dict[str, str] = {}
    for layer in layers:
        if layer.path is None or layer.action is not Action.FILE:
            continue
        if layer.path in seen:
            raise InvalidModelError(
                f"two layers ({seen[layer.path][:19]}, {layer.descriptor.digest[:19]}) both write {layer.path!r}",
                "re-push the artifact with one layer per file")
        seen[layer.path] = layer.descriptor.digest


def recognise(manifest: Manifest, config: bytes) -> Plan:
    from . import dmr, image, kitops, modelpack, ollama, oras

    # Specific formats first (decided by config media type or artifactType); ORAS claims layers named by a title
    # annotation; plain images come last.
    for recogniser in (dmr.recognise, modelpack.recognise, kitops.recognise, ollama.recognise, oras.recognise,
                       image.recognise):
        plan = recogniser(manifest, config)
        if plan is not None:
            check_unique_paths(plan.layers)
            return plan
    found = sorted({manifest.config.media_type, *(layer.media_type for layer in manifest.layers)})
    raise UnsupportedFormatError(
        f"unrecognised artifact (artifactType {manifest.artifact_type!r}); media types found: {', '.join(found)}")
