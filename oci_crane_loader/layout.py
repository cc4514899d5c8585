"""Write OCI image layouts (oci-layout, index.json, blobs/) byte for byte, for `crane push DIR REF`.

Every document is one of the pydantic models the readers parse (oci.py, formats/), dumped by ``dump_document``:
what is written is what `fetch` reads back.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from .files import copy_fd, fd_sha256, link_fd, unique_name
from .oci import (
    OCI_INDEX,
    OCI_LAYOUT_VERSION,
    OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
    digest_hex,
    parse_model,
    sha256_digest,
)

log = logging.getLogger(__name__)


def canonical_json(document: object) -> bytes:
    """Compact JSON, keys in the order given: the bytes Go's encoding/json writes for the same struct."""
    return json.dumps(document, separators=(",", ":"), sort_keys=False).encode()


def dump_document(document: BaseModel) -> bytes:
    """A model as compact JSON, fields in the model's order; fields never set are left out (Go's omitempty)."""
    return canonical_json(document.model_dump(mode="json", by_alias=True, exclude_unset=True))


@dataclass
class LayoutWriter:
    """Blobs, manifests and index.json of one layout. An existing index.json is kept and added to, so several
    packs into one directory make one multi-platform index (``platform`` tells them apart)."""

    root: Path
    descriptors: list[Descriptor] = field(default_factory=list)

    def __post_init__(self) -> None:
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
        index = self.root / "index.json"
        if index.exists():
            self.descriptors = list(parse_model(Index, json.loads(index.read_bytes()), str(index)).manifests)

    def _blob(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest_hex(digest)

    def add_bytes(self, media_type: str, data: bytes, annotations: dict[str, str] | None = None) -> Descriptor:
        digest = sha256_digest(data)
        self._blob(digest).write_bytes(data)
        return _descriptor(media_type, digest, len(data), annotations)

    def add_document(self, media_type: str, document: BaseModel) -> Descriptor:
        """A config or manifest, written as ``dump_document`` writes it."""
        return self.add_bytes(media_type, dump_document(document))

    def add_file(self, media_type: str, path: Path, annotations: dict[str, str] | None = None) -> Descriptor:
        """Large files are hashed in chunks and hard-linked, never read into memory or copied."""
        fd = os.open(path, os.O_RDONLY)
        try:
            return self.add_open_file(media_type, fd, path, annotations)
        finally:
            os.close(fd)

    def add_open_file(self, media_type: str, fd: int, shown: Path,
                      annotations: dict[str, str] | None = None) -> Descriptor:
        """The open file ``fd`` (``shown``: its path, for messages and where /proc is missing) as a blob: hard-linked
        from the descriptor and hashed from it (copied while hashed where it cannot be linked), so the blob is the
        file that was opened, whatever its name leads to by now."""
        incoming = self.root / "blobs" / "sha256" / unique_name("incoming")
        try:
            try:
                link_fd(fd, shown, incoming)
            except OSError as exc:
                log.debug("cannot hard-link %s into the layout (%s); copying", shown, exc.strerror)
                digest = str(copy_fd(fd, incoming, hashing=True))
            else:
                digest = fd_sha256(fd)
            size = incoming.stat().st_size
            if self._blob(digest).exists():
                incoming.unlink()
            else:
                os.replace(incoming, self._blob(digest))
        finally:
            incoming.unlink(missing_ok=True)
        return _descriptor(media_type, digest, size, annotations)

    def add_manifest(self, config: Descriptor, layers: list[Descriptor], artifact_type: str | None = None,
                     annotations: dict[str, str] | None = None, platform: dict[str, str] | None = None) -> str:
        """Add a manifest and list it in index.json (with ``platform``, for multi-platform pushes with --index)."""
        fields: dict[str, object] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
        if artifact_type:
            fields["artifactType"] = artifact_type
        fields |= {"config": config, "layers": layers}
        if annotations:
            fields["annotations"] = annotations
        data = dump_document(Manifest.model_validate(fields))
        self._blob(sha256_digest(data)).write_bytes(data)
        descriptor = _descriptor(OCI_MANIFEST, sha256_digest(data), len(data), None, platform)
        self.descriptors.append(descriptor)
        self.write_index()
        return descriptor.digest

    def write_index(self) -> None:
        """index.json listing ``descriptors``."""
        index = Index.model_validate({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.descriptors})
        (self.root / "index.json").write_bytes(dump_document(index))


def _descriptor(media_type: str, digest: str, size: int, annotations: dict[str, str] | None,
                platform: dict[str, str] | None = None) -> Descriptor:
    fields: dict[str, object] = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations:
        fields["annotations"] = annotations
    if platform:
        fields["platform"] = platform
    return Descriptor.model_validate(fields)
