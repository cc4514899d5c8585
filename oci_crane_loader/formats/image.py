"""Plain container images: KubeAI image volumes (model at the root), KServe modelcars (``/models``), ramalama
images (``/models/<name>/``).

Layers are applied in manifest order, whiteouts included, as a container runtime would; the model directory is
then the shallowest directory holding config.json, or the one the user names with --subpath.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ..errors import InvalidModelError, UnsupportedFormatError
from ..oci import Document, Manifest, parse_document
from .plan import WEIGHTS_THRESHOLD, Action, LayerPlan, Plan

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
CONFIG_TYPES = {OCI_CONFIG, DOCKER_CONFIG}

LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",  # not in docker's list, but written by some tools
    # Non-distributable ("foreign") layers: still tars; the registry may or may not hold the blob.
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
}


class RootFS(Document):
    type: str | None = None
    diff_ids: list[str] = Field(default_factory=list)


class ImageConfig(Document):
    """The image config (OCI or docker): only read to prove it is one; every field optional, extras kept."""

    architecture: str | None = None
    os: str | None = None
    variant: str | None = None
    created: str | None = None
    author: str | None = None
    config: dict[str, Any] | None = None
    rootfs: RootFS | None = None
    history: list[dict[str, Any]] | None = None


def recognise(manifest: Manifest, config: bytes) -> Plan | None:
    if manifest.config.media_type not in CONFIG_TYPES:
        return None
    if manifest.artifact_type and manifest.artifact_type not in CONFIG_TYPES:
        return None  # an artifact of some other kind that borrowed the image config: not a filesystem image
    parse_document(ImageConfig, config, "image config")
    others = sorted({layer.media_type for layer in manifest.layers if layer.media_type not in LAYER_TYPES})
    if others:
        raise UnsupportedFormatError(
            f"this container image has layers that are not filesystem tars: {', '.join(others)}",
            "push the model as a plain image (tar layers), or as a Docker Model Runner or ModelPack artifact "
            "(oci-crane push DIR REF)")
    if not manifest.layers:
        raise InvalidModelError("this container image has no layers, so it holds no model",
                                "check the reference; push an image whose layers hold the model files")
    layers = [LayerPlan(layer, Action.IMAGE, None, layer.size > WEIGHTS_THRESHOLD) for layer in manifest.layers]
    return Plan("image", layers, find_root=True)
