"""LoRA adapters by OCI reference in vLLM's OpenAI server (docs/vllm.md: LoRA adapters).

Three doors, one fetch (``Adapters.get``: through the cache, digest-verified, checked by adapters.py):

* a LoRA resolver, registered with vLLM's ``LoRAResolverRegistry`` when OCI_CRANE_LORA_REPOSITORIES is set: a
  request whose ``model`` is a reference under one of those prefixes gets that adapter (vLLM calls resolvers only
  with VLLM_ALLOW_RUNTIME_LORA_UPDATING=1);
* ``--lora-modules NAME=REF`` (and its JSON form), resolved when the server starts, as the model is;
* ``/v1/load_lora_adapter`` with ``lora_path`` a reference, under the same prefixes as the resolver.

vLLM turns an exception from a resolver into a 500 and a None into a bare 404, so ``OpenAIServingModels.resolve_lora``
is wrapped: an OciCraneError of ours becomes a 400 whose message is its cause and fix (vLLM passes a resolver's
400 through to the client). Downloads run in a thread pool, off the event loop; requests racing for one adapter
share one download; a request waits OCI_CRANE_LORA_TIMEOUT at most (the download goes on, for the next request).

Like vllm_plugin.py, nothing from vLLM is imported at module import.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import importlib
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

from .adapters import AdapterInfo, base_model_mismatch, check_adapter_dir
from .errors import AdapterRefusedError, AdapterTimeoutError, InvalidReferenceError, OciCraneError, UsageError
from .reference import Reference, is_registry_host, parse_reference
from .settings import settings
from .vllm_api import LOGGER_NAME

log = logging.getLogger(LOGGER_NAME)

RESOLVER_NAME = "oci-crane"
_WRAPPED = "_oci_crane_wrapped"
# Where vLLM keeps OpenAIServingModels (it moved in 0.2x); the first that imports is wrapped.
_SERVING_MODULES = ("vllm.entrypoints.openai.models.serving", "vllm.entrypoints.openai.serving_models")
_STARTING = contextvars.ContextVar("oci_crane_static_loras", default=False)  # inside init_static_loras


@dataclass
class Serving:
    """What this server serves, noted from its EngineArgs (vllm_plugin.py) for the adapters' checks."""

    names: list[str] = field(default_factory=list)  # the model as typed, and its served names
    max_lora_rank: int | None = None
    cache_dir: str | None = None  # vLLM's --download-dir, where the model's fetch put its cache


SERVING = Serving()


def note_engine_args(args: Any) -> None:
    """Called with the EngineArgs before they are resolved: the model's names as the user typed them."""
    names = [str(args.model_weights or args.model)] + [str(name) for name in (args.served_model_name or [])]
    SERVING.names = list(dict.fromkeys(names))
    rank = getattr(args, "max_lora_rank", None)
    SERVING.max_lora_rank = rank if isinstance(rank, int) else None


def looks_like_reference(text: str) -> bool:
    """``oci://...`` or ``REGISTRY/REPO...``: a name that says where it lives. ``sql`` or ``acme/sql`` (Docker
    Hub, by the rules of image names) are adapter names for vLLM's other resolvers, not ours."""
    if not isinstance(text, str) or not text.strip():
        return False
    body = text.strip()
    if body.startswith("oci://"):
        return True
    first, slash, _ = body.partition("/")
    if not slash or not is_registry_host(first) or os.path.isabs(body):
        return False
    try:
        parse_reference(body)
    except InvalidReferenceError:
        return False
    return True


def allowed(reference: Reference, prefixes: tuple[str, ...]) -> bool:
    """Under one of ``prefixes`` by whole path components: ``ghcr.io/acme`` allows ``ghcr.io/acme/sql``, not
    ``ghcr.io/acme-evil/sql``."""
    name = reference.repository_name
    return any(name == prefix or name.startswith(prefix + "/") for prefix in prefixes)


