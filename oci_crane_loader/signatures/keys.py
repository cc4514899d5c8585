"""Public and private keys as cosign writes them (PEM: ECDSA P-256, Ed25519, RSA) and the signature scheme each
uses: ECDSA and RSA (PKCS#1 v1.5) over the SHA-256 of the payload, Ed25519 over the payload itself. Private keys
also in cosign's own encrypted form (`cosign generate-key-pair`, `cosign import-key-pair`): go-securesystemslib's
`encrypted` package, scrypt then NaCl's secretbox, with the password from COSIGN_PASSWORD or the terminal.

Needs the `cryptography` package, and `PyNaCl` for encrypted keys (the `sign` extra): imported only when a policy
or a signing key is in use.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

from .. import errors

MAX_KEY_SIZE = 64 << 10  # a PEM key is a few hundred bytes; anything far larger is not one

INSTALL_FIX = ("install the signature support: pip install 'oci-crane-loader[sign]' (it adds `cryptography` and "
               "`PyNaCl`)")

PASSWORD_VARIABLE = "COSIGN_PASSWORD"  # what cosign reads, set even if empty; else it asks on the terminal
ENCRYPTED_PEM = re.compile(rb"-----BEGIN (ENCRYPTED (?:SIGSTORE|COSIGN) PRIVATE KEY)-----\s*(.*?)\s*-----END \1-----",
                           re.DOTALL)
# encrypted.CheckParams: the only scrypt costs go-securesystemslib writes (legacy, standard, OWASP). Any other is
# refused, as cosign does, so that an edited key cannot make us spend gigabytes of memory.
SCRYPT_PARAMS = {(1 << 15, 8, 1), (1 << 16, 8, 1), (1 << 17, 8, 1)}


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
    """An unencrypted PEM private key (PKCS#8 or the traditional forms), or cosign's encrypted one (`ENCRYPTED
    SIGSTORE PRIVATE KEY`, formerly `ENCRYPTED COSIGN PRIVATE KEY`), decrypted with COSIGN_PASSWORD."""
    serialization = _crypto()
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    fix = ("pass cosign's key (cosign generate-key-pair) with COSIGN_PASSWORD set, or an unencrypted PEM private key "
           "(openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256); docs/security.md")
    data = _read(str(path), "signing key", fix)
    encrypted = ENCRYPTED_PEM.search(data)
    if encrypted is not None:
        plain = _decrypt(str(path), encrypted.group(2), fix)
        try:
            key = serialization.load_der_private_key(plain, password=None)
        except (ValueError, TypeError):
            raise errors.SignatureError(f"the signing key {path} decrypts, but not to a PKCS#8 private key",
                                        fix) from None
    else:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise errors.SignatureError(f"the signing key {path} is not an unencrypted PEM private key nor cosign's "
                                        "encrypted key", fix) from None
    _check_kind(key, f"the signing key {path}", fix,
                ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey)
    return PrivateKey(str(path), key)


def _decrypt(path: str, body: bytes, fix: str) -> bytes:
    """The PKCS#8 DER inside cosign's encrypted key, as go-securesystemslib's encrypted.Decrypt finds it."""
    try:
        from nacl.exceptions import CryptoError
        from nacl.secret import SecretBox
    except ImportError:
        raise errors.SignatureError(f"the signing key {path} is cosign's encrypted format, and decrypting it needs "
                                    "the `PyNaCl` package, which is not installed", INSTALL_FIX) from None
    damaged = f"the signing key {path} is not a readable cosign encrypted key"
    try:  # Go's encoding/json writes []byte fields as standard base64
        document = json.loads(base64.b64decode(body))
        kdf, cipher = document["kdf"], document["cipher"]
        params = (kdf["params"]["N"], kdf["params"]["r"], kdf["params"]["p"])
        salt, nonce = base64.b64decode(kdf["salt"]), base64.b64decode(cipher["nonce"])
        ciphertext = base64.b64decode(document["ciphertext"])
        names = (kdf["name"], cipher["name"])
    except (ValueError, binascii.Error, KeyError, TypeError):
        raise errors.SignatureError(f"{damaged}: its PEM body is not the JSON cosign writes", fix) from None
    if names != ("scrypt", "nacl/secretbox"):
        raise errors.SignatureError(f"{damaged}: it names kdf {str(names[0])[:40]!r} and cipher "
                                    f"{str(names[1])[:40]!r}, cosign writes scrypt and nacl/secretbox", fix)
    if not all(type(value) is int for value in params) or params not in SCRYPT_PARAMS or \
            len(nonce) != SecretBox.NONCE_SIZE or len(ciphertext) <= SecretBox.MACBYTES:
        raise errors.SignatureError(f"{damaged}: its scrypt parameters (N, r, p), nonce or ciphertext are not ones "
                                    "cosign writes", fix)
    n, r, p = params
    password, source = _password(path)
    secret = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=SecretBox.KEY_SIZE,
                            maxmem=256 * r * n)  # scrypt needs 128 * r * N bytes: 128 MiB at the OWASP cost
    try:
        return bytes(SecretBox(secret).decrypt(ciphertext, nonce))
    except CryptoError:
        raise errors.SignatureError(
            f"cannot decrypt the signing key {path}: {source} is not its password, or the key file is damaged",
            f"set {PASSWORD_VARIABLE} to the password given to `cosign generate-key-pair` (empty if none was: "
            f"{PASSWORD_VARIABLE}=); `cosign public-key --key {path}` checks a password") from None


def _password(path: str) -> tuple[bytes, str]:
    """As cosign reads it: COSIGN_PASSWORD when set (even empty), else asked on the terminal; and where it came
    from, for errors. (cosign also reads a password piped into standard input; we refuse instead: a stray pipe
    must not become a password.)"""
    if PASSWORD_VARIABLE in os.environ:
        # The bytes as set, as Go's os.LookupEnv gives them to cosign.
        return os.fsencode(os.environ[PASSWORD_VARIABLE]), f"the password in {PASSWORD_VARIABLE}"
    if sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass("Enter password for private key: ").encode(), "the password typed"
    raise errors.SignatureError(
        f"the signing key {path} is encrypted (cosign generate-key-pair), {PASSWORD_VARIABLE} is not set and there "
        "is no terminal to ask for its password",
        f"set {PASSWORD_VARIABLE} to the key's password ({PASSWORD_VARIABLE}= for an empty one), as for `cosign "
        "sign --key`")
