"""The signature policy: with trusted keys (--verify-key, OCI_CRANE_VERIFY_KEYS, the vLLM loader's verify_key), a
model is served only if one of them signed its manifest digest, checked right after the digest is sourced and
before anything of the model is downloaded (fetching.py, pull.py's inspect).

Online the signatures come from the registry (cosign's ``sha256-<hex>.sig`` tag, through crane and the keychain,
like everything else); those that verify are kept in the cache, and --offline (or a registry outage, where the
cache serves the tag) verifies those again, with the keys in force then. A model whose signatures were never
cached is refused offline. Without keys nothing here runs: no request, no import of `cryptography`.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import errors
from .cosign import Layer, payload_problem, signature_layers, signature_tag

if TYPE_CHECKING:
    from ..cache.store import Store
    from ..reference import Reference
    from ..registry.crane import Crane
    from .keys import PublicKey

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyPolicy:
    """The trusted keys; none: no policy (the default)."""

    keys: tuple[PublicKey, ...] = ()

    @property
    def enforced(self) -> bool:
        return bool(self.keys)

    def names(self) -> str:
        return ", ".join(key.path for key in self.keys)


def verify_policy(paths: Sequence[str | Path]) -> VerifyPolicy:
    """The keys at ``paths``, each read and checked now: a bad key file is refused before any work."""
    if not paths:
        return VerifyPolicy()
    from .keys import load_public_key

    return VerifyPolicy(tuple(load_public_key(path) for path in dict.fromkeys(str(path) for path in paths)))


@dataclass(frozen=True)
class Signature:
    payload: bytes
    signature: bytes

    def to_json(self) -> dict[str, str]:
        return {"payload": base64.b64encode(self.payload).decode(),
                "signature": base64.b64encode(self.signature).decode()}


def require_signed(store: Store, crane: Crane, reference: Reference, digest: str, policy: VerifyPolicy) -> None:
    """Return if a trusted key signed ``digest`` for ``reference``'s repository; else SignatureError, which names
    the reference, the digest, what was found wrong and the fix."""
    if not policy.enforced:
        return
    pinned = reference.with_digest(digest)
    if crane.access.offline:
        cached = _cached(store, digest)
        if cached is None:
            raise errors.SignatureError(
                f"{reference} ({digest}): --offline and the cache holds no verified signature for it (a signature "
                "policy is in force)", "fetch it once online with the same --verify-key, so that its signature is "
                "kept in the cache")
        _check(reference, digest, cached, [], policy, where="the cache")
        return
    try:
        found, problems = _from_registry(store, crane, reference, digest)
    except errors.NetworkError as exc:
        cached = _cached(store, digest) if crane.access.outage_fallback else None
        if cached is None:
            raise
        log.warning("cannot reach %s for the signatures of %s (%s); verifying those the cache kept",
                    reference.registry, pinned, exc.cause)
        _check(reference, digest, cached, [], policy, where="the cache")
        return
    good = _check(reference, digest, found, problems, policy, where=f"{reference.repository_name}")
    store.save_signatures(digest, json.dumps({"signatures": [entry.to_json() for entry in good]}).encode())


def _check(reference: Reference, digest: str, found: list[Signature], problems: list[str], policy: VerifyPolicy,
           *, where: str) -> list[Signature]:
    """The signatures that a trusted key made over a payload that vouches for ``digest``; SignatureError if none."""
    good: list[Signature] = []
    problems = list(problems)
    for entry in found:
        if not any(key.verifies(entry.signature, entry.payload) for key in policy.keys):
            problems.append("a signature that none of the trusted keys made (another key, or a changed payload)")
            continue
        problem = payload_problem(entry.payload, digest, reference)
        if problem is not None:
            problems.append(problem)
            continue
        good.append(entry)
    if good:
        log.info("%s: %d signature(s) of %s by a trusted key", reference, len(good), digest)
        return good
    if not found and not problems:
        cause = f"no signature in {where} (cosign's tag {signature_tag(digest)} is missing)"
    else:
        cause = "no valid signature in " + where + ": " + "; ".join(dict.fromkeys(problems))
    raise errors.SignatureError(
        f"{reference} ({digest}) is not signed by a trusted key ({policy.names()}): {cause}",
        f"sign exactly this digest with the key whose public half you trust (cosign sign --key cosign.key "
        f"{reference.with_digest(digest)}, or oci-crane push --sign-key), or pass the right --verify-key")


def _from_registry(store: Store, crane: Crane, reference: Reference, digest: str) -> tuple[list[Signature],
                                                                                          list[str]]:
    """The signatures stored beside ``digest`` (cosign's .sig tag): [] when there is none."""
    from ..sourcing import check_document_size

    try:
        raw = crane.manifest(f"{reference.repository_name}:{signature_tag(digest)}")
    except errors.NotFoundError:
        return [], []
    check_document_size(len(raw), f"signature manifest of {reference}")
    layers, problems = signature_layers(raw)
    return [Signature(_payload(store, crane, reference, layer), layer.signature) for layer in layers], problems


def _payload(store: Store, crane: Crane, reference: Reference, layer: Layer) -> bytes:
    from ..digests import sha256_digest

    temp = store.temp_path("signature-payload")
    try:
        crane.blob(reference.with_digest(layer.digest), temp, size=layer.size)
        payload = temp.read_bytes()
    finally:
        temp.unlink(missing_ok=True)
    if sha256_digest(payload) != layer.digest:  # crane checks it too; a payload is what the signature covers
        raise errors.IntegrityError(f"signature payload {layer.digest} of {reference} does not match its digest")
    return payload


def _cached(store: Store, digest: str) -> list[Signature] | None:
    data = store.load_signatures(digest)
    if data is None:
        return None
    try:
        entries = json.loads(data)["signatures"]
        return [Signature(base64.b64decode(entry["payload"]), base64.b64decode(entry["signature"]))
                for entry in entries[:32]]
    except (ValueError, KeyError, TypeError, RecursionError):
        log.warning("the cached signatures of %s are damaged; ignoring them", digest)
        return None
