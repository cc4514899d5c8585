"""KitOps ModelKits (`kit pack`): the Kitfile as JSON config, one layer per Kitfile entry.

Each tar layer holds its entry's files under paths relative to the Kitfile's directory (``model/config.json``), so
all layers extract into one tree; the model directory is the one holding config.json. ModelKits packed before
KitOps 0.5 carry no layer digests in the Kitfile and name tar entries from the entry's parent directory: those
extract into that directory, as ``kit unpack`` does.
"""

from __future__ import annotations

import posixpath
import re

from pydantic import Field

from ..errors import UnsupportedFormatError
from ..oci import TITLE, Descriptor, Document, Manifest, parse_document
from ..paths import safe_relative_path
from .modelpack import FILEPATH as FILEPATH
from .plan import Action, LayerPlan, Plan

CONFIG = "application/vnd.kitops.modelkit.config.v1+json"
ARTIFACT_TYPE = "application/vnd.kitops.modelkit.manifest.v1+json"
LAYER_SUBTYPE = "ml.kitops.modelkit.layer-subtype"
PROMPT = "prompt"

# application/vnd.kitops.modelkit.<kind>.v1.<tar|raw>[+gzip|+gzip-fastest|+zstd], as kit's mediatype package parses
LAYER_TYPE = re.compile(r"^application/vnd\.kitops\.modelkit\.(\w+)\.v1\.(tar|raw)(?:\+([\w-]+))?$")
KINDS = {"model", "modelpart", "dataset", "code", "docs"}
LARGE_KINDS = {"model", "modelpart", "dataset"}


class LayerEntry(Document):
    """Any Kitfile section that became a layer: its path, and (KitOps >= 0.5) the layer's digest."""

    path: str | None = None
    name: str | None = None
    digest: str | None = None
    diff_id: str | None = Field(default=None, alias="diffId")


class DataSet(LayerEntry):
    remote_path: str | None = Field(default=None, alias="remotePath")


class Model(LayerEntry):
    parts: list[LayerEntry] = Field(default_factory=list)


class Kitfile(Document):
    manifest_version: str | None = Field(default=None, alias="manifestVersion")
    package: dict[str, object] | None = None
    model: Model | None = None
    code: list[LayerEntry] = Field(default_factory=list)
    datasets: list[DataSet] = Field(default_factory=list)
    docs: list[LayerEntry] = Field(default_factory=list)
    prompts: list[LayerEntry] = Field(default_factory=list)


def claims(manifest: Manifest) -> bool:
    return manifest.config.media_type == CONFIG or manifest.artifact_type == ARTIFACT_TYPE


class _Entries:
    """Kitfile entries in the order `kit pack` writes their layers, handed out per layer kind (as kit unpack
    matches them: a second model layer is a model part)."""

    def __init__(self, kitfile: Kitfile) -> None:
        model = kitfile.model
        self.model: list[LayerEntry] = [model] if model is not None and model.path else []
        self.queues: dict[str, list[LayerEntry]] = {
            "modelpart": list(model.parts) if model is not None else [],
            "code": list(kitfile.code),
            "prompt": list(kitfile.prompts),
            "dataset": [entry for entry in kitfile.datasets if not entry.remote_path],
            "docs": list(kitfile.docs),
        }

    def next(self, kind: str, layer: Descriptor) -> LayerEntry | None:
        if kind == "model" and self.model:
            return self.model.pop(0)
        if kind == "model":
            kind = "modelpart"
        elif kind == "code" and layer.annotations.get(LAYER_SUBTYPE) == PROMPT:
            kind = "prompt"
        queue = self.queues.get(kind, [])
        return queue.pop(0) if queue else None


def recognise(manifest: Manifest, config: bytes) -> Plan | None:
    if not claims(manifest):
        return None
    kitfile = parse_document(Kitfile, config, "KitOps Kitfile config")
    digests = {entry.digest for entry in _all_entries(kitfile) if entry.digest}
    entries = _Entries(kitfile)
    layers: list[LayerPlan] = []
    skipped: list[Descriptor] = []
    for index, layer in enumerate(manifest.layers):
        where = f"layer {index} ({layer.media_type})"
        match = LAYER_TYPE.match(layer.media_type)
        if match is None or match[1] not in KINDS:
            skipped.append(layer)  # e.g. an MCP bundle
            continue
        kind, packing, compression = match[1], match[2], match[3]
        entry = entries.next(kind, layer)
        weights = kind in LARGE_KINDS
        if packing == "raw":
            if compression not in (None, "none"):
                raise UnsupportedFormatError(
                    f"{where}: a KitOps raw layer compressed with {compression} is not supported",
                    "re-pack the ModelKit with `kit pack --compression none` (or tar layers)")
            annotated = layer.annotations.get(FILEPATH) or layer.annotations.get(TITLE) or (entry and entry.path)
            if not annotated:
                skipped.append(layer)
                continue
            layers.append(LayerPlan(layer, Action.FILE, safe_relative_path(annotated, where), weights))
            continue
        into = None
        if layer.digest not in digests and entry is not None and not entry.digest and entry.path:
            parent = posixpath.dirname(posixpath.normpath(entry.path))  # a ModelKit from before KitOps 0.5
            into = safe_relative_path(parent, where) if parent else None
        layers.append(LayerPlan(layer, Action.TAR, into, weights))
    if kitfile.model is not None and kitfile.model.path and not _has_kind(manifest, "model"):
        raise UnsupportedFormatError(
            f"this ModelKit's model is another ModelKit ({kitfile.model.path}), which it does not contain",
            f"fetch {kitfile.model.path} itself")
    return Plan("kitops", layers, skipped, find_root=True)


def _all_entries(kitfile: Kitfile) -> list[LayerEntry]:
    found: list[LayerEntry] = [*kitfile.code, *kitfile.datasets, *kitfile.docs, *kitfile.prompts]
    if kitfile.model is not None:
        found += [kitfile.model, *kitfile.model.parts]
    return found


def _has_kind(manifest: Manifest, kind: str) -> bool:
    return any((match := LAYER_TYPE.match(layer.media_type)) is not None and match[1] == kind
               for layer in manifest.layers)
