"""What a format recognises in an artifact: which layer becomes which file(s) under the model directory."""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import json
from dataclasses import dataclass, field
from enum import Enum

from ..errors import InvalidModelError, UsageError
from ..oci import Descriptor

# Layers larger than this are fetched with the weights (in parallel, after config and tokenizer) and are never
# downloaded by `inspect`, where the format cannot tell by media type (image layers mix files; ORAS names no kind).
WEIGHTS_THRESHOLD = 16 << 20


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


def filter_plan(plan: Plan, include: tuple[str, ...], exclude: tuple[str, ...]) -> Plan:
    """Only the file layers whose path (as `oci-crane inspect` lists it) matches an ``include`` pattern (all, when
    none) and no ``exclude`` pattern, fnmatch-style as `hf download` does. Small archives (config, tokenizer) are
    kept whole: their files are named only inside. Weights named only inside an archive or once downloaded
    (unnamed shards, image layers) cannot be chosen by name: refused, rather than downloading what was filtered
    out."""
    unnamed = [layer for layer in plan.layers if layer.path is None or layer.action is not Action.FILE]
    if plan.find_root or any(layer.weights for layer in unnamed):
        raise UsageError(f"--include/--exclude choose files by name, but this {plan.format} artifact holds weights "
                         "named only inside archives or once downloaded",
                         "fetch it without --include/--exclude (`oci-crane inspect REF` lists its layers)")

    def wanted(layer: LayerPlan) -> bool:
        if layer.path is None or layer.action is not Action.FILE:
            return True  # a small archive, kept whole
        matches = functools.partial(fnmatch.fnmatchcase, layer.path)
        return (not include or any(map(matches, include))) and not any(map(matches, exclude))

    kept = [layer for layer in plan.layers if wanted(layer)]
    if not any(layer.action is Action.FILE for layer in kept):
        raise UsageError(f"--include/--exclude match none of the {plan.format} artifact's files",
                         "`oci-crane inspect REF` lists them; quote the patterns so that the shell leaves them alone")
    return dataclasses.replace(plan, layers=kept)


def filter_key(include: tuple[str, ...], exclude: tuple[str, ...]) -> str | None:
    """The filters as one text (pattern order aside), naming the model directory of a filtered fetch."""
    if not include and not exclude:
        return None
    return json.dumps({"include": sorted(set(include)), "exclude": sorted(set(exclude))})
