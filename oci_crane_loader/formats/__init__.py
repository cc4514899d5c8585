"""Format recognition: manifest + config in, one Plan out (which layer becomes which file(s)).

Each format module exposes ``recognise(manifest, config) -> Plan | None``; the first that claims an artifact
wins. Adding a format means adding a module and listing it in ``recognise``. Each format module also holds its
writer where we write that format (``dmr``, ``modelpack``), next to the reader and sharing its constants.
"""

from __future__ import annotations

from ..errors import UnsupportedFormatError
from ..oci import Manifest
from . import dmr, image, kitops, modelpack, ollama, oras
from .plan import Action, LayerPlan, Plan, check_unique_paths

__all__ = ["Action", "LayerPlan", "Plan", "recognise"]


def recognise(manifest: Manifest, config: bytes) -> Plan:
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
