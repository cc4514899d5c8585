"""vLLM general plugin: registers load format ``oci-crane`` and resolves OCI references before vLLM reads `model`.

vLLM calls ``register()`` in every process (API server, engine core, workers), so it is idempotent, and this
module imports nothing from vLLM at import time: the package works without vLLM installed.

Why wrap ``EngineArgs.create_engine_config``: it is the one method every entry point (`vllm serve`, ``LLM(...)``,
``AsyncLLMEngine``) calls before anything reads ``model``. Wrapping ``create_model_config`` is too late:
``maybe_override_with_speculators`` reads the model's config first, and a `repo:tag` string is not a
Hugging Face id. The resulting config (a local `model` directory, ``model_weights`` pinned to a digest) is what
vLLM hands to its engine-core and worker processes.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

LOAD_FORMAT = "oci-crane"
_WRAPPED = "_oci_crane_wrapped"

log = logging.getLogger(__name__)


def register() -> None:
    """Entry point of group ``vllm.general_plugins``."""
    from vllm.model_executor import model_loader

    from .loader import OciCraneModelLoader

    registry = getattr(model_loader, "_LOAD_FORMAT_TO_MODEL_LOADER", {})
    if registry.get(LOAD_FORMAT) is not OciCraneModelLoader:
        model_loader.register_model_loader(LOAD_FORMAT)(OciCraneModelLoader)
    _wrap_create_engine_config()
    _tolerate_references_in_hf_offline_mode()


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
    arg_utils.get_model_path = get_model_path


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
        if self.load_format == LOAD_FORMAT:
            from .errors import OciCraneError

            try:
                resolve_engine_args(self)
            except OciCraneError as exc:
                if _in_vllm_cli():  # a command-line user gets our one line, not a traceback through asyncio
                    raise SystemExit(f"error: {exc.one_line()}") from None
                raise
        return original(self, *args, **kwargs)

    setattr(create_engine_config, _WRAPPED, True)
    setattr(EngineArgs, "create_engine_config", create_engine_config)  # noqa: B010 (typed either way, vLLM or not)


def resolve_engine_args(args: Any) -> None:
    """Rewrite `model`, `tokenizer`, `model_weights`, `served_model_name` and `download_dir` in place.

    Idempotent: once `model_weights` holds our pinned reference and `model` our config directory, nothing changes.
    """
    from .options import from_extra_config
    from .pull import open_puller

    puller = open_puller(from_extra_config(getattr(args, "model_loader_extra_config", None), args.download_dir))
    if args.model_weights and puller.owns(args.model):
        return  # already resolved (vLLM may build the config more than once)
    reference = args.model_weights or args.model
    resolved, _plan, config_dir = puller.prepare(reference)
    log.info("oci-crane: %s resolved to %s; config files in %s", reference, resolved.pinned, config_dir)
    if args.tokenizer in (None, "", args.model):
        args.tokenizer = str(config_dir)
    if not args.served_model_name:
        # Exactly as typed (oci:// included): the OpenAI server names the model from the unchanged CLI arguments,
        # and the engine's name must agree with it.
        args.served_model_name = [reference]
    args.model = str(config_dir)
    args.model_weights = resolved.pinned
    args.download_dir = str(puller.cache_root)
