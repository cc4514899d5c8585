"""vLLM general plugin: registers load format ``oci-crane`` and resolves OCI references before vLLM reads `model`.

vLLM calls ``register()`` in every process (API server, engine core, workers), so it is idempotent, and this
module imports nothing from vLLM at import time: the package works without vLLM installed.

Why wrap ``EngineArgs.create_engine_config``: it is the one method every entry point (`vllm serve`, ``LLM(...)``,
``AsyncLLMEngine``) calls before anything reads ``model``. Wrapping ``create_model_config`` is too late:
``maybe_override_with_speculators`` reads the model's config first, and a `repo:tag` string is not a
Hugging Face id. The resulting config (a local `model` directory, ``model_weights`` pinned to a digest) is what
vLLM hands to its engine-core and worker processes.

The weights start downloading right there, in a background thread (``start_weight_prefetch``), while vLLM imports
torch and starts its engine; the loader, in the worker process, then finds them verified in the cache (or waits on
the blob's lock for one still arriving: each blob is downloaded once).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .vllm_api import LOAD_FORMAT, LOGGER_NAME

if TYPE_CHECKING:
    from .formats import LayerPlan
    from .pull import Puller, Resolved

# vLLM's OCI proposal (docs/vllm.md) spells it `oci`; ours only where vLLM has no loader of that name.
ALIASES = ("oci",)
_WRAPPED = "_oci_crane_wrapped"
_our_formats: set[str] = set()  # the load formats that name our loader in this process

log = logging.getLogger(LOGGER_NAME)


def register() -> None:
    """Entry point of group ``vllm.general_plugins``."""
    from . import errors, vllm_api

    vllm_api.warn_if_unsupported(vllm_api.installed_version())
    try:
        vllm_api.check_installed()
    except errors.VllmIncompatibleError as exc:
        if _in_vllm_cli():  # vLLM calls plugins unguarded: one line, not a traceback through its startup
            raise SystemExit(f"error: {exc.one_line()}") from None
        raise

    from vllm.model_executor import model_loader

    from .loader import OciCraneModelLoader

    registry = model_loader._LOAD_FORMAT_TO_MODEL_LOADER
    for load_format in (LOAD_FORMAT, *ALIASES):
        current = registry.get(load_format)
        if current is not None and current is not OciCraneModelLoader and load_format in ALIASES:
            continue  # vLLM's own loader of that name stays; `oci-crane` still names ours
        if current is not OciCraneModelLoader:
            model_loader.register_model_loader(load_format)(OciCraneModelLoader)
        _our_formats.add(load_format)
    _wrap_create_engine_config()
    _tolerate_references_in_hf_offline_mode()
    from .vllm_lora import install

    try:
        install()  # LoRA adapters by reference: the resolver, --lora-modules, /v1/load_lora_adapter
    except errors.OciCraneError as exc:  # an OCI_CRANE_LORA_* variable we cannot use
        if _in_vllm_cli():
            raise SystemExit(f"error: {exc.one_line()}") from None
        raise


def _tolerate_references_in_hf_offline_mode() -> None:
    """With HF_HUB_OFFLINE=1, ``EngineArgs.__post_init__`` maps `model` to a local snapshot path (right after it
    loads this plugin) and fails on a `repo:tag` string. Where that lookup fails and `model` is a valid OCI
    reference, keep it unchanged: ``create_engine_config`` resolves it next. Nothing that worked changes."""
    from vllm.engine import arg_utils

    original = getattr(arg_utils, "get_model_path", None)
    if original is None or getattr(original, _WRAPPED, False):
        return

    @functools.wraps(original)
    def get_model_path(model: Any, revision: Any = None) -> Any:
        try:
            return original(model, revision)
        except Exception:
            if not _is_reference(model):
                raise
            return model

    setattr(get_model_path, _WRAPPED, True)
    setattr(arg_utils, "get_model_path", get_model_path)  # noqa: B010 (a re-export mypy cannot see)


def _in_vllm_cli() -> bool:
    import sys

    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    return program == "vllm" or (program in ("main.py", "api_server.py") and "vllm" in sys.argv[0])


def _is_reference(text: Any) -> bool:
    from .errors import InvalidReferenceError
    from .reference import parse_reference

    try:
        parse_reference(str(text))
    except InvalidReferenceError:
        return False
    return True


def _wrap_create_engine_config() -> None:
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.create_engine_config
    if getattr(original, _WRAPPED, False):
        return

    @functools.wraps(original)
    def create_engine_config(self: Any, *args: Any, **kwargs: Any) -> Any:
        from .vllm_lora import SERVING, note_engine_args, wrap_serving_models

        note_engine_args(self)  # what LoRA adapters are checked against, whichever loader serves the model
        wrap_serving_models()
        if self.load_format in _our_formats:
            from .errors import OciCraneError

            try:
                resolve_engine_args(self)
            except OciCraneError as exc:
                if _in_vllm_cli():  # a command-line user gets our one line, not a traceback through asyncio
                    raise SystemExit(f"error: {exc.one_line()}") from None
                raise
            SERVING.cache_dir = self.download_dir  # adapters by reference share the model's cache
        return original(self, *args, **kwargs)

    setattr(create_engine_config, _WRAPPED, True)
    setattr(EngineArgs, "create_engine_config", create_engine_config)  # noqa: B010 (typed either way, vLLM or not)


def resolve_engine_args(args: Any) -> None:
    """Rewrite `model`, `tokenizer`, `model_weights`, `served_model_name` and `download_dir` in place.

    Idempotent: once `model_weights` holds our pinned reference and `model` our config directory, nothing changes.
    """
    from .fetching import open_store, prepare
    from .options import from_extra_config
    from .pull import open_puller

    puller_options = from_extra_config(getattr(args, "model_loader_extra_config", None), args.download_dir)
    if args.model_weights and Path(args.model).is_relative_to(open_store(puller_options).root):
        return  # already resolved (vLLM may build the config more than once)
    reference = args.model_weights or args.model
    puller, resolved, plan, config_dir = prepare(puller_options, reference)
    log.info("oci-crane: %s resolved to %s; config files in %s", reference, resolved.pinned, config_dir)
    if plan.streamable:  # its own Puller: the thread counts its bytes through the Puller's progress
        start_weight_prefetch(open_puller(puller_options), resolved, plan.weight_layers)
    if args.tokenizer in (None, "", args.model):
        args.tokenizer = str(config_dir)
    if not args.served_model_name:
        # Exactly as typed (oci:// included): the OpenAI server names the model from the unchanged CLI arguments,
        # and the engine's name must agree with it.
        args.served_model_name = [reference]
    args.model = str(config_dir)
    args.model_weights = resolved.pinned
    args.download_dir = str(puller.cache_root)


PREFETCH_NICENESS = 10  # added to the download thread's nice value (Linux): see _prefetch
_PREFETCHES: dict[str, threading.Thread] = {}  # manifest digest -> its download thread, one per model
_PREFETCHES_LOCK = threading.Lock()


def start_weight_prefetch(puller: Puller, resolved: Resolved, layers: list[LayerPlan]) -> threading.Thread | None:
    """Download ``layers`` (the weight blobs) in a daemon thread; None when all are cached or a download of this
    model already runs. A failure is only logged: the loader downloads again and reports it properly. When the
    process exits, the downloads are stopped (crane ended, temp files removed), neither awaited nor left half
    written."""
    missing = [layer for layer in layers if not puller.store.has_blob(layer.descriptor)]
    if not missing:
        log.info("oci-crane: the weights of %s are in the cache already", resolved.pinned)
        return None
    with _PREFETCHES_LOCK:
        running = _PREFETCHES.get(resolved.digest)
        if running is not None and running.is_alive():
            return None
        cancel = threading.Event()
        thread = threading.Thread(target=_prefetch, args=(puller, resolved, missing, cancel), daemon=True,
                                  name="oci-crane-prefetch")
        _PREFETCHES[resolved.digest] = thread
    # threading's exit hook (what concurrent.futures uses) runs before the interpreter joins the download pool's
    # threads; an atexit handler would run only after that join, i.e. once every download had finished.
    getattr(threading, "_register_atexit", atexit.register)(cancel.set)
    thread.start()
    return thread


def _prefetch(puller: Puller, resolved: Resolved, layers: list[LayerPlan], cancel: threading.Event) -> None:
    from .errors import CancelledError, OciCraneError
    from .progress import Progress, human

    class Tally(Progress):  # bytes this thread downloaded, not those another process fetched while we waited
        downloaded = 0

        def finished(self, descriptor: Any) -> None:
            super().finished(descriptor)
            self.downloaded += descriptor.size

    tally = Tally(enabled=False)
    puller.progress = tally
    size = sum(layer.descriptor.size for layer in layers)
    log.info("oci-crane: downloading %d weight blob(s) (%s) of %s while vLLM starts", len(layers), human(size),
             resolved.pinned)
    started = time.monotonic()
    # Below vLLM's own start in CPU priority (this thread, the download threads it starts and their crane
    # processes inherit it; on Linux the nice value is per thread): where the CPU is scarce the download takes what
    # vLLM leaves, and once vLLM waits for the weights it has the CPU to itself.
    if sys.platform == "linux":  # elsewhere it is per process: vLLM itself would slow down
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + PREFETCH_NICENESS))
    try:
        puller.ensure_blobs(resolved.reference, layers, cancel=cancel)
    except CancelledError:
        log.info("oci-crane: weight download of %s stopped at exit", resolved.pinned)
        return
    except Exception as exc:  # the loader tries again and raises it where vLLM reports load errors
        detail = exc.one_line() if isinstance(exc, OciCraneError) else f"{type(exc).__name__}: {exc}"
        log.warning("oci-crane: background weight download of %s failed (%s); the loader will try again",
                    resolved.pinned, detail)
        return
    elapsed = max(time.monotonic() - started, 1e-3)
    log.info("oci-crane: weights of %s downloaded: %s in %.1f s (%s/s)", resolved.pinned, human(tally.downloaded),
             elapsed, human(tally.downloaded / elapsed))
    if puller.came_from:  # which mirror (or the upstream) served them, as `fetch --json` says under "sources"
        served: dict[str, int] = {}
        for source in puller.came_from.values():
            served[source] = served.get(source, 0) + 1
        log.info("oci-crane: %s", "; ".join(f"{count} blob(s) from {source}" for source, count in served.items()))