def check_allowed(text: str) -> Reference:
    reference = parse_reference(text)
    prefixes = settings().lora_repositories
    if not prefixes:
        raise AdapterRefusedError(f"{text} names a LoRA adapter by reference, and this server loads none that way "
                                  "(OCI_CRANE_LORA_REPOSITORIES is not set)",
                                  "set OCI_CRANE_LORA_REPOSITORIES on the server to the repository prefixes it may "
                                  "load adapters from")
    if not allowed(reference, prefixes):
        raise AdapterRefusedError(f"{reference.repository_name} is not under the repositories this server loads LoRA "
                                  "adapters from (OCI_CRANE_LORA_REPOSITORIES)")
    return reference


@dataclass(frozen=True)
class Fetched:
    pinned: str  # registry/repository@sha256:... : the digest the name meant when it was fetched
    info: AdapterInfo


class Adapters:
    """One download per adapter at a time, in threads: requests racing for a new adapter share one download (and
    the cache's blob locks share it with other processes); a failure is not remembered, so the next request tries
    again; a finished download is forgotten too (vLLM keeps the adapter), so a later request after an unload
    sees where the tag points then."""

    def __init__(self, workers: int = 4) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="oci-crane-lora")
        self._running: dict[str, concurrent.futures.Future[Fetched]] = {}
        self._lock = threading.Lock()

    async def get(self, text: str, *, timeout: float | None) -> Fetched:
        key = parse_reference(text).name
        with self._lock:
            future = self._running.get(key)
            if future is None:
                future = self._pool.submit(self._fetch, text)
                self._running[key] = future
                future.add_done_callback(functools.partial(self._forget, key))
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            raise AdapterTimeoutError(f"the LoRA adapter {text} is still downloading after {timeout:g} s") from None

    def _forget(self, key: str, future: concurrent.futures.Future[Fetched]) -> None:
        with self._lock:
            if self._running.get(key) is future:
                del self._running[key]

    @staticmethod
    def _fetch(text: str) -> Fetched:
        from .fetching import fetch
        from .options import fetch_options
        from .pull import open_puller

        environment = settings()
        options = fetch_options(cache_dir=SERVING.cache_dir)
        reference = parse_reference(text)
        # The manifest first (kilobytes): an artifact over the cap is refused before a byte of it is downloaded.
        resolved = open_puller(options).resolve(reference)
        size = sum(layer.size for layer in resolved.manifest.layers)
        if size > environment.lora_max_bytes:
            from .errors import InvalidModelError
            from .progress import human

            raise InvalidModelError(f"{text} holds {human(size)}, over the {human(environment.lora_max_bytes)} "
                                    "limit for LoRA adapters", "raise OCI_CRANE_LORA_MAX_BYTES on the server, or "
                                    "push a smaller adapter")
        pinned = reference.with_digest(resolved.index_digest or resolved.digest)
        result = fetch(options, pinned)  # by digest: what was measured is what is fetched, even if the tag moves
        info = check_adapter_dir(result.path, max_rank=SERVING.max_lora_rank,
                                 max_bytes=environment.lora_max_bytes)
        warning = base_model_mismatch(info.base_model, SERVING.names)
        if warning:
            log.warning("oci-crane: LoRA adapter %s: %s", text, warning)
        log.info("oci-crane: LoRA adapter %s is %s (rank %d) in %s", text, pinned, info.rank, info.path)
        return Fetched(pinned, info)


ADAPTERS = Adapters()


def _lora_request_class() -> Any:
    from vllm.lora.request import LoRARequest

    return LoRARequest


def make_resolver() -> Any:
    from vllm.lora.resolver import LoRAResolver

    class OciCraneLoRAResolver(LoRAResolver):  # type: ignore[misc]
        """``model`` = a reference under OCI_CRANE_LORA_REPOSITORIES: that adapter, from the cache or fetched."""

        async def resolve_lora(self, base_model_name: str, lora_name: str) -> Any:
            if not looks_like_reference(lora_name):
                return None  # not ours: vLLM's other resolvers, then its 404
            check_allowed(lora_name)
            fetched = await _get(lora_name, timeout=settings().lora_timeout)
            return _lora_request_class()(lora_name=lora_name, lora_int_id=1, lora_path=str(fetched.info.path))

    return OciCraneLoRAResolver()


