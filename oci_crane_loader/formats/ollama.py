"""Ollama models (registry.ollama.ai and copies of it): recognised, then refused with what to use instead.

An Ollama manifest is a docker v2 manifest whose layers are ``application/vnd.ollama.image.*``: the weights are
one GGUF file (``model``), beside a projector, LoRA adapter, prompt template, system prompt, parameters and licence.
vLLM's safetensors loader cannot serve GGUF, so nothing is downloaded.
"""

from __future__ import annotations

from ..errors import UnsupportedFormatError
from ..oci import Manifest
from .plan import Plan

PREFIX = "application/vnd.ollama.image."
MODEL = PREFIX + "model"
PROJECTOR = PREFIX + "projector"
ADAPTER = PREFIX + "adapter"
TEMPLATE = PREFIX + "template"
SYSTEM = PREFIX + "system"
PARAMS = PREFIX + "params"
LICENSE = PREFIX + "license"


def recognise(manifest: Manifest, config: bytes) -> Plan | None:
    kinds = {layer.media_type for layer in manifest.layers}
    if MODEL not in kinds or not all(kind.startswith(PREFIX) for kind in kinds):
        return None  # an Ollama model has its GGUF layer and nothing but Ollama layers
    raise UnsupportedFormatError(
        "this is an Ollama model: its weights are a GGUF file (application/vnd.ollama.image.model), which vLLM's "
        "safetensors loader cannot serve",
        "run it with `ollama run MODEL`, or push a safetensors build of the model with `oci-crane push DIR REF` "
        "and fetch that")
