"""ORAS artifacts (`oras push FILE...`, KAITO before late 2025): each layer a file named by its title annotation.

oras-go's file store rule: a layer with ``org.opencontainers.image.title`` is written verbatim to that name, whatever
its media type says (the default ``application/vnd.oci.image.layer.v1.tar`` is NOT a tar); only a layer annotated
``io.deis.oras.content.unpack: "true"`` (a pushed directory) is a tar+gzip, whose entries all start with the title
(``1_Pooling/config.json``), so it extracts into the model root. Layers without a title are not pulled.
"""

from __future__ import annotations

from ..oci import TITLE, Descriptor, Manifest
from ..paths import safe_relative_path
from .image import CONFIG_TYPES as IMAGE_CONFIG_TYPES
from .plan import WEIGHTS_THRESHOLD, Action, LayerPlan, Plan

UNPACK = "io.deis.oras.content.unpack"
DEFAULT_ARTIFACT_TYPE = "application/vnd.unknown.artifact.v1"
# Configs of container images: those layers are filesystems, unless every one of them is named like a file.
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".onnx", ".dduf", ".h5", ".msgpack")


def claims(manifest: Manifest) -> bool:
    titled = [layer for layer in manifest.layers if layer.annotations.get(TITLE)]
    if not titled:
        return False
    if manifest.config.media_type in IMAGE_CONFIG_TYPES:
        return len(titled) == len(manifest.layers)
    return True


def is_weight(layer: Descriptor, title: str) -> bool:
    return layer.size > WEIGHTS_THRESHOLD or title.lower().endswith(WEIGHT_SUFFIXES)


def recognise(manifest: Manifest, config: bytes) -> Plan | None:
    if not claims(manifest):
        return None
    layers: list[LayerPlan] = []
    skipped: list[Descriptor] = []
    for index, layer in enumerate(manifest.layers):
        title = layer.annotations.get(TITLE)
        if not title:
            skipped.append(layer)  # oras pull skips layers it cannot name
            continue
        where = f"layer {index} ({layer.media_type}, title {title!r})"
        path = safe_relative_path(title, where)
        if layer.annotations.get(UNPACK) == "true":
            layers.append(LayerPlan(layer, Action.TAR, None, is_weight(layer, title)))
        else:
            layers.append(LayerPlan(layer, Action.FILE, path, is_weight(layer, title)))
    return Plan("oras", layers, skipped)