async def _get(text: str, *, timeout: float | None) -> Fetched:
    """ADAPTERS.get with any failure as an OciCraneError: vLLM would answer anything else with a 500."""
    try:
        return await ADAPTERS.get(text, timeout=timeout)
    except OciCraneError:
        raise
    except Exception as exc:
        log.exception("oci-crane: fetching LoRA adapter %s failed", text)
        raise UsageError(f"fetching the LoRA adapter {text} failed: {type(exc).__name__}: {exc}",
                         "see the server's log") from exc


def install() -> None:
    """From register(): the resolver (when OCI_CRANE_LORA_REPOSITORIES is set) and the OpenAI server's wraps.
    Idempotent; a vLLM without these names keeps working, without adapters by reference."""
    try:
        from vllm.lora.resolver import LoRAResolverRegistry
    except ImportError:
        log.warning("oci-crane: this vLLM has no LoRA resolvers: adapters by reference are off")
        return
    if settings().lora_repositories and RESOLVER_NAME not in LoRAResolverRegistry.get_supported_resolvers():
        LoRAResolverRegistry.register_resolver(RESOLVER_NAME, make_resolver())
        if os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").strip().lower() not in ("1", "true"):
            log.warning("oci-crane: OCI_CRANE_LORA_REPOSITORIES is set but vLLM calls LoRA resolvers only with "
                        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=1: requests cannot name adapters by reference")
    wrap_serving_models()


# A module of vLLM's OpenAI server loaded: this process serves HTTP (the engine's processes and LLM(...) do not).
_SERVER_PACKAGES = ("vllm.entrypoints.openai.", "vllm.entrypoints.launchers.", "vllm.entrypoints.serve.")


def wrap_serving_models() -> None:
    """Wrap OpenAIServingModels in a process that runs vLLM's OpenAI server: from register() (`vllm serve` has
    imported its server by then) and again when the engine's config is made (before the server builds its
    models). Elsewhere nothing is imported: the serving module costs seconds to import in each engine process."""
    if not any(name.startswith(_SERVER_PACKAGES) for name in list(sys.modules)):
        return
    for name in _SERVING_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        _wrap_serving_models(module)
        return


def _wrap_serving_models(module: Any) -> None:
    models = getattr(module, "OpenAIServingModels", None)
    make_error = getattr(module, "create_error_response", None)
    if models is None or make_error is None or getattr(models.load_lora_adapter, _WRAPPED, False):
        return

    def refuse(exc: OciCraneError, param: str | None) -> Any:
        return make_error(message=f"oci-crane: {exc.one_line()}", err_type="BadRequestError",
                          status_code=HTTPStatus.BAD_REQUEST, param=param)

    original_resolve = models.resolve_lora

    @functools.wraps(original_resolve)
    async def resolve_lora(self: Any, lora_name: str) -> Any:
        try:
            return await original_resolve(self, lora_name)
        except OciCraneError as exc:
            log.warning("oci-crane: LoRA adapter %s refused: %s", lora_name, exc.one_line())
            return refuse(exc, "model")

    original_load = models.load_lora_adapter

    @functools.wraps(original_load)
    async def load_lora_adapter(self: Any, request: Any, base_model_name: str | None = None) -> Any:
        path = getattr(request, "lora_path", None)
        if path and looks_like_reference(path) and not Path(path).exists():
            starting = _STARTING.get()
            try:
                if not starting:  # an API call: the operator's allow-list; --lora-modules is the operator's own
                    check_allowed(path)
                fetched = await _get(path, timeout=None if starting else settings().lora_timeout)
            except OciCraneError as exc:
                log.warning("oci-crane: LoRA adapter %s refused: %s", path, exc.one_line())
                return refuse(exc, "lora_path")
            request = request.model_copy(update={"lora_path": str(fetched.info.path)})
        return await original_load(self, request, base_model_name)

    original_static = models.init_static_loras

    @functools.wraps(original_static)
    async def init_static_loras(self: Any) -> Any:
        token = _STARTING.set(True)
        try:
            return await original_static(self)
        finally:
            _STARTING.reset(token)

    for name, wrapper in (("resolve_lora", resolve_lora), ("load_lora_adapter", load_lora_adapter),
                          ("init_static_loras", init_static_loras)):
        setattr(wrapper, _WRAPPED, True)
        setattr(models, name, wrapper)
