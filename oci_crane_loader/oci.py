"""pydantic models for OCI / Docker distribution documents, and the media types we act on.

Unknown fields are tolerated (registries and tools add their own); wrong types are refused with the field named.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from .digests import digest_hex as digest_hex  # re-exported: their old home
from .digests import sha256_digest as sha256_digest
from .errors import InvalidDocumentError, describe_validation_error

# Manifests and indexes
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = {OCI_INDEX, DOCKER_MANIFEST_LIST}
MANIFEST_TYPES = {OCI_MANIFEST, DOCKER_MANIFEST}
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYOUT_VERSION = "1.0.0"

# Annotations
TITLE = "org.opencontainers.image.title"

Digest = Annotated[str, StringConstraints(pattern=r"^sha256:[a-f0-9]{64}$")]
MAX_SIZE = 2**63 - 1  # the spec's int64; a larger size is a lie that would overflow float arithmetic (progress)


class Document(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True, defer_build=True)


class Platform(Document):
    architecture: str
    os: str
    variant: str | None = None
    os_version: str | None = Field(default=None, alias="os.version")

    def __str__(self) -> str:
        return "/".join(part for part in (self.os, self.architecture, self.variant) if part)


class Descriptor(Document):
    media_type: str = Field(alias="mediaType")
    digest: Digest
    size: int = Field(ge=0, le=MAX_SIZE)
    annotations: dict[str, str] = Field(default_factory=dict)
    platform: Platform | None = None
    artifact_type: str | None = Field(default=None, alias="artifactType")
    urls: list[str] | None = None


class Manifest(Document):
    schema_version: Literal[2] = Field(alias="schemaVersion")
    media_type: str | None = Field(default=None, alias="mediaType")
    artifact_type: str | None = Field(default=None, alias="artifactType")
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str] = Field(default_factory=dict)
    subject: Descriptor | None = None


class Index(Document):
    schema_version: Literal[2] = Field(alias="schemaVersion")
    media_type: str | None = Field(default=None, alias="mediaType")
    artifact_type: str | None = Field(default=None, alias="artifactType")
    manifests: list[Descriptor]
    annotations: dict[str, str] = Field(default_factory=dict)


MAX_JSON_DEPTH = 200  # real manifests and configs nest a handful of levels


def _too_deep(data: Any) -> bool:
    """Whether ``data`` nests past MAX_JSON_DEPTH, walked without recursion (the point is not to recurse)."""
    stack = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return False


def load_json(raw: bytes, what: str) -> Any:
    """The document as Python data; anything a hostile registry can serve becomes one InvalidDocumentError.
    Depth is bounded by MAX_JSON_DEPTH, not by the interpreter: Python 3.13 parses 5000 levels that 3.11 refuses."""
    try:
        data = json.loads(raw)
    except RecursionError as exc:  # e.g. 100 000 nested arrays
        raise InvalidDocumentError(f"{what} is not valid JSON: it is nested too deeply", raw=raw) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidDocumentError(f"{what} is not valid JSON: {exc}", raw=raw) from exc
    except ValueError as exc:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise InvalidDocumentError(f"{what} is not valid JSON: a number too long ({exc})", raw=raw) from exc
    if _too_deep(data):
        raise InvalidDocumentError(f"{what} is not valid JSON: it is nested too deeply (over {MAX_JSON_DEPTH} "
                                   "levels)", raw=raw)
    return data


_Model = TypeVar("_Model", bound=BaseModel)


def parse_model(model: type[_Model], data: Any, what: str, *, raw: bytes | None = None) -> _Model:
    """``data`` as ``model``; a problem becomes one InvalidDocumentError naming the field (and keeping ``raw``)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidDocumentError(f"invalid {what}: {describe_validation_error(exc)}", raw=raw) from exc


def parse_document(model: type[_Model], raw: bytes, what: str) -> _Model:
    """A JSON document's bytes as ``model``; anything wrong is one InvalidDocumentError that keeps the bytes."""
    return parse_model(model, load_json(raw, what), what, raw=raw)


def parse_manifest_or_index(raw: bytes, what: str = "manifest") -> Manifest | Index:
    """Decide by mediaType, else by shape (older documents omit mediaType)."""
    data = load_json(raw, what)
    if not isinstance(data, dict):
        raise InvalidDocumentError(f"invalid {what}: expected a JSON object", raw=raw)
    media_type = data.get("mediaType")
    if media_type is not None and not isinstance(media_type, str):  # e.g. a list: unhashable; refused below
        media_type = None
    if media_type in INDEX_TYPES or (media_type is None and "manifests" in data and "layers" not in data):
        return parse_model(Index, data, f"{what} (image index)", raw=raw)
    if media_type not in (None, *MANIFEST_TYPES) and "layers" not in data:
        raise InvalidDocumentError(f"unsupported {what} media type {media_type!r}", raw=raw)
    return parse_model(Manifest, data, what, raw=raw)
