"""cosign's signatures as `cosign sign --key` (cosign 2; cosign 3 with --new-bundle-format=false) stores them: an
image tagged ``sha256-<hex>.sig`` in the model's repository, one layer per signature, each layer a simple-signing
payload (JSON naming the signed manifest digest and repository) with the base64 signature over the payload's
bytes in the layer annotation ``dev.cosignproject.cosign/signature``.

Standard library only; the documents are small and hostile until verified, so sizes and counts are capped.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from ..reference import Reference, parse_reference

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PAYLOAD_TYPE = "cosign container image signature"
MAX_SIGNATURES = 32  # layers of one .sig image read at most: a flood of signatures costs nothing past this
MAX_PAYLOAD = 64 << 10  # a payload is a few hundred bytes
MAX_SIGNATURE = 8 << 10  # base64 of an RSA-4096 signature is ~700 bytes


def signature_tag(digest: str) -> str:
    """cosign's tag for the signatures of ``digest``: ``sha256:abc`` -> ``sha256-abc.sig``."""
    return digest.replace(":", "-") + ".sig"


@dataclass(frozen=True)
class Layer:
    """One signature layer of a .sig manifest, not yet fetched or checked."""

    digest: str
    size: int
    signature: bytes


def signature_layers(raw: bytes) -> tuple[list[Layer], list[str]]:
    """The simple-signing layers of a .sig manifest (at most MAX_SIGNATURES), and why any other was passed over."""
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        return [], ["the signature manifest is not JSON"]
    layers = document.get("layers") if isinstance(document, dict) else None
    if not isinstance(layers, list):
        return [], ["the signature manifest has no layers"]
    found: list[Layer] = []
    skipped: list[str] = []
    for layer in layers[:MAX_SIGNATURES]:
        if not isinstance(layer, dict) or layer.get("mediaType") != SIMPLE_SIGNING:
            skipped.append("a layer that is not a simple-signing payload")
            continue
        digest, size, annotations = layer.get("digest"), layer.get("size"), layer.get("annotations")
        text = annotations.get(SIGNATURE_ANNOTATION) if isinstance(annotations, dict) else None
        if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
            skipped.append("a layer without a sha256 digest")
        elif isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_PAYLOAD:
            skipped.append(f"a payload of {size!r} bytes (at most {MAX_PAYLOAD})")
        elif not isinstance(text, str) or not text or len(text) > MAX_SIGNATURE:
            skipped.append(f"a layer without a {SIGNATURE_ANNOTATION} annotation")
        else:
            try:
                found.append(Layer(digest, size, base64.b64decode(text, validate=True)))
            except (binascii.Error, ValueError):
                skipped.append("a signature that is not base64")
    if len(layers) > MAX_SIGNATURES:
        skipped.append(f"{len(layers) - MAX_SIGNATURES} signatures past the first {MAX_SIGNATURES}")
    return found, skipped


def payload_problem(payload: bytes, digest: str, reference: Reference) -> str | None:
    """Why a (validly signed) payload does not vouch for ``digest`` in ``reference``'s repository; None if it does."""
    try:
        document = json.loads(payload)
        critical = document["critical"]
        signed = critical["image"]["docker-manifest-digest"]
        named = critical["identity"]["docker-reference"]
        kind = critical["type"]
    except (ValueError, RecursionError, KeyError, TypeError):
        return "a signed payload that is not a cosign simple-signing document"
    if kind != PAYLOAD_TYPE:
        return f"a signed payload of type {str(kind)[:80]!r}, not {PAYLOAD_TYPE!r}"
    if signed != digest:
        return f"a signature for another manifest ({str(signed)[:80]})"
    if not _same_repository(named, reference):
        return f"a signature for another repository ({str(named)[:200]})"
    return None


def _same_repository(named: object, reference: Reference) -> bool:
    if not isinstance(named, str) or not named:
        return False
    try:  # the registry's aliases (docker.io, index.docker.io) and library/ are normalised as for any reference
        parsed = parse_reference(named.partition("@")[0])
    except ValueError:
        return False
    return parsed.repository_name == reference.repository_name


def make_payload(reference: Reference, digest: str) -> bytes:
    """The payload `cosign sign` writes for ``digest`` in ``reference``'s repository, byte for byte as Go's
    encoding/json writes sigstore's payload.SimpleContainerImage."""
    document = {"critical": {"identity": {"docker-reference": reference.repository_name},
                             "image": {"docker-manifest-digest": digest}, "type": PAYLOAD_TYPE},
                "optional": None}
    return json.dumps(document, separators=(",", ":")).encode()
