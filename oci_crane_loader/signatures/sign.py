"""`oci-crane push --sign-key KEY`: sign what was pushed as `cosign sign --key` does (cosign.py's .sig tag and
simple-signing payload), so that `cosign verify --key KEY.pub` and our --verify-key accept it. Signatures already
on the tag (another team's, an earlier push of the same digest) are kept: ours is added beside them."""

from __future__ import annotations

import base64
import json

from .. import errors
from ..cache.store import Store, remove_tree
from ..digests import sha256_digest
from ..layout import LayoutWriter, canonical_json
from ..oci import Descriptor
from ..reference import Reference
from ..registry.crane import Crane
from .cosign import MAX_PAYLOAD, MAX_SIGNATURES, SIGNATURE_ANNOTATION, SIMPLE_SIGNING, make_payload, signature_tag
from .keys import PrivateKey

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


def sign_pushed(crane: Crane, store: Store, reference: Reference, digest: str, key: PrivateKey) -> str:
    """Sign ``digest`` in ``reference``'s repository with ``key``; the pinned signature image."""
    payload = make_payload(reference, digest)
    signature = base64.b64encode(key.sign(payload)).decode()
    target = f"{reference.repository_name}:{signature_tag(digest)}"
    layout = store.scratch_dir("sign-layout.")
    try:
        writer = LayoutWriter(layout)
        layers = [*_existing(crane, reference, target, writer, payload, signature)]
        layers.append(writer.add_bytes(SIMPLE_SIGNING, payload, {SIGNATURE_ANNOTATION: signature}))
        config = canonical_json({"architecture": "", "created": "0001-01-01T00:00:00Z", "history": [
            {"created": "0001-01-01T00:00:00Z"}], "os": "", "rootfs": {
                "type": "layers", "diff_ids": [layer.digest for layer in layers]}, "config": {}})
        writer.add_manifest(writer.add_bytes(OCI_CONFIG, config), layers)
        return crane.push(layout, target)
    finally:
        remove_tree(layout)


def _existing(crane: Crane, reference: Reference, target: str, writer: LayoutWriter, payload: bytes,
              signature: str) -> list[Descriptor]:
    """The signature layers already on ``target``, copied into the layout (they are small); [] if none."""
    try:
        raw = crane.manifest(target)
    except errors.NotFoundError:
        return []
    kept: list[Descriptor] = []
    try:
        layers = json.loads(raw).get("layers") or []
    except (ValueError, AttributeError):  # not a manifest: replaced by ours
        return []
    for layer in layers[:MAX_SIGNATURES - 1] if isinstance(layers, list) else []:
        annotations = layer.get("annotations") if isinstance(layer, dict) else None
        if not isinstance(annotations, dict) or layer.get("mediaType") != SIMPLE_SIGNING or \
                not isinstance(layer.get("size"), int) or layer["size"] > MAX_PAYLOAD:
            continue
        data = crane.run("blob", reference.with_digest(str(layer.get("digest"))))
        if sha256_digest(data) != layer.get("digest") or (data == payload and
                                                          annotations.get(SIGNATURE_ANNOTATION) == signature):
            continue
        kept.append(writer.add_bytes(SIMPLE_SIGNING, data, {str(k): str(v) for k, v in annotations.items()}))
    return kept
