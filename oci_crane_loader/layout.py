"""Write OCI image layouts (oci-layout, index.json, blobs/) byte for byte, for `crane push DIR REF`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .files import link_or_copy
from .oci import OCI_INDEX, OCI_LAYOUT_VERSION, OCI_MANIFEST, digest_hex, sha256_digest
from .store import file_sha256


def canonical_json(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=False).encode()


@dataclass
class LayoutWriter:
    root: Path
    descriptors: list[dict[str, object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION}))

    def _blob(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest_hex(digest)

    def add_bytes(self, media_type: str, data: bytes, annotations: dict[str, str] | None = None) -> dict[str, object]:
        digest = sha256_digest(data)
        self._blob(digest).write_bytes(data)
        return _descriptor(media_type, digest, len(data), annotations)

    def add_file(self, media_type: str, path: Path, annotations: dict[str, str] | None = None) -> dict[str, object]:
        """Large files are hashed in chunks and hard-linked, never read into memory or copied."""
        digest = file_sha256(path)
        if not self._blob(digest).exists():
            link_or_copy(path, self._blob(digest))
        return _descriptor(media_type, digest, path.stat().st_size, annotations)

    def add_manifest(self, config: dict[str, object], layers: list[dict[str, object]],
                     artifact_type: str | None = None, annotations: dict[str, str] | None = None,
                     platform: dict[str, str] | None = None) -> str:
        """Add a manifest and list it in index.json (with ``platform``, for multi-platform pushes with --index)."""
        manifest: dict[str, object] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
        if artifact_type:
            manifest["artifactType"] = artifact_type
        manifest["config"] = config
        manifest["layers"] = layers
        if annotations:
            manifest["annotations"] = annotations
        descriptor = self.add_bytes(OCI_MANIFEST, canonical_json(manifest))
        if platform:
            descriptor["platform"] = platform
        self.descriptors.append(descriptor)
        (self.root / "index.json").write_bytes(
            canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.descriptors}))
        return str(descriptor["digest"])


def _descriptor(media_type: str, digest: str, size: int, annotations: dict[str, str] | None) -> dict[str, object]:
    descriptor: dict[str, object] = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations:
        descriptor["annotations"] = annotations
    return descriptor
