"""CNCF ModelPack artifacts (modctl, KitOps --use-model-pack, aikit/KAITO, ramalama), and the older CNAI names.

Layers are ``application/vnd.cncf.model.<kind>.v1.<raw|tar|tar+gzip|tar+zstd>``: a ``.raw`` blob is the file at
its ``org.cncf.model.filepath`` annotation; a tar carries its paths in its entry names (the annotation may name a
category such as "config" rather than a path, so it is not used).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field

from ..errors import UnsupportedFormatError
from ..oci import OCI_EMPTY, TITLE, Descriptor, Document, Manifest, parse_document
from ..paths import safe_relative_path
from .plan import Action, LayerPlan, Plan

ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
CONFIG = "application/vnd.cncf.model.config.v1+json"
LEGACY_ARTIFACT_TYPE = "application/vnd.cnai.model.manifest.v1+json"
LEGACY_CONFIG = "application/vnd.cnai.model.config.v1+json"
ARTIFACT_TYPES = {ARTIFACT_TYPE, LEGACY_ARTIFACT_TYPE}
CONFIG_TYPES = {CONFIG, LEGACY_CONFIG}

# The raw layers we write (modelpack/model-spec specs-go/v1/mediatype.go); any kind and packing is read.
WEIGHT_RAW = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_CONFIG_RAW = "application/vnd.cncf.model.weight.config.v1.raw"
CODE_RAW = "application/vnd.cncf.model.code.v1.raw"
DOC_RAW = "application/vnd.cncf.model.doc.v1.raw"

# Layer annotations (specs-go/v1/annotations.go). Docker Model Runner v0.2 and KitOps use the first two too.
FILEPATH = "org.cncf.model.filepath"
FILE_METADATA = "org.cncf.model.file.metadata+json"
MEDIATYPE_UNTESTED = "org.cncf.model.file.mediatype.untested"
LEGACY_FILEPATH = "org.cnai.model.filepath"

# application/vnd.cncf.model.weight.v1.raw, ...weight.config.v1.tar+gzip, ...doc.v1.tar+zstd; cnai the same.
LAYER_TYPE = re.compile(
    r"^application/vnd\.(?:cncf|cnai)\.model\.([a-z]+(?:\.[a-z]+)*)\.v1\.(raw|tar(?:\+gzip|\+zstd)?)$")
WEIGHT = "weight"
LARGE_KINDS = {WEIGHT, "dataset"}  # not needed to describe the model: `inspect` and vLLM's config step skip them


class ModelDescriptor(Document):
    created_at: str | None = Field(default=None, alias="createdAt")
    authors: list[str] | None = None
    vendor: str | None = None
    family: str | None = None
    name: str | None = None
    version: str | None = None
    title: str | None = None
    description: str | None = None
    licenses: list[str] | None = None


class ModelConfig(Document):
    architecture: str | None = None
    format: str | None = None
    param_size: str | int | None = Field(default=None, alias="paramSize")
    precision: str | None = None
    quantization: str | None = None
    capabilities: dict[str, Any] | None = None


class ModelFS(Document):
    type: str | None = None
    diff_ids: list[str] | None = Field(default=None, alias="diffIds")


class ModelPackConfig(Document):
    """The whole config is optional in practice: KAITO/aikit push ``{}``. Fields in the order of Go's v1.Model,
    as modctl marshals it (and our writer dumps it)."""

    descriptor: ModelDescriptor = Field(default_factory=ModelDescriptor)
    modelfs: ModelFS = Field(default_factory=ModelFS)
    config: ModelConfig = Field(default_factory=ModelConfig)


class FileMetadata(Document):
    """``org.cncf.model.file.metadata+json``: a layer's file as a tar header would describe it (Go's FileMetadata,
    field order kept). Written, not read: the blob itself is the file."""

    name: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime: str
    typeflag: int


def claims(manifest: Manifest) -> bool:
    return manifest.artifact_type in ARTIFACT_TYPES or manifest.config.media_type in CONFIG_TYPES


def layer_path(raw: str, where: str) -> str:
    """modctl writes ``../name`` when it packages from an absolute path: one leading ``../`` is dropped; anything
    that still escapes (``../../x``, ``a/../../x``) is refused."""
    text = raw[3:] if raw.startswith("../") else raw
    return safe_relative_path(text, where)


def _annotated_path(layer: Descriptor) -> str | None:
    for key in (FILEPATH, LEGACY_FILEPATH, TITLE):
        value = layer.annotations.get(key)
        if value:
            return value
    return None


def recognise(manifest: Manifest, config: bytes) -> Plan | None:
    if not claims(manifest):
        return None
    what = "ModelPack config"
    empty = not config.strip() and manifest.config.media_type == OCI_EMPTY
    properties = ModelPackConfig() if empty else parse_document(ModelPackConfig, config, what)
    layers: list[LayerPlan] = []
    skipped: list[Descriptor] = []
    weight_names: list[str] = []
    for index, layer in enumerate(manifest.layers):
        where = f"layer {index} ({layer.media_type})"
        match = LAYER_TYPE.match(layer.media_type)
        if match is None:
            skipped.append(layer)  # e.g. a Kitfile KitOps adds beside the ModelPack layers
            continue
        kind, packing = match[1], match[2]
        annotated = _annotated_path(layer)
        weights = kind in LARGE_KINDS
        if kind == WEIGHT and annotated:
            weight_names.append(annotated)
        if packing == "raw":
            if not annotated:
                skipped.append(layer)  # a raw blob without a name cannot be placed
                continue
            layers.append(LayerPlan(layer, Action.FILE, layer_path(annotated, where), weights))
        else:
            layers.append(LayerPlan(layer, Action.TAR, None, weights))
    _refuse_gguf_only(weight_names, properties)
    return Plan("modelpack", layers, skipped)


def _refuse_gguf_only(weight_names: list[str], properties: ModelPackConfig) -> None:
    names = [name.lower() for name in weight_names]
    if any(name.endswith(".safetensors") for name in names):
        return
    gguf_names = bool(names) and all(name.endswith(".gguf") for name in names)
    gguf_format = (properties.config.format or "").lower() == "gguf"
    if gguf_names or gguf_format:
        raise UnsupportedFormatError(
            "this ModelPack artifact holds GGUF weights, which vLLM's safetensors loader cannot serve",
            "run it with llama.cpp, ollama or `docker model run`, or push a safetensors build of the model")
