"""PEFT LoRA adapters as artifacts: a directory holding ``adapter_config.json`` and ``adapter_model.safetensors``
(no config.json: it rides on a base model). `push`, `fetch`, `inspect` and `--local-dir` take one as they take a
model; vLLM's LoRA resolver and ``--lora-modules`` check one here before vLLM reads it.

The checks are cheap and bounded, because a request may name the adapter: the files' total size against a cap,
adapter_config.json read only up to 1 MiB, and the safetensors header refused above 16 MiB before a byte of it is
parsed (a model's cap is 100 MB, which costs ~1.3 GB of memory to parse; an adapter's header is kilobytes).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidModelError
from .progress import human
from .safetensors_check import read_header

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MAX_ADAPTER_CONFIG = 1 << 20  # bytes of adapter_config.json (PEFT writes ~1 KiB)
MAX_ADAPTER_HEADER = 16 << 20  # bytes of adapter_model.safetensors' header (~150 bytes a tensor)
_FIX = "save the adapter with PEFT's save_pretrained(DIR) (safe_serialization=True) and push that directory"


@dataclass(frozen=True)
class AdapterInfo:
    path: Path
    rank: int
    base_model: str | None  # adapter_config.json's base_model_name_or_path, if set
    tensors: int
    bytes: int


def is_adapter_dir(path: Path) -> bool:
    """A LoRA adapter's directory: adapter_config.json, and no config.json of a model of its own."""
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def check_adapter_dir(path: Path, *, max_rank: int | None = None, max_bytes: int | None = None) -> AdapterInfo:
    """Refuse an adapter vLLM could not load, or that is bigger than ``max_bytes`` or of a rank above
    ``max_rank`` (vLLM's --max-lora-rank); one InvalidModelError naming the cause."""
    files = [p for p in path.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    if max_bytes is not None and size > max_bytes:
        raise InvalidModelError(f"the LoRA adapter in {path} holds {human(size)}, over the {human(max_bytes)} limit "
                                "for adapters", "raise OCI_CRANE_LORA_MAX_BYTES, or push a smaller adapter")
    config = read_adapter_config(path)
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise InvalidModelError(f"{ADAPTER_CONFIG}: peft_type is {peft_type!r}; vLLM serves LoRA adapters only "
                                "(peft_type \"LORA\")", "train a LoRA adapter, or serve this one another way")
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise InvalidModelError(f"{ADAPTER_CONFIG}: the rank r is {rank!r}, not a positive whole number", _FIX)
    if max_rank is not None and rank > max_rank:
        raise InvalidModelError(f"the LoRA adapter's rank r={rank} is above the server's --max-lora-rank {max_rank}",
                                f"start vLLM with --max-lora-rank {rank} or more, or use an adapter of rank "
                                f"<= {max_rank}")
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        pickled = [p.name for p in files if p.suffix in (".bin", ".pt", ".pth")]
        held = f" (it holds {', '.join(sorted(pickled))}: pickled weights, which are not loaded)" if pickled else ""
        raise InvalidModelError(f"the LoRA adapter in {path} has no {ADAPTER_WEIGHTS}{held}", _FIX)
    header = read_header(weights, name=ADAPTER_WEIGHTS, max_header=MAX_ADAPTER_HEADER)
    if not any("lora_A" in name or "lora_B" in name for name in header.tensors):
        raise InvalidModelError(f"{ADAPTER_WEIGHTS} holds no lora_A / lora_B tensors "
                                f"({len(header.tensors)} tensors): not a LoRA adapter's weights", _FIX)
    base = config.get("base_model_name_or_path")
    return AdapterInfo(path, rank, base if isinstance(base, str) and base.strip() else None, len(header.tensors),
                       size)


def read_adapter_config(path: Path) -> dict[str, Any]:
    """adapter_config.json as a JSON object, read up to MAX_ADAPTER_CONFIG bytes."""
    config_path = path / ADAPTER_CONFIG
    try:
        with config_path.open("rb") as file:
            raw = file.read(MAX_ADAPTER_CONFIG + 1)
    except OSError as exc:
        raise InvalidModelError(f"cannot read {config_path}: {exc.strerror or exc}", _FIX) from exc
    if len(raw) > MAX_ADAPTER_CONFIG:
        raise InvalidModelError(f"{ADAPTER_CONFIG} is over {human(MAX_ADAPTER_CONFIG)} (PEFT writes about 1 KiB)",
                                _FIX)
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise InvalidModelError(f"{ADAPTER_CONFIG} is not JSON ({exc})", _FIX) from None
    if not isinstance(config, dict):
        raise InvalidModelError(f"{ADAPTER_CONFIG} is not a JSON object", _FIX)
    return config


def _short(name: str) -> str:
    """``meta-llama/Llama-3-8B``, ``oci://ghcr.io/acme/llama:3@sha256:...`` and ``/models/llama`` to their last
    path component without tag or digest, lower case: names typed differently for one model compare equal."""
    name = name.strip().removeprefix("oci://").split("@", 1)[0].rstrip("/")
    last = name.rsplit("/", 1)[-1]
    return re.sub(r":[\w][\w.-]*$", "", last).lower()


def base_model_mismatch(adapter_base: str | None, served: list[str]) -> str | None:
    """A warning when the adapter names a base model other than any of ``served`` (the names the server was started
    with); None when it names none, or one of them. Names are compared by their last component: the same model
    is often a Hugging Face id in the adapter and an OCI reference or a path on the server."""
    if adapter_base is None or not served:
        return None
    if _short(adapter_base) in {_short(name) for name in served if name}:
        return None
    return (f"the adapter was trained on {adapter_base!r}, and this server serves {', '.join(served)}: if they "
            "are not the same model, its answers will be wrong")
