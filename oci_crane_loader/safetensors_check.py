"""Check safetensors weights before vLLM loads them.

vLLM fails late and cryptically on a truncated or hand-edited shard (often after minutes of loading), so we check
what we pulled up front and name the file and the exact problem. Only the JSON header is read, never tensor data:
shards are many GB, and the header plus the file size is enough to prove the layout is sound.

The rules are those of the Rust ``safetensors`` crate (``SafeTensors::read_metadata`` and ``Metadata::validate``
in safetensors/src/tensor.rs), which is what actually parses the file when vLLM opens it:

* the file starts with a little-endian u64 N (header length), N <= 100_000_000 and 8 + N <= file size;
* the N bytes after it are UTF-8 JSON: an object mapping tensor name -> {dtype, shape, data_offsets}, plus an
  optional ``__metadata__`` object of str -> str;
* each dtype is known, each shape entry a non-negative integer, and prod(shape) * bits(dtype) is a whole number
  of bytes equal to end - begin;
* sorted by (begin, end), the tensors tile the data section exactly: the first starts at 0, each starts where the
  previous ended, and the last ends at the end of the file.

We are stricter than the crate in one way: duplicate JSON keys are errors (the crate silently keeps one of them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError, field_validator

from oci_crane_loader.errors import InvalidModelError, describe_validation_error

__all__ = [
    "DTYPE_BITS",
    "INDEX_FILENAME",
    "MAX_HEADER_SIZE",
    "SafetensorsHeader",
    "SafetensorsIndex",
    "TensorInfo",
    "check_model_dir",
    "read_header",
    "read_index",
]

# Same cap as the crate: a larger "header length" means the file is not safetensors (or is corrupt), and we
# must not try to allocate it.
MAX_HEADER_SIZE = 100_000_000
INDEX_FILENAME = "model.safetensors.index.json"

# The crate stores sizes and offsets as usize; anything past u64 overflows there.
_U64_MAX = 2**64 - 1

# Element width in bits, from the crate's Dtype::bitsize(). Sub-byte dtypes (F4, F6_*) are packed, so a
# tensor's byte length is prod(shape) * bits / 8 and must come out whole.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One header entry. Validation covers everything that can be checked without the other tensors.

    A plain slotted dataclass, not a pydantic model: a header may list 1.7 M tensors, and each object counts.
    Raises ValueError naming the field."""

    dtype: str
    shape: list[int]
    data_offsets: tuple[int, int]

    def __post_init__(self) -> None:
        if not isinstance(self.dtype, str):
            raise ValueError(f"dtype must be a valid string, got {self.dtype!r}")
        if self.dtype not in DTYPE_BITS:
            raise ValueError(f"unknown dtype {self.dtype!r} (known: {', '.join(DTYPE_BITS)})")
        if not isinstance(self.shape, list):
            raise ValueError(f"shape must be a list of integers, got {self.shape!r}")
        for number, dim in enumerate(self.shape):
            # Strict ints: JSON 2.0, "2" or true must not pass as a dimension or an offset.
            if type(dim) is not int:
                raise ValueError(f"shape[{number}] must be a valid integer, got {dim!r}")
            if dim < 0:
                raise ValueError(f"shape {self.shape} has negative dimension {dim}")
            if dim > _U64_MAX:
                raise ValueError(f"shape {self.shape} has dimension {dim}, larger than 2**64 - 1")
        offsets = self.data_offsets
        if not isinstance(offsets, (list, tuple)) or len(offsets) != 2 or any(type(o) is not int for o in offsets):
            raise ValueError(f"data_offsets must be a list of two valid integers, got {offsets!r}")
        begin, end = offsets
        object.__setattr__(self, "data_offsets", (begin, end))
        if begin < 0 or end < 0 or begin > _U64_MAX or end > _U64_MAX:
            raise ValueError(f"data_offsets [{begin}, {end}] must be between 0 and 2**64 - 1")
        if end < begin:
            raise ValueError(f"data_offsets [{begin}, {end}] end before they begin")
        needed = self.nbytes
        if needed != end - begin:
            raise ValueError(
                f"data_offsets [{begin}, {end}] hold {end - begin} bytes but shape {self.shape} of {self.dtype} "
                f"needs {needed} bytes"
            )

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> TensorInfo:
        """From a header's JSON object; unknown keys are ignored, as the crate does."""
        for key in ("dtype", "shape", "data_offsets"):
            if key not in entry:
                raise ValueError(f"{key} is missing")
        return cls(entry["dtype"], entry["shape"], entry["data_offsets"])

    @property
    def nbytes(self) -> int:
        """Bytes the shape and dtype need. Raises ValueError where the crate would refuse to compute it."""
        # Fold like the crate's checked_mul: a product that passes 2**64 is an error even if a later dim is 0.
        elements = 1
        for dim in self.shape:
            elements *= dim
            if elements > _U64_MAX:
                raise ValueError(f"shape {self.shape} has more than 2**64 elements")
        bits = elements * DTYPE_BITS[self.dtype]
        if bits > _U64_MAX:
            raise ValueError(f"shape {self.shape} of {self.dtype} is larger than 2**64 bits")
        if bits % 8:
            raise ValueError(f"shape {self.shape} of {self.dtype} is {bits} bits, not a whole number of bytes")
        return bits // 8


