"""sha256 digests as OCI writes them (``sha256:<64 hex>``): standard library only, so that the cache and a cached
fetch never load the pydantic models of oci.py."""

from __future__ import annotations

import hashlib
import re

from .errors import InvalidDocumentError

_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_hex(digest: str) -> str:
    if not _DIGEST.fullmatch(digest):
        raise InvalidDocumentError(f"unsupported digest {digest!r}: only sha256:<64 hex> is accepted")
    return digest.split(":", 1)[1]


def is_digest(text: object) -> bool:
    """Whether ``text`` is a ``sha256:<64 hex>`` digest (for values read back from disk)."""
    return isinstance(text, str) and _DIGEST.fullmatch(text) is not None
