"""cosign 3's signatures: a sigstore bundle (``application/vnd.dev.sigstore.bundle.v0.3+json``) pushed as an OCI 1.1
referrer of the signed manifest. With a key, the bundle holds a DSSE envelope whose payload is an in-toto
statement naming the digest (``subject[].digest.sha256``) with predicate type ``https://sigstore.dev/cosign/sign/v1``;
the signature is over DSSE's pre-authentication encoding (PAE) of the payload.

Read through the referrers API (GET /v2/<repo>/referrers/<digest>, registry/transfer.py: crane has no command for
it), else the tag-schema fallback (an index tagged ``sha256-<hex>``). Hostile until verified: at most
MAX_BUNDLES bundle referrers are read, each bundle at most MAX_BUNDLE bytes, the index at most MAX_INDEX.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from typing import TYPE_CHECKING

from .. import errors
from ..digests import sha256_digest

if TYPE_CHECKING:
    from ..reference import Reference
    from ..registry.crane import Crane

BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
IN_TOTO_PAYLOAD = "application/vnd.in-toto+json"
MAX_BUNDLES = 16  # bundle referrers read at most: a flood of referrers costs nothing past this
MAX_BUNDLE = 256 << 10  # a key-signed bundle is a few kilobytes
MAX_INDEX = 1 << 20  # the referrers index


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a DSSE signature is over."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def referrer_manifests(crane: Crane, reference: Reference, digest: str) -> tuple[list[str], list[str]]:
    """The digests of up to MAX_BUNDLES bundle referrers of ``digest`` (API, else the tag schema), and notes."""
    from ..registry import transfer
    from ..sourcing import tag_manifest, upstream_allowed

    found: bytes | None = None
    if upstream_allowed(crane, reference):  # the API at the registry itself; never one the node blocks
        with contextlib.suppress(errors.NotFoundError):  # no referrers API: the tag schema's index, if any
            found = transfer.get_referrers(crane, reference, digest, MAX_INDEX)
    if found is None:
        found = tag_manifest(crane, reference, digest.replace(":", "-"))  # through the mirrors too
        if found is None:
            return [], []
    raw = found
    try:
        manifests = json.loads(raw).get("manifests") or []
    except (ValueError, RecursionError, AttributeError):
        return [], ["a referrers index that is not JSON"]
    bundles = [str(entry["digest"]) for entry in manifests if isinstance(entry, dict)
               and entry.get("artifactType") == BUNDLE_TYPE and isinstance(entry.get("digest"), str)]
    notes = [f"{len(bundles) - MAX_BUNDLES} bundles past the first {MAX_BUNDLES}"] if len(bundles) > MAX_BUNDLES else []
    return bundles[:MAX_BUNDLES], notes


def read_bundle(crane: Crane, reference: Reference, manifest_digest: str) -> bytes:
    """The bundle blob of one referrer manifest, size-capped; InvalidDocumentError when it is not one."""
    from ..sourcing import digest_manifest, small_blob

    raw = digest_manifest(crane, reference, manifest_digest)
    if sha256_digest(raw) != manifest_digest or len(raw) > MAX_INDEX:
        raise errors.InvalidDocumentError(f"referrer {manifest_digest} of {reference} does not match its digest")
    try:
        layers = json.loads(raw)["layers"]
        layer = next(layer for layer in layers if layer.get("mediaType") == BUNDLE_TYPE)
        blob, size = str(layer["digest"]), layer["size"]
    except (ValueError, RecursionError, KeyError, TypeError, AttributeError, StopIteration):
        raise errors.InvalidDocumentError(f"referrer {manifest_digest} of {reference} holds no bundle") from None
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_BUNDLE:
        raise errors.InvalidDocumentError(f"the bundle of referrer {manifest_digest} is {size!r} bytes (at most "
                                          f"{MAX_BUNDLE})")
    data = small_blob(crane, reference, blob, size)
    if len(data) > MAX_BUNDLE or sha256_digest(data) != blob:
        raise errors.InvalidDocumentError(f"the bundle of referrer {manifest_digest} does not match its descriptor")
    return data


def envelope(bundle: bytes) -> tuple[bytes, bytes, bytes] | str:
    """(PAE bytes signed, signature, statement) of a key-signed bundle's DSSE envelope, or why it is not one."""
    try:
        document = json.loads(bundle)
        dsse = document["dsseEnvelope"]
        payload = base64.b64decode(dsse["payload"], validate=True)
        payload_type = dsse["payloadType"]
        signature = base64.b64decode(dsse["signatures"][0]["sig"], validate=True)
    except (ValueError, RecursionError, KeyError, TypeError, IndexError, binascii.Error):
        return "a bundle without a DSSE envelope (keyless message signatures are not read)"
    if not isinstance(payload_type, str):
        return "a bundle whose DSSE payload type is not text"
    return pae(payload_type, payload), signature, payload


def statement_problem(statement: bytes, digest: str) -> str | None:
    """Why a (validly signed) in-toto statement does not vouch for ``digest``; None if it does."""
    try:
        document = json.loads(statement)
        kind, predicate, subjects = document["_type"], document["predicateType"], document["subject"]
        named = [subject["digest"].get("sha256") for subject in subjects]
    except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
        return "a signed bundle whose payload is not an in-toto statement"
    if kind != STATEMENT_TYPE or predicate != SIGN_PREDICATE:
        return f"a signed statement of predicate {str(predicate)[:100]!r}, not cosign's signature"
    if digest.removeprefix("sha256:") not in named:
        return "a bundle signature for another manifest"
    return None
