"""The ``oci-crane`` model loader: weights from the content-addressed cache, streamed shard by shard.

Each worker process resolves the pinned reference (from the cache: no request for a digest already seen),
downloads weight blobs in parallel, and starts reading a shard as soon as that shard is complete and verified,
while later shards still download. The per-blob cache lock makes several workers download each blob once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import InvalidModelError
from .fetching import prepare
from .formats import LayerPlan, Plan
from .options import from_extra_config
from .pull import Puller, Resolved
from .safetensors_check import INDEX_FILENAME, SafetensorsIndex, read_header, read_index
from .vllm_api import LOGGER_NAME

log = logging.getLogger(LOGGER_NAME)
_STOP_TIMEOUT = 30.0  # seconds to wait for cancelled downloads to stop (crane is stopped, temp files removed)

_LoaderBase: Any = object  # vLLM is optional: the rest of the package must import without it
try:
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader as _VllmBaseModelLoader

    _LoaderBase = _VllmBaseModelLoader
except ImportError:  # pragma: no cover - exercised only without vLLM
    pass


def directory_weights(model_dir: Path, index: SafetensorsIndex | None) -> Iterator[tuple[str, Any]]:
    """(name, tensor) from a materialised model directory: the index's files (each tensor from the file it
    names), else every top-level *.safetensors file."""
    from safetensors import safe_open

    files = index.files if index is not None else sorted(p.name for p in model_dir.glob("*.safetensors"))
    for file_name in files:
        with safe_open(str(model_dir / file_name), framework="pt", device="cpu") as shard:
            for tensor in shard.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if index is None or index.weight_map.get(tensor) == file_name:
                    yield tensor, shard.get_tensor(tensor)


def stream_weights(puller: Puller, resolved: Resolved, plan: Plan, index: SafetensorsIndex | None
                   ) -> Iterator[tuple[str, Any]]:
    """(name, tensor) pairs, a shard at a time as soon as its blob is verified; downloads continue meanwhile.

    With an index, only files it names are read (vLLM's rule: a consolidated copy beside the shards is not
    loaded twice) and each tensor comes from the file the index assigns it to.
    """
    ready: queue.Queue[tuple[LayerPlan, Path] | BaseException | None] = queue.Queue()  # None: all done
    cancel = threading.Event()

    def download() -> None:
        try:
            puller.ensure_blobs(resolved.reference, plan.weight_layers, on_ready=lambda layer, path: ready.put(
                (layer, path)), cancel=cancel)
            ready.put(None)
        except BaseException as exc:  # handed to the consuming thread, which raises it
            ready.put(exc)

    started = time.monotonic()
    downloader = threading.Thread(target=download, name="oci-crane-weights", daemon=True)
    downloader.start()
    try:
        yield from _read_shards(ready, resolved, index, started)
    finally:
        # A consumer that stops early (the model's load_weights raising, the generator closed) stops the
        # downloads too: no crane process outlives the load, no temp file is left behind.
        cancel.set()
        downloader.join(timeout=_STOP_TIMEOUT)


def _read_shards(ready: queue.Queue[tuple[LayerPlan, Path] | BaseException | None], resolved: Resolved,
                 index: SafetensorsIndex | None, started: float) -> Iterator[tuple[str, Any]]:
    """stream_weights' consuming side: each verified shard's tensors, in the order the blobs become ready."""
    from safetensors import safe_open

    shards = 0
    while (item := ready.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        layer, path = item
        name = layer.path or layer.descriptor.digest
        if index is not None and layer.path is not None and Path(layer.path).name not in index.files:
            continue
        if not name.endswith(".safetensors") and layer.path is not None:
            continue  # a weight of another format (dduf) beside the safetensors
        header = read_header(path, name=name)  # validated before a single tensor is read
        shards += 1
        if shards == 1:
            log.info("oci-crane: first weight shard of %s (%s) started loading %.1f s after the loader started",
                     resolved.pinned, name, time.monotonic() - started)
        with safe_open(str(path), framework="pt", device="cpu") as shard:
            for tensor in header.tensors:
                owner = index.weight_map.get(tensor) if index is not None else None
                if index is not None and layer.path is not None and owner != Path(layer.path).name:
                    continue
                yield tensor, shard.get_tensor(tensor)
    log.info("oci-crane: %d weight shard(s) of %s loaded in %.1f s", shards, resolved.pinned,
             time.monotonic() - started)


class OciCraneModelLoader(_LoaderBase):  # type: ignore[misc]
    """``--load-format oci-crane``. ``model_config.model_weights`` carries the pinned ``repo@sha256:...``."""

    def __init__(self, load_config: Any) -> None:
        super().__init__(load_config)
        # Checked here, before work starts; vLLM's --download-dir is the cache.
        self.options = from_extra_config(load_config.model_loader_extra_config, load_config.download_dir)

    def _prepare(self, model_config: Any) -> tuple[Puller, Resolved, Plan, Path]:
        return prepare(self.options, model_config.model_weights or model_config.model)

    def download_model(self, model_config: Any) -> None:
        puller, resolved, plan, _ = self._prepare(model_config)
        puller.ensure_blobs(resolved.reference, plan.weight_layers)
        puller.materialize(resolved, plan)

    def load_weights(self, model: Any, model_config: Any) -> None:
        puller, resolved, plan, config_dir = self._prepare(model_config)
        index = read_index(config_dir / INDEX_FILENAME) if (config_dir / INDEX_FILENAME).exists() else None
        if plan.streamable:
            loaded = model.load_weights(stream_weights(puller, resolved, plan, index))
            puller.materialize(resolved, plan)  # a full model directory for others
        else:  # prepare() fetched the whole model directory: config_dir is it
            loaded = model.load_weights(directory_weights(config_dir, index))
        if loaded is not None and model_config.quantization is None:
            expected = {name for name, _ in model.named_parameters()}
            missing = sorted(expected - set(loaded))
            if missing:
                raise InvalidModelError(
                    f"oci-crane: {resolved.reference} did not provide {len(missing)} weight(s) the model needs: "
                    f"{', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}",
                    "push the model's complete checkpoint (every .safetensors shard its index names)")
