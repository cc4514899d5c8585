"""Docker Model Runner artifacts, config v0.1 (by media type) and v0.2 (one layer per file, path annotated)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ..errors import UnsupportedFormatError
from ..oci import Document, Manifest, parse_document
from ..paths import safe_relative_path
from .modelpack import FILEPATH as FILEPATH  # the CNCF annotation: DMR v0.2 names each file with it too
from .plan import Action, LayerPlan, Plan

CONFIG_V01 = "application/vnd.docker.ai.model.config.v0.1+json"
CONFIG_V02 = "application/vnd.docker.ai.model.config.v0.2+json"
SAFETENSORS = "application/vnd.docker.ai.safetensors"
GGUF = "application/vnd.docker.ai.gguf.v3"
DDUF = "application/vnd.docker.ai.dduf"
VLLM_CONFIG_TAR = "application/vnd.docker.ai.vllm.config.tar"
DIR_TAR = "application/vnd.docker.ai.dir.tar"
LICENSE = "application/vnd.docker.ai.license"
MMPROJ = "application/vnd.docker.ai.mmproj"
CHAT_TEMPLATE = "application/vnd.docker.ai.chat.template.jinja"
MODEL_FILE = "application/vnd.docker.ai.model.file"

TAR_TYPES = {VLLM_CONFIG_TAR, DIR_TAR}
WEIGHT_TYPES = {SAFETENSORS, GGUF, DDUF}
# v0.1 layers that have a fixed name when they carry no filepath annotation.
DEFAULT_NAMES = {MMPROJ: "model.mmproj", CHAT_TEMPLATE: "template.jinja", DDUF: "model.dduf", LICENSE: "LICENSE"}


class ModelProperties(Document):
    format: str | None = None
    quantization: str | None = None
    parameters: str | int | None = None
    architecture: str | None = None
    size: str | int | None = None
    context_size: int | None = None
    safetensors: dict[str, Any] | None = None
    gguf: dict[str, Any] | None = None


class ConfigFile(Document):
    diff_id: str = Field(alias="diffID")
    type: str


class DMRConfig(Document):
    """Both shapes: the tool's (config/descriptor/rootfs) and the written spec's (files/format_version)."""

    config: ModelProperties = Field(default_factory=ModelProperties)
    descriptor: dict[str, Any] | None = None
    rootfs: dict[str, Any] | None = None
    files: list[ConfigFile] | None = None
    format_version: str | None = None


def recognise(manifest: Manifest, config: bytes) -> Plan | None:
    media_type = manifest.config.media_type
    if media_type not in (CONFIG_V01, CONFIG_V02):
        return None
    parse_document(DMRConfig, config, "Docker Model Runner config")
    kinds = {layer.media_type for layer in manifest.layers}
    if not kinds & {SAFETENSORS}:
        if kinds & {GGUF}:
            raise UnsupportedFormatError(
                "this Docker Model Runner artifact holds GGUF weights, which vLLM's safetensors loader cannot serve",
                "run it with `docker model run` or llama.cpp, or push a safetensors build of the model")
        raise UnsupportedFormatError("this Docker Model Runner artifact has no safetensors weights",
                                     "push the model's .safetensors files (oci-crane push DIR REF)")
    version = "v0.2" if media_type == CONFIG_V02 else "v0.1"
    layers: list[LayerPlan] = []
    skipped = []
    licenses = 0
    for index, layer in enumerate(manifest.layers):
        where = f"layer {index} ({layer.media_type})"
        annotated = layer.annotations.get(FILEPATH)
        path = safe_relative_path(annotated, where) if annotated else None
        weights = layer.media_type in WEIGHT_TYPES
        if layer.media_type == GGUF:
            skipped.append(layer)  # vLLM reads the safetensors; a GGUF beside them is not for us
        elif layer.media_type in TAR_TYPES and (version == "v0.1" or path is None):
            layers.append(LayerPlan(layer, Action.TAR))
        elif path is not None:
            layers.append(LayerPlan(layer, Action.FILE, path, weights))
        elif version == "v0.2":
            skipped.append(layer)  # v0.2 names every file it means to ship
        elif layer.media_type == SAFETENSORS:
            layers.append(LayerPlan(layer, Action.SHARD, None, True))
        elif layer.media_type in DEFAULT_NAMES:
            name = DEFAULT_NAMES[layer.media_type]
            if layer.media_type == LICENSE:
                licenses += 1
                name = "LICENSE" if licenses == 1 else f"LICENSE.{licenses}"
            layers.append(LayerPlan(layer, Action.FILE, name, weights))
        else:
            skipped.append(layer)
    return Plan(f"dmr-{version}", layers, skipped)