@dataclass(frozen=True, slots=True)
class SafetensorsHeader:
    """A parsed, validated header. ``data_offsets`` are relative to ``data_start``. Raises ValueError."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] | None
    header_size: int

    def __post_init__(self) -> None:
        if type(self.header_size) is not int or not 0 <= self.header_size <= MAX_HEADER_SIZE:
            raise ValueError(f"header size {self.header_size} is outside 0..{MAX_HEADER_SIZE}")
        if self.metadata is not None:
            if not isinstance(self.metadata, dict):
                raise ValueError(f"metadata must be an object of strings, got {_json_type(self.metadata)}")
            for key, value in self.metadata.items():
                if not isinstance(value, str):
                    raise ValueError(f"metadata[{key!r}] must be a valid string, got {_json_type(value)}")
        # The crate's order: by (begin, end). Zero-length tensors may share an offset; anything else that
        # does not start exactly where the previous one ended is a gap or an overlap.
        expected, previous = 0, None
        for name, info in sorted(self.tensors.items(), key=lambda item: (item[1].data_offsets, item[0])):
            begin, end = info.data_offsets
            if begin > expected:
                after = f"tensor {previous!r} ends at {expected}" if previous is not None else "data starts at 0"
                raise ValueError(
                    f"tensor {name!r} starts at data offset {begin} but {after}: gap of {begin - expected} unused bytes"
                )
            if begin < expected:
                raise ValueError(
                    f"tensor {name!r} (data offsets [{begin}, {end}]) overlaps tensor {previous!r}, "
                    f"which ends at {expected}"
                )
            expected, previous = end, name

    @property
    def data_start(self) -> int:
        """Absolute file offset of the first data byte (8-byte length prefix + header)."""
        return 8 + self.header_size

    @property
    def data_size(self) -> int:
        """Bytes of tensor data the header describes; a valid file is exactly data_start + data_size long."""
        return max((info.data_offsets[1] for info in self.tensors.values()), default=0)


class SafetensorsIndex(BaseModel):
    """``model.safetensors.index.json``: which shard holds each tensor."""

    # Producers add their own keys; they are harmless.
    model_config = ConfigDict(extra="allow")

    metadata: dict[str, Any] | None = None
    weight_map: dict[StrictStr, StrictStr]

    @field_validator("weight_map")
    @classmethod
    def _plain_file_names(cls, weight_map: dict[str, str]) -> dict[str, str]:
        if not weight_map:
            raise ValueError("is empty: the index maps no tensors to files")
        for tensor, filename in weight_map.items():
            # Shards sit next to the index; anything else could point outside the model directory.
            if filename in ("", ".", "..") or any(c in filename for c in "/\\\0") or os.path.isabs(filename):
                raise ValueError(
                    f"tensor {tensor!r} maps to {filename!r}, which is not a plain file name next to the index "
                    "(no '/', '\\', '..', absolute or empty names)"
                )
        return weight_map

    @property
    def files(self) -> list[str]:
        """The distinct shard file names, sorted."""
        return sorted(set(self.weight_map.values()))


def read_header(path: str | os.PathLike[str], *, name: str | None = None,
                max_header: int = MAX_HEADER_SIZE) -> SafetensorsHeader:
    """Read and validate the header of one safetensors file against its real size.

    ``name`` is how errors refer to the file (default: its basename). ``max_header``: a tighter cap on the header's
    length, checked before a byte of it is read (parsing costs ~13x its size in memory: a LoRA adapter from an
    untrusted request gets a small one). Raises InvalidModelError.
    """
    path = Path(path)
    name = name or path.name
    document, header_size, file_size = _read_header_json(path, name, min(max_header, MAX_HEADER_SIZE))
    if document.duplicate is not None:
        what = "key" if document.duplicate == "__metadata__" else "tensor name"
        raise InvalidModelError(f"{name}: header has duplicate {what} {document.duplicate!r}")

    metadata = document.pop("__metadata__", None)
    if isinstance(metadata, _JsonObject) and metadata.duplicate is not None:
        raise InvalidModelError(f"{name}: __metadata__ has duplicate key {metadata.duplicate!r}")

    # Validate tensor by tensor so each error names its tensor; each parsed entry is dropped as soon as its
    # TensorInfo exists, so the JSON tree and the result are never both whole in memory.
    tensors: dict[str, TensorInfo] = {}
    for tensor in list(document):
        entry = document.pop(tensor)
        where = f"{name}: tensor {tensor!r}"
        if not isinstance(entry, _JsonObject):
            raise InvalidModelError(
                f"{where}: entry is {_json_type(entry)}, expected an object with dtype, shape and data_offsets"
            )
        if entry.duplicate is not None:
            raise InvalidModelError(f"{where}: entry has duplicate key {entry.duplicate!r}")
        try:
            tensors[tensor] = TensorInfo.from_json(entry)
        except ValueError as exc:
            raise InvalidModelError(f"{where}: {exc}") from None
    try:
        header = SafetensorsHeader(tensors, metadata, header_size)
    except ValueError as exc:
        raise InvalidModelError(f"{name}: {exc}") from None

    # The crate requires the tensors to end exactly at the end of the file.
    available = file_size - header.data_start
    if header.data_size > available:
        raise InvalidModelError(
            f"{name}: tensors need {header.data_size} bytes of data but only {available} bytes follow the header "
            f"(file truncated by {header.data_size - available} bytes)"
        )
    if header.data_size < available:
        raise InvalidModelError(
            f"{name}: {available - header.data_size} trailing bytes after the last tensor (tensors cover "
            f"{header.data_size} of the {available} data bytes)"
        )
    return header


def _read_header_json(path: Path, name: str, limit: int) -> tuple[_JsonObject, int, int]:
    """The header's JSON object, its length and the file's size. The raw bytes and text are gone on return."""
    try:
        with path.open("rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            if file_size < 8:
                raise InvalidModelError(
                    f"{name}: file is {file_size} bytes, too short for the 8-byte header length (truncated download?)"
                )
            header_size = int.from_bytes(f.read(8), "little")
            if header_size > limit:
                raise InvalidModelError(
                    f"{name}: header length field says {header_size} bytes, over the {limit}-byte limit "
                    "(not a safetensors file, or corrupt)"
                )
            if 8 + header_size > file_size:
                raise InvalidModelError(
                    f"{name}: header length field says {header_size} bytes but only {file_size - 8} bytes follow "
                    "(truncated file, or not a safetensors file)"
                )
            raw = f.read(header_size)
    except OSError as exc:
        raise InvalidModelError(f"{name}: cannot read file: {exc.strerror or exc}") from exc
    if len(raw) != header_size:
        raise InvalidModelError(f"{name}: file shrank while reading its {header_size}-byte header")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidModelError(f"{name}: header is not valid UTF-8 (bad byte at file offset {8 + exc.start})") from exc
    del raw
    document = _loads(text, f"{name}: header")
    if not isinstance(document, _JsonObject):
        raise InvalidModelError(f"{name}: header JSON is {_json_type(document)}, expected an object")
    return document, header_size, file_size


def read_index(path: str | os.PathLike[str], *, name: str | None = None) -> SafetensorsIndex:
    """Read and validate ``model.safetensors.index.json`` (its shape only; see check_model_dir for the files)."""
    path = Path(path)
    name = name or path.name
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidModelError(f"{name}: cannot read file: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidModelError(f"{name}: not valid UTF-8 (bad byte at offset {exc.start})") from exc
    document = _loads(text, name)
    if not isinstance(document, _JsonObject):
        raise InvalidModelError(f"{name}: JSON is {_json_type(document)}, expected an object")
    if document.duplicate is not None:
        raise InvalidModelError(f"{name}: duplicate key {document.duplicate!r}")
    weight_map = document.get("weight_map")
    # A tensor listed twice is ambiguous: which shard would vLLM read it from?
    if isinstance(weight_map, _JsonObject) and weight_map.duplicate is not None:
        raise InvalidModelError(f"{name}: weight_map lists tensor {weight_map.duplicate!r} more than once")
    return _validate(SafetensorsIndex, document, name)


def check_model_dir(path: str | os.PathLike[str]) -> list[str]:
    """Validate every safetensors file under ``path`` and the index, if any; return the weight files.

    Every ``*.safetensors`` file (recursively) must have a valid header. With ``model.safetensors.index.json``,
    every file it names must exist and hold the tensors it maps there, and the index's files are returned;
    without an index, the top-level ``*.safetensors`` files are. Paths are relative to ``path``, POSIX-style,
    sorted. An empty list means there are no safetensors weights; whether that is an error is the caller's call.
    """
    root = Path(path)
    if not root.is_dir():
        raise InvalidModelError(f"{root}: not a directory")

    found = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.safetensors") if p.is_file())
    index_path = root / INDEX_FILENAME
    index = read_index(index_path, name=INDEX_FILENAME) if index_path.exists() else None
    # One header at a time: a header can be ~100 MB of JSON, and a model has many shards. Of each we keep only
    # the index's tensors that it lacks.
    mapped: dict[str, list[str]] = {}
    for tensor, filename in (index.weight_map.items() if index is not None else ()):
        mapped.setdefault(filename, []).append(tensor)
    absent: dict[str, list[str]] = {}
    for rel in found:
        absent[rel] = _absent(read_header(root / rel, name=rel), mapped.get(rel, []))
    if index is None:
        return [rel for rel in found if "/" not in rel]

    missing = [f for f in index.files if not (root / f).is_file()]
    if missing:
        raise InvalidModelError(
            f"{INDEX_FILENAME}: names {len(missing)} file(s) that do not exist: {_preview(missing)}",
            fix="pull the model again: some shards were not downloaded or were not part of the artifact",
        )
    for filename in index.files:
        # Shards without the .safetensors suffix were not read above.
        lacking = absent[filename] if filename in absent else _absent(
            read_header(root / filename, name=filename), mapped[filename])
        if lacking:
            raise InvalidModelError(
                f"{INDEX_FILENAME}: maps {len(lacking)} tensor(s) to {filename} that it does not contain: "
                f"{_preview(lacking)}",
                fix="the index and the shards come from different exports: re-export the model and push it again",
            )
    return index.files


def _absent(header: SafetensorsHeader, tensors: list[str]) -> list[str]:
    return [tensor for tensor in tensors if tensor not in header.tensors]


# --- helpers ---------------------------------------------------------------------------------------------------


class _JsonObject(dict[str, Any]):
    """A JSON object that remembers its first duplicate key (json.loads would silently keep the last one)."""

    duplicate: str | None = None


def _object_hook(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject()
    for key, value in pairs:
        _require_encodable(key)
        if isinstance(value, str):
            _require_encodable(value)
        if key in obj and obj.duplicate is None:
            obj.duplicate = key
        obj[key] = value
    return obj


def _require_encodable(text: str) -> None:
    # Python accepts escaped lone surrogates ("\ud800"); serde_json, and so the crate, rejects them.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"string {text!r} contains an unpaired surrogate escape") from exc


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_object_hook, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise InvalidModelError(f"{where} is not valid JSON: nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, our hooks, and int-too-long-to-parse all land here
        raise InvalidModelError(f"{where} is not valid JSON: {exc}") from exc


_Model = TypeVar("_Model", bound=BaseModel)


def _validate(model: type[_Model], data: Any, where: str) -> _Model:
    """model.model_validate, with a ValidationError turned into InvalidModelError naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidModelError(f"{where}: {describe_validation_error(exc)}") from None


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def _preview(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(item) for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
