"""The signature policy: with trusted keys (--verify-key, OCI_CRANE_VERIFY_KEYS, the vLLM loader's verify_key), a
model is served only if one of them signed its manifest digest, checked right after the digest is sourced and
before anything of the model is downloaded (fetching.py, pull.py's inspect).

Online the signatures come from the registry: cosign's ``sha256-<hex>.sig`` tag (through crane and the keychain,
like everything else), and only when it holds no valid one, the sigstore bundles among the digest's OCI 1.1
referrers (bundles.py: cosign 3's default); those that verify are kept in the cache, and --offline (or a
registry outage, where the cache serves the tag) verifies those again, with the keys in force then. A model
whose signatures were never cached is refused offline. Without keys nothing here runs: no request, no import of
`cryptography`. Where no cosign signature vouches for the manifest, an OpenSSF model-signing bundle a trusted key
signed may (openssf.py): require_signed then returns it, and the model's files are held to it.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import errors
from ..sourcing import small_blob, tag_manifest
from . import VerifyPolicy, openssf
from .bundles import envelope, read_bundle, referrer_manifests, statement_problem
from .cosign import MAX_SIGNATURES, Layer, payload_problem, signature_layers, signature_tag

if TYPE_CHECKING:
    from ..cache.store import Store
    from ..reference import Reference
    from ..registry.crane import Crane
    from .openssf import FileBundle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Signature:
    """One signature as read: the bytes a key signed, the signature, and the statement those bytes carry (for
    cosign's tag scheme both are the simple-signing payload; for a bundle, DSSE's PAE and its in-toto statement)."""

    signed: bytes
    signature: bytes
    statement: bytes
    kind: str = "cosign"  # or "bundle"

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, **{name: base64.b64encode(getattr(self, name)).decode()
                                      for name in ("signed", "signature", "statement")}}

    def problem(self, digest: str, reference: Reference) -> str | None:
        if self.kind == "bundle":
            return statement_problem(self.statement, digest)
        return payload_problem(self.statement, digest, reference)


def require_signed(store: Store, crane: Crane, reference: Reference, digest: str,
                   policy: VerifyPolicy) -> FileBundle | None:
    """Return if a trusted key signed ``digest`` for ``reference``'s repository (None), or, failing that, signed a
    model-signing bundle among its files (openssf.py: the bundle, which the files fetched must then match); else
    SignatureError, which names the reference, the digest, what was found wrong and the fix."""
    if not policy.enforced:
        return None
    refused: errors.SignatureError | errors.NetworkError
    spare: list[tuple[str, bytes]] = []  # model-signing bundles among the referrers, read once
    try:
        _require_manifest_signature(store, crane, reference, digest, policy, spare)
        return None
    except errors.SignatureError as exc:
        refused = exc
    except errors.NetworkError as exc:  # an outage and no cosign signature kept: a bundle the cache kept may do
        if not crane.access.outage_fallback:
            raise
        refused = exc
    outage = isinstance(refused, errors.NetworkError)
    try:
        bundle, notes = openssf.up_front(store, crane, reference, digest, policy.keys, cache_only=outage,
                                         referrers=spare)
    except errors.NetworkError:
        if not crane.access.outage_fallback:
            raise
        outage = True
        bundle, notes = openssf.up_front(store, crane, reference, digest, policy.keys, cache_only=True)
    if bundle is None:
        if isinstance(refused, errors.NetworkError):
            if any(note.startswith(openssf.UNCACHED) for note in notes):
                raise refused  # nothing to judge without the registry
            raise errors.SignatureError(f"{reference} ({digest}) is not signed by a trusted key ({policy.names()}): "
                                        f"the registry is unreachable, and in the cache: {'; '.join(notes)}",
                                        openssf.SIGN_FIX)
        raise errors.SignatureError(f"{refused.cause}; {'; '.join(notes)}", f"{refused.fix}; or {openssf.SIGN_FIX}")
    if outage:
        log.warning("cannot reach %s for the signatures of %s; verifying the model-signing bundle the cache kept",
                    reference.registry, reference.with_digest(digest))
    log.info("%s: no cosign signature, but a model-signing bundle (%s) signed by %s: its files are checked "
             "against it", reference, bundle.name, bundle.key.path)
    return bundle


def _require_manifest_signature(store: Store, crane: Crane, reference: Reference, digest: str,
                                policy: VerifyPolicy, spare: list[tuple[str, bytes]]) -> None:
    if crane.access.offline:
        cached = _cached(store, digest)
        if cached is None:
            raise errors.SignatureError(
                f"{reference} ({digest}): --offline and the cache holds no verified signature for it (a signature "
                "policy is in force)", "fetch it once online with the same --verify-key, so that its signature is "
                "kept in the cache")
        _require(reference, digest, *_sort(reference, digest, cached, policy), policy, where="the cache")
        return
    try:
        good, problems = _online(store, crane, reference, digest, policy, spare)
    except errors.NetworkError as exc:
        cached = _cached(store, digest) if crane.access.outage_fallback else None
        if cached is None:
            raise
        log.warning("cannot reach %s for the signatures of %s (%s); verifying those the cache kept",
                    reference.registry, reference.with_digest(digest), exc.cause)
        _require(reference, digest, *_sort(reference, digest, cached, policy), policy, where="the cache")
        return
    _require(reference, digest, good, problems, policy, where=reference.repository_name)
    store.save_signatures(digest, json.dumps({"signatures": [entry.to_json() for entry in good]}).encode())


def _online(store: Store, crane: Crane, reference: Reference, digest: str, policy: VerifyPolicy,
            spare: list[tuple[str, bytes]]) -> tuple[list[Signature], list[str]]:
    """cosign's .sig tag first (cosign 2's default: one manifest); the referrers' bundles (cosign 3's default) only
    when that holds no valid signature."""
    found, problems = _from_sig_tag(store, crane, reference, digest)
    good, wrong = _sort(reference, digest, found, policy)
    if good:
        return good, []
    if not found:
        problems.append(f"cosign's tag {signature_tag(digest)} is missing")
    try:
        bundles, notes = _from_referrers(crane, reference, digest, spare)
    except errors.NetworkError:
        raise
    except errors.OciCraneError as exc:  # a broken referrers road never hides the .sig tag's answer
        bundles, notes = [], [f"the referrers could not be read ({exc.cause})"]
    if not bundles and not notes:
        notes = ["no sigstore bundle among its referrers"]
    good, wrong_bundles = _sort(reference, digest, bundles, policy)
    return good, [*problems, *wrong, *notes, *wrong_bundles]


def _sort(reference: Reference, digest: str, found: list[Signature],
          policy: VerifyPolicy) -> tuple[list[Signature], list[str]]:
    """The signatures a trusted key made over a statement that vouches for ``digest``, and why each other fails."""
    good: list[Signature] = []
    problems: list[str] = []
    for entry in found:
        if not any(key.verifies(entry.signature, entry.signed) for key in policy.keys):
            problems.append("a signature that none of the trusted keys made (another key, or a changed payload)")
            continue
        problem = entry.problem(digest, reference)
        if problem is not None:
            problems.append(problem)
            continue
        good.append(entry)
    return good, problems


def _require(reference: Reference, digest: str, good: list[Signature], problems: list[str], policy: VerifyPolicy,
             *, where: str) -> None:
    if good:
        log.info("%s: %d signature(s) of %s by a trusted key", reference, len(good), digest)
        return
    cause = "; ".join(dict.fromkeys(problems)) or "no signature"
    raise errors.SignatureError(
        f"{reference} ({digest}) is not signed by a trusted key ({policy.names()}): no valid signature in {where}: "
        f"{cause}",
        f"sign exactly this digest with the key whose public half you trust (cosign sign --key cosign.key "
        f"{reference.with_digest(digest)}, or oci-crane push --sign-key), or pass the right --verify-key")


def _from_sig_tag(store: Store, crane: Crane, reference: Reference, digest: str) -> tuple[list[Signature],
                                                                                         list[str]]:
    """The signatures stored beside ``digest`` (cosign's .sig tag): [] when there is none."""
    raw = tag_manifest(crane, reference, signature_tag(digest))  # through the node's mirrors, as the model comes
    if raw is None:
        return [], []
    layers, problems = signature_layers(raw)
    # Payloads verified before are kept in the cache: one with the layer's digest is those very bytes, so a warm
    # fetch asks the registry for the .sig manifest only (a withdrawn signature still stops counting at once).
    from ..digests import sha256_digest

    kept = {sha256_digest(entry.signed): entry.signed for entry in _cached(store, digest) or []
            if entry.kind == "cosign"}
    found = []
    for layer in layers:
        payload = kept.get(layer.digest) or _payload(store, crane, reference, layer)
        found.append(Signature(payload, layer.signature, payload))
    return found, problems


def _from_referrers(crane: Crane, reference: Reference, digest: str,
                    spare: list[tuple[str, bytes]]) -> tuple[list[Signature], list[str]]:
    """The key-signed bundles among the referrers; those of OpenSSF model signing go to ``spare`` (openssf.py)."""
    manifests, notes = referrer_manifests(crane, reference, digest)
    found: list[Signature] = []
    for manifest in manifests:
        try:
            data = read_bundle(crane, reference, manifest)
        except errors.NetworkError:
            raise
        except errors.OciCraneError as exc:  # one broken referrer (missing, oversized) never hides the others
            notes.append(exc.cause)
            continue
        opened = envelope(data)
        if isinstance(opened, str):
            notes.append(opened)
        elif openssf.names_model_signing(opened[2]):
            spare.append((manifest, data))
        else:
            found.append(Signature(*opened, kind="bundle"))
    return found, notes


def _payload(store: Store, crane: Crane, reference: Reference, layer: Layer) -> bytes:
    """The bytes a signature covers, checked against the layer's digest (by whichever source sent them)."""
    return small_blob(crane, reference, layer.digest, layer.size, store.temp_path("signature-payload"))


def _cached(store: Store, digest: str) -> list[Signature] | None:
    data = store.load_signatures(digest)
    if data is None:
        return None
    try:
        entries = json.loads(data)["signatures"]
        return [Signature(base64.b64decode(entry["signed"]), base64.b64decode(entry["signature"]),
                          base64.b64decode(entry["statement"]), str(entry.get("kind", "cosign")))
                for entry in entries[:MAX_SIGNATURES]]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        log.warning("the cached signatures of %s are damaged; ignoring them", digest)
        return None
