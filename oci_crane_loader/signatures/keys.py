"""Public and private keys as cosign writes them (PEM: ECDSA P-256, Ed25519, RSA) and the signature scheme each
uses: ECDSA and RSA (PKCS#1 v1.5) over the SHA-256 of the payload, Ed25519 over the payload itself.

Needs the `cryptography` package (the `sign` extra): imported only when a policy or a signing key is in use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .. import errors

MAX_KEY_SIZE = 64 << 10  # a PEM key is a few hundred bytes; anything far larger is not one

INSTALL_FIX = "install the signature support: pip install 'oci-crane-loader[sign]' (it adds `cryptography`)"


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        raise errors.SignatureError("verifying or writing signatures needs the `cryptography` package, which is "
                                    "not installed", INSTALL_FIX) from None
    return serialization


@dataclass(frozen=True)
class PublicKey:
    """A trusted key: where it came from (shown in errors) and the key itself."""

    path: str
    key: Any

    def verifies(self, signature: bytes, payload: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

        try:
            if isinstance(self.key, ec.EllipticCurvePublicKey):
                self.key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
            elif isinstance(self.key, ed25519.Ed25519PublicKey):
                self.key.verify(signature, payload)
            elif isinstance(self.key, rsa.RSAPublicKey):
                self.key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
            else:
                return False
        except (InvalidSignature, ValueError):
            return False
        return True


def _read(path: str, what: str, fix: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_KEY_SIZE + 1)
    except OSError as exc:
        raise errors.SignatureError(f"cannot read the {what} {path} ({exc.strerror})", fix) from None
    if len(data) > MAX_KEY_SIZE:
        raise errors.SignatureError(f"the {what} {path} is over {MAX_KEY_SIZE >> 10} KiB: not a PEM key", fix)
    return data


def load_public_key(path: str | os.PathLike[str]) -> PublicKey:
    """A PEM public key (`cosign generate-key-pair`'s cosign.pub, `openssl pkey -pubout`'s output)."""
    serialization = _crypto()
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    fix = "pass a PEM public key (cosign.pub from `cosign generate-key-pair`): ECDSA P-256, Ed25519 or RSA"
    data = _read(str(path), "verification key", fix)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise errors.SignatureError(f"the verification key {path} is not a PEM public key", fix) from None
    _check_kind(key, f"the verification key {path}", fix,
                ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey)
    return PublicKey(str(path), key)


def _check_kind(key: Any, what: str, fix: str, kinds: Any) -> None:
    """cosign's kinds only: ECDSA on P-256 (the curve its verifier takes), Ed25519, RSA."""
    curve = getattr(getattr(key, "curve", None), "name", "secp256r1")
    if curve != "secp256r1":
        raise errors.SignatureError(f"{what} is ECDSA on {curve}, not P-256", fix)
    if not isinstance(key, kinds):
        raise errors.SignatureError(f"{what} is a {type(key).__name__}", fix)


@dataclass(frozen=True)
class PrivateKey:
    path: str
    key: Any

    def sign(self, payload: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding

        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            return bytes(self.key.sign(payload, ec.ECDSA(hashes.SHA256())))
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return bytes(self.key.sign(payload))
        return bytes(self.key.sign(payload, padding.PKCS1v15(), hashes.SHA256()))


def load_private_key(path: str | os.PathLike[str]) -> PrivateKey:
    """An unencrypted PEM private key (PKCS#8 or the traditional forms). cosign's own encrypted
    `ENCRYPTED SIGSTORE PRIVATE KEY` needs NaCl's secretbox, which `cryptography` lacks: sign with cosign then."""
    serialization = _crypto()
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    fix = ("pass an unencrypted PEM private key (openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256), or "
           "sign with `cosign sign --key cosign.key` (docs/security.md)")
    data = _read(str(path), "signing key", fix)
    if b"ENCRYPTED SIGSTORE PRIVATE KEY" in data or b"ENCRYPTED COSIGN PRIVATE KEY" in data:
        raise errors.SignatureError(f"the signing key {path} is cosign's encrypted format, which oci-crane cannot "
                                    "decrypt", fix)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise errors.SignatureError(f"the signing key {path} is not an unencrypted PEM private key", fix) from None
    _check_kind(key, f"the signing key {path}", fix,
                ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey)
    return PrivateKey(str(path), key)
