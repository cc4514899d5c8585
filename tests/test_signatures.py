"""Signatures (--verify-key, OCI_CRANE_VERIFY_KEYS, verify_key; push --sign-key) on a real `crane registry serve`:
cosign's .sig tag scheme, refused before any weight is downloaded, the hostile cases of docs/security.md, --offline
from the signatures the cache kept, and cosign itself (bin/install-cosign) signing what we verify and verifying
what we sign."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from support.commands import run_cli, tool
from support.models import write_model
from support.scripted_registry import referrers_api, serve

from oci_crane_loader import errors
from oci_crane_loader.cache.store import Store
from oci_crane_loader.fetching import prepare
from oci_crane_loader.layout import LayoutWriter, canonical_json
from oci_crane_loader.options import from_extra_config
from oci_crane_loader.reference import parse_reference
from oci_crane_loader.registry.crane import Crane
from oci_crane_loader.signatures.cosign import (
    MAX_SIGNATURES,
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING,
    make_payload,
    signature_tag,
)

cryptography = pytest.importorskip("cryptography")
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: E402

EXIT_SIGNATURE = 3


def key_pair(directory: Path, name: str = "key", kind: str = "ecdsa") -> tuple[Path, Path]:
    """A private key (unencrypted PKCS#8 PEM) and its public half (SubjectPublicKeyInfo PEM, as cosign.pub)."""
    private = {"ecdsa": lambda: ec.generate_private_key(ec.SECP256R1()), "ed25519": ed25519.Ed25519PrivateKey.generate,
               "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)}[kind]()
    directory.mkdir(parents=True, exist_ok=True)
    secret, public = directory / f"{name}.pem", directory / f"{name}.pub"
    secret.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    public.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo))
    return secret, public


def push(model: Path, reference: str, cache_dir: Path, *extra: str, env: dict[str, str] | None = None) -> str:
    done = run_cli("push", str(model), reference, "--cache-dir", str(cache_dir), "--quiet", "--json", *extra, env=env)
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["digest"])


def fetch_refused(reference: str, cache_dir: Path, *extra: str, command: str = "fetch") -> str:
    """The one error line of a fetch (or inspect) refused for its signature, with the signature exit code."""
    done = run_cli(command, reference, "--cache-dir", str(cache_dir), *(["--quiet"] if command == "fetch" else []),
                   *extra)
    assert done.returncode == EXIT_SIGNATURE, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and " -- fix: " in lines[0], done.stderr
    return lines[0]


def fetched(reference: str, cache_dir: Path, *extra: str, env: dict[str, str] | None = None) -> Path:
    done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--quiet", *extra, env=env)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


def put_signatures(tmp_path: Path, repository: str, digest: str, entries: list[tuple[bytes, str]]) -> None:
    """A .sig image for ``digest`` holding ``entries`` (payload, base64 signature) as cosign lays them out."""
    layout = tmp_path / f"sig-layout-{len(list(tmp_path.glob('sig-layout-*')))}"
    writer = LayoutWriter(layout)
    layers = [writer.add_bytes(SIMPLE_SIGNING, payload, {SIGNATURE_ANNOTATION: signature})
              for payload, signature in entries]
    config = writer.add_bytes("application/vnd.oci.image.config.v1+json", canonical_json({"rootfs": {
        "type": "layers", "diff_ids": [layer.digest for layer in layers]}}))
    writer.add_manifest(config, layers)
    Crane().push(layout, f"{repository}:{signature_tag(digest)}")


def copy_signatures(source: str, source_digest: str, target: str, target_digest: str) -> None:
    """The .sig image of ``source_digest`` in repository ``source``, as the signatures of ``target_digest``."""
    Crane().run("copy", f"{source}:{signature_tag(source_digest)}", f"{target}:{signature_tag(target_digest)}")


def signed_entry(secret: Path, payload: bytes) -> tuple[bytes, str]:
    key = serialization.load_pem_private_key(secret.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    from cryptography.hazmat.primitives import hashes

    return payload, base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()


def refused_counting_blobs(registry, reference: str, cache_dir: Path, public: Path) -> tuple[str, int]:
    """A fetch refused for its signature: its error line, and how many blobs it downloaded."""
    before = len(registry.blob_downloads())
    line = fetch_refused(reference, cache_dir, "--verify-key", str(public))
    return line, len(registry.blob_downloads()) - before


def model_blob_downloads(registry, digest: str, cache_dir: Path) -> list[str]:
    """The blob GETs of the model's own layers and config (the manifest's), not of signature payloads."""
    manifest = json.loads(Store(cache_dir).load_manifest(digest) or b"{}")
    own = {layer["digest"] for layer in manifest.get("layers", [])} | {manifest.get("config", {}).get("digest")}
    return [blob for blob in registry.blob_downloads() if blob in own]


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return key_pair(tmp_path / "keys")


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_model(tmp_path / "model")


# --- the policy, end to end -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ecdsa", "ed25519", "rsa"])
def test_a_model_pushed_with_sign_key_is_served_under_its_public_key(registry, tmp_path, model, kind):
    secret, public = key_pair(tmp_path / "keys", kind=kind)
    reference = f"{registry.host}/acme/signed:v1"
    digest = push(model, reference, tmp_path / "push-cache", "--sign-key", str(secret))
    path = fetched(reference, tmp_path / "cache", "--verify-key", str(public))
    assert (path / "config.json").is_file()
    assert f"GET /v2/acme/signed/manifests/{signature_tag(digest)}" in registry.log()


def test_another_key_is_refused_before_any_weight_is_downloaded(registry, tmp_path, model, keys):
    secret, _ = keys
    _, other = key_pair(tmp_path / "other", "other")
    reference = f"{registry.host}/acme/signed:v1"
    digest = push(model, reference, tmp_path / "push-cache", "--sign-key", str(secret))
    line = fetch_refused(reference, tmp_path / "cache", "--verify-key", str(other))
    assert reference in line and digest in line and "none of the trusted keys" in line and "other.pub" in line
    assert model_blob_downloads(registry, digest, tmp_path / "cache") == []
    assert not list((tmp_path / "cache" / "models" / "sha256").iterdir())


def test_an_unsigned_model_is_refused_by_fetch_local_dir_and_inspect(registry, tmp_path, model, keys):
    _, public = keys
    reference = f"{registry.host}/acme/unsigned:v1"
    digest = push(model, reference, tmp_path / "push-cache")
    line = fetch_refused(reference, tmp_path / "cache", "--verify-key", str(public))
    assert digest in line and signature_tag(digest) in line and "is missing" in line
    fetch_refused(reference, tmp_path / "cache", "--verify-key", str(public), "--local-dir", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    fetch_refused(reference, tmp_path / "cache", "--verify-key", str(public), command="inspect")
    assert model_blob_downloads(registry, digest, tmp_path / "cache") == []


def test_a_cached_model_is_held_to_the_policy_too(registry, tmp_path, model, keys):
    # The record's fast path answers without the Puller: the signature is checked before it.
    _, public = keys
    reference = f"{registry.host}/acme/unsigned:v1"
    push(model, reference, tmp_path / "push-cache")
    fetched(reference, tmp_path / "cache")  # no policy: fetched and recorded
    fetch_refused(reference, tmp_path / "cache", "--verify-key", str(public))
    fetch_refused(reference, tmp_path / "cache", "--verify-key", str(public), "--offline")


def test_a_warm_fetch_asks_for_the_signature_manifest_only(registry, tmp_path, model, keys):
    """The payloads verified before are kept: a warm fetch under a policy asks the registry for the .sig manifest
    (a withdrawn signature must still stop counting) and no blob at all."""
    secret, public = keys
    reference = f"{registry.host}/acme/warm:v1"
    digest = push(model, reference, tmp_path / "push-cache", "--sign-key", str(secret))
    fetched(reference, tmp_path / "cache", "--verify-key", str(public))
    before, blobs = len(registry.lines), len(registry.blob_downloads())
    fetched(reference, tmp_path / "cache", "--verify-key", str(public))
    asked = "\n".join(registry.lines[before:])
    assert f"/manifests/{signature_tag(digest)}" in asked
    assert len(registry.blob_downloads()) == blobs, asked  # neither the payload nor anything of the model


def test_signatures_come_through_the_nodes_mirror_and_never_from_a_blocked_upstream(registry, tmp_path, model,
                                                                                   keys):
    """The .sig manifest and its payload are asked as the model is: of the node's mirror (registries.conf), never
    of an upstream the node blocks; what the mirror serves is verified, so another key is still refused."""
    from support.mirror_config import registries_conf
    from support.storage_proxy import StorageProxy

    secret, public = keys
    reference = f"{registry.host}/acme/mirrored:v1"
    digest = push(model, reference, tmp_path / "push-cache", "--sign-key", str(secret))
    with StorageProxy(registry.host, redirect_blobs=False) as mirror:
        env = registries_conf(tmp_path / "registries.conf", registry.host, mirror.address, blocked=True)
        assert fetched(reference, tmp_path / "cache", "--verify-key", str(public), env=env).is_dir()
        asked = [path for method, path, _, _ in mirror.front_requests if method == "GET"]
        _, other = key_pair(tmp_path / "other", "other")
        done = run_cli("fetch", reference, "--cache-dir", str(tmp_path / "cache2"), "--quiet", "--verify-key",
                       str(other), env=env)
    assert any(path.endswith(f"/manifests/{signature_tag(digest)}") for path in asked), asked
    assert any("/blobs/" in path for path in asked), asked  # the payload (and the model) from the mirror
    assert done.returncode == 3 and "none of the trusted keys" in done.stderr, done.stderr


def test_the_environment_sets_the_policy_for_every_door(registry, tmp_path, model, keys):
    _, public = keys
    reference = f"{registry.host}/acme/unsigned:v1"
    push(model, reference, tmp_path / "push-cache")
    done = run_cli("fetch", reference, "--cache-dir", str(tmp_path / "cache"), "--quiet",
                   env={"OCI_CRANE_VERIFY_KEYS": f"{tmp_path / 'missing.pub'}:{public}"})
    assert done.returncode == EXIT_SIGNATURE and "missing.pub" in done.stderr  # every key file must be readable
    done = run_cli("fetch", reference, "--cache-dir", str(tmp_path / "cache"), "--quiet",
                   env={"OCI_CRANE_VERIFY_KEYS": str(public)})
    assert done.returncode == EXIT_SIGNATURE and "not signed by a trusted key" in done.stderr


def test_the_vllm_loader_takes_verify_key_from_its_extra_config(tmp_path, keys):
    _, public = keys
    options = from_extra_config({"verify_key": str(public)}, tmp_path / "cache")
    assert [key.path for key in options.verify.keys] == [str(public)]
    with pytest.raises(errors.SignatureError, match="not a PEM public key"):
        from_extra_config({"verify_key": str(keys[0])}, tmp_path / "cache")  # the private half
    with pytest.raises(errors.UsageError, match="verify_key"):
        from_extra_config({"verify_key": 1}, tmp_path / "cache")


def test_the_vllm_prepare_path_is_refused_before_any_weight(registry, tmp_path, model, keys):
    # What vLLM's loader and its early prefetch call (fetching.prepare), with the loader's own options.
    _, public = keys
    reference = f"{registry.host}/acme/unsigned:v1"
    digest = push(model, reference, tmp_path / "push-cache")
    options = from_extra_config({"verify_key": str(public)}, tmp_path / "cache")
    with pytest.raises(errors.SignatureError, match="is missing"):
        prepare(options, reference)
    assert model_blob_downloads(registry, digest, tmp_path / "cache") == []
    assert not (tmp_path / "cache" / "configs" / "sha256").exists() or \
        not list((tmp_path / "cache" / "configs" / "sha256").iterdir())


def test_serve_refuses_a_bad_key_before_vllm_starts(tmp_path):
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key")
    done = run_cli("serve", "127.0.0.1:1/acme/x:v1", "--verify-key", str(junk), "--dry-run")
    assert done.returncode == EXIT_SIGNATURE and "junk.pub is not a PEM public key" in done.stderr
    assert done.stdout == ""


def test_an_outage_verifies_from_the_kept_signatures(registry, tmp_path, model, keys):
    secret, public = keys
    _, other = key_pair(tmp_path / "other", "other")
    reference = f"{registry.host}/acme/signed:v1"
    push(model, reference, tmp_path / "push-cache", "--sign-key", str(secret))
    fetched(reference, tmp_path / "cache", "--verify-key", str(public))
    registry.process.terminate()
    registry.process.wait(timeout=30)
    assert fetched(reference, tmp_path / "cache", "--verify-key", str(public)).is_dir()
    done = run_cli("fetch", reference, "--cache-dir", str(tmp_path / "cache"), "--quiet", "--verify-key", str(other))
    assert done.returncode == EXIT_SIGNATURE
    assert "verifying those the cache kept" in done.stderr and "no valid signature in the cache" in done.stderr


def test_cache_verify_and_prune_leave_kept_signatures_alone(registry, tmp_path, model, keys):
    secret, public = keys
    reference = f"{registry.host}/acme/signed:v1"
    digest = push(model, reference, tmp_path / "push-cache", "--sign-key", str(secret))
    fetched(reference, tmp_path / "cache", "--verify-key", str(public))
    for action in ("verify", "prune"):
        done = run_cli("cache", action, "--cache-dir", str(tmp_path / "cache"))
        assert done.returncode == 0, done.stderr
    assert Store(tmp_path / "cache").load_signatures(digest) is not None
    assert fetched(reference, tmp_path / "cache", "--verify-key", str(public), "--offline").is_dir()


def test_without_a_policy_no_signature_is_asked_for(registry, tmp_path, model):
    reference = f"{registry.host}/acme/unsigned:v1"
    push(model, reference, tmp_path / "push-cache")
    fetched(reference, tmp_path / "cache")
    assert ".sig" not in registry.log()


# --- hostile cases (docs/security.md) ---------------------------------------------------------------------------

def test_a_tampered_payload_is_refused(registry, tmp_path, model, keys):
    secret, public = keys
    reference = f"{registry.host}/acme/tampered:v1"
    digest = push(model, reference, tmp_path / "push-cache")
    payload, signature = signed_entry(secret, make_payload(parse_reference(reference), digest))
    tampered = payload.replace(b'"optional":null', b'"optional":{"by":"mallory"}')
    assert tampered != payload
    put_signatures(tmp_path, f"{registry.host}/acme/tampered", digest, [(tampered, signature)])
    line = fetch_refused(reference, tmp_path / "cache", "--verify-key", str(public))
    assert "none of the trusted keys" in line


def test_a_signature_copied_from_another_model_is_refused(registry, tmp_path, keys):
    secret, public = keys
    signed = f"{registry.host}/acme/model:signed"
    other = f"{registry.host}/acme/model:other"
    signed_digest = push(write_model(tmp_path / "a", seed=1), signed, tmp_path / "push-cache", "--sign-key",
                         str(secret))
    other_digest = push(write_model(tmp_path / "b", seed=2), other, tmp_path / "push-cache")
    # The whole .sig image of the signed model, put where the other model's signatures are looked for.
    copy_signatures(f"{registry.host}/acme/model", signed_digest, f"{registry.host}/acme/model", other_digest)
    line = fetch_refused(other, tmp_path / "cache", "--verify-key", str(public))
    assert f"a signature for another manifest ({signed_digest})" in line


def test_a_payload_naming_another_repository_is_refused(registry, tmp_path, model, keys):
    secret, public = keys
    digest = push(model, f"{registry.host}/acme/original:v1", tmp_path / "push-cache", "--sign-key", str(secret))
    copy = f"{registry.host}/mallory/copy:v1"
    Crane().run("copy", f"{registry.host}/acme/original:v1", copy)
    copy_signatures(f"{registry.host}/acme/original", digest, f"{registry.host}/mallory/copy", digest)
    line = fetch_refused(copy, tmp_path / "cache", "--verify-key", str(public))
    assert f"a signature for another repository ({registry.host}/acme/original)" in line


def test_a_flood_of_signatures_is_read_only_up_to_the_cap(registry, tmp_path, model, keys):
    secret, public = keys
    reference = f"{registry.host}/acme/flood:v1"
    digest = push(model, reference, tmp_path / "push-cache")
    wrong = make_payload(parse_reference(reference), "sha256:" + "0" * 64)
    entries = [signed_entry(secret, wrong[:-1] + b" " * number + b"}") for number in range(MAX_SIGNATURES + 40)]
    put_signatures(tmp_path, f"{registry.host}/acme/flood", digest, entries)
    line, downloads = refused_counting_blobs(registry, reference, tmp_path / "cache", public)
    assert f"40 signatures past the first {MAX_SIGNATURES}" in line
    assert downloads == MAX_SIGNATURES


def test_offline_verifies_from_the_cache_after_the_signature_is_removed(registry, tmp_path, model, keys):
    secret, public = keys
    reference = f"{registry.host}/acme/signed:v1"
    digest = push(model, reference, tmp_path / "push-cache", "--sign-key", str(secret))
    fetched(reference, tmp_path / "cache", "--verify-key", str(public))
    Crane().run("delete", f"{registry.host}/acme/signed:{signature_tag(digest)}")
    assert fetched(reference, tmp_path / "cache", "--verify-key", str(public), "--offline").is_dir()
    # Online, the registry is asked again: a signature withdrawn there no longer counts.
    assert "is missing" in fetch_refused(reference, tmp_path / "cache", "--verify-key", str(public))
    # Offline the policy still holds: another key is refused from the cache's signatures.
    _, other = key_pair(tmp_path / "other", "other")
    fetch_refused(reference, tmp_path / "cache", "--verify-key", str(other), "--offline")


def test_offline_without_a_kept_signature_is_refused(registry, tmp_path, model, keys):
    secret, public = keys
    reference = f"{registry.host}/acme/signed:v1"
    push(model, reference, tmp_path / "push-cache", "--sign-key", str(secret))
    fetched(reference, tmp_path / "cache")  # cached without a policy: no signature kept
    line = fetch_refused(reference, tmp_path / "cache", "--verify-key", str(public), "--offline")
    assert "holds no verified signature" in line


def test_a_bad_key_file_is_refused_before_any_request(registry, tmp_path, model):
    reference = f"{registry.host}/acme/any:v1"
    push(model, reference, tmp_path / "push-cache")
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key")
    requests = len(registry.lines)
    line = fetch_refused(reference, tmp_path / "cache", "--verify-key", str(junk))
    assert "junk.pub is not a PEM public key" in line
    assert len(registry.lines) == requests


def test_push_keeps_the_signatures_already_on_the_tag(registry, tmp_path, model):
    first, first_public = key_pair(tmp_path / "k1", "first")
    second, second_public = key_pair(tmp_path / "k2", "second")
    reference = f"{registry.host}/acme/twice:v1"
    push(model, reference, tmp_path / "push-cache", "--sign-key", str(first))
    digest = push(model, reference, tmp_path / "push-cache", "--sign-key", str(second))
    raw = Crane().manifest(f"{registry.host}/acme/twice:{signature_tag(digest)}")
    assert len(json.loads(raw)["layers"]) == 2
    for public in (first_public, second_public):
        fetched(reference, tmp_path / f"cache-{public.stem}", "--verify-key", str(public))


@pytest.fixture
def pynacl() -> None:
    """cosign's encrypted keys are decrypted with PyNaCl (the `sign` and `test` extras)."""
    pytest.importorskip("nacl", reason="PyNaCl is not installed: pip install -e '.[test]'")


def encrypted_pem(document: dict[str, object]) -> str:
    """A key in cosign's encrypted PEM wrapping, around ``document`` (which need not be one cosign would write)."""
    body = base64.b64encode(json.dumps(document).encode()).decode()
    return "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n" + "\n".join(
        body[i:i + 64] for i in range(0, len(body), 64)) + "\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"


SALT, NONCE = base64.b64encode(b"s" * 32).decode(), base64.b64encode(b"n" * 24).decode()


@pytest.mark.parametrize(("document", "problem"), [
    ({"kdf": {}}, "not the JSON cosign writes"),
    ({"kdf": {"name": "pbkdf2", "params": {"N": 65536, "r": 8, "p": 1}, "salt": SALT},
      "cipher": {"name": "nacl/secretbox", "nonce": NONCE}, "ciphertext": ""}, "cosign writes scrypt"),
    # An edited cost would have us spend 128 GiB of memory on scrypt: refused before any is spent, as cosign does.
    ({"kdf": {"name": "scrypt", "params": {"N": 1 << 30, "r": 8, "p": 1}, "salt": SALT},
      "cipher": {"name": "nacl/secretbox", "nonce": NONCE}, "ciphertext": ""}, "scrypt parameters"),
    ({"kdf": {"name": "scrypt", "params": {"N": 65536, "r": 8, "p": 1}, "salt": SALT},
      "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(b"short").decode()}, "ciphertext": ""},
     "nonce or ciphertext"),
    ({"kdf": {"name": "scrypt", "params": {"N": 65536, "r": 8, "p": 1}, "salt": SALT},
      "cipher": {"name": "nacl/secretbox", "nonce": NONCE}, "ciphertext": ""}, "nonce or ciphertext"),
])
def test_a_damaged_encrypted_key_is_refused_naming_the_problem(tmp_path, model, document, problem, pynacl):
    encrypted = tmp_path / "cosign.key"
    encrypted.write_text(encrypted_pem(document))
    done = run_cli("push", str(model), "127.0.0.1:1/acme/x:v1", "--sign-key", str(encrypted), "--quiet",
                   env={"COSIGN_PASSWORD": "x"})
    assert done.returncode == EXIT_SIGNATURE, done.stderr
    assert "not a readable cosign encrypted key" in done.stderr and problem in done.stderr, done.stderr


def test_without_pynacl_an_encrypted_key_names_the_extra(tmp_path, model):
    # The CLI as run where the `sign` extra predates PyNaCl: its import made to fail, nothing else changed.
    import sys

    encrypted = tmp_path / "cosign.key"
    encrypted.write_text(encrypted_pem({"kdf": {"name": "scrypt", "params": {"N": 65536, "r": 8, "p": 1},
                                                "salt": SALT}, "cipher": {"name": "nacl/secretbox", "nonce": NONCE},
                                        "ciphertext": ""}))
    without = "import runpy, sys; sys.modules['nacl'] = None; runpy.run_module('oci_crane_loader', run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", without, "push", str(model), "127.0.0.1:1/acme/x:v1", "--quiet",
                           "--sign-key", str(encrypted)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COSIGN_PASSWORD": "x"})
    assert done.returncode == EXIT_SIGNATURE, done.stderr
    assert "needs the `PyNaCl` package" in done.stderr and "oci-crane-loader[sign]" in done.stderr, done.stderr


# --- cosign itself ------------------------------------------------------------------------------------------------

@pytest.fixture
def cosign(tmp_path: Path) -> tuple[str, dict[str, str]]:
    found = tool("cosign")
    if found is None:
        pytest.skip("cosign is not installed: run bin/install-cosign")
    env = {**os.environ, "COSIGN_PASSWORD": "test-password", "COSIGN_YES": "true", "HOME": str(tmp_path),
           "SIGSTORE_NO_CACHE": "1", "TUF_ROOT": str(tmp_path / "tuf")}
    return found, env


def test_what_cosign_signs_we_verify(registry, tmp_path, model, cosign):
    binary, env = cosign
    subprocess.run([binary, "generate-key-pair"], cwd=tmp_path, env=env, check=True, capture_output=True)
    reference = f"{registry.host}/acme/cosigned:v1"
    digest = push(model, reference, tmp_path / "push-cache")
    subprocess.run([binary, "sign", "--key", "cosign.key", "--tlog-upload=false", "--allow-http-registry",
                    f"{registry.host}/acme/cosigned@{digest}"], cwd=tmp_path, env=env, check=True,
                   capture_output=True, timeout=120)
    assert fetched(reference, tmp_path / "cache", "--verify-key", str(tmp_path / "cosign.pub")).is_dir()
    _, other = key_pair(tmp_path / "other", "other")
    fetch_refused(reference, tmp_path / "cache2", "--verify-key", str(other))


def test_what_we_sign_cosign_verifies(registry, tmp_path, model, cosign, keys):
    binary, env = cosign
    secret, public = keys
    reference = f"{registry.host}/acme/ours:v1"
    digest = push(model, reference, tmp_path / "push-cache", "--sign-key", str(secret))
    done = subprocess.run([binary, "verify", "--key", str(public), "--insecure-ignore-tlog", "--allow-http-registry",
                           f"{registry.host}/acme/ours@{digest}"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    verified = json.loads(done.stdout)
    assert verified[0]["critical"]["image"]["docker-manifest-digest"] == digest
    # ... and refuses a key that did not sign it, so the check above can fail.
    _, other = key_pair(tmp_path / "other", "other")
    done = subprocess.run([binary, "verify", "--key", str(other), "--insecure-ignore-tlog", "--allow-http-registry",
                           f"{registry.host}/acme/ours@{digest}"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0


# --- cosign's encrypted keys (cosign generate-key-pair, import-key-pair) as push --sign-key ------------------------

PASSWORD = "Tr0ub4dor-&-3-unique"  # distinctive, so that a leak into any output would be found


def cosign_key(binary: str, env: dict[str, str], directory: Path, password: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run([binary, "generate-key-pair"], cwd=directory, env={**env, "COSIGN_PASSWORD": password},
                   check=True, capture_output=True, timeout=120)
    assert (directory / "cosign.key").read_text().startswith("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----")
    return directory / "cosign.key", directory / "cosign.pub"


def cosign_verifies(binary: str, env: dict[str, str], public: Path, pinned: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, "verify", "--key", str(public), "--insecure-ignore-tlog", "--allow-http-registry",
                           pinned], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("version", ["cosign", "cosign3"])
def test_the_key_cosign_generates_signs_our_push_and_both_verify_it(registry, tmp_path, model, cosign, version, pynacl):
    _, env = cosign
    binary = tool(version)
    if binary is None:
        pytest.skip(f"{version} is not installed: run bin/install-cosign")
    secret, public = cosign_key(binary, env, tmp_path / "keys", PASSWORD)
    reference = f"{registry.host}/acme/generated:v1"
    done = run_cli("push", str(model), reference, "--cache-dir", str(tmp_path / "push-cache"), "--json",
                   "--sign-key", str(secret), env={"COSIGN_PASSWORD": PASSWORD})
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stderr + done.stdout
    digest = json.loads(done.stdout)["digest"]
    verified = cosign_verifies(binary, env, public, f"{registry.host}/acme/generated@{digest}")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)[0]["critical"]["image"]["docker-manifest-digest"] == digest
    assert fetched(reference, tmp_path / "cache", "--verify-key", str(public)).is_dir()
    # ... and the signature is by that key only: another key of cosign's is refused by both.
    _, other = cosign_key(binary, env, tmp_path / "other", PASSWORD)
    assert cosign_verifies(binary, env, other, f"{registry.host}/acme/generated@{digest}").returncode != 0
    fetch_refused(reference, tmp_path / "cache2", "--verify-key", str(other))


def test_an_empty_password_is_a_password(registry, tmp_path, model, cosign, pynacl):
    binary, env = cosign
    secret, public = cosign_key(binary, env, tmp_path / "keys", "")
    reference = f"{registry.host}/acme/empty:v1"
    push(model, reference, tmp_path / "push-cache", "--sign-key", str(secret), env={"COSIGN_PASSWORD": ""})
    assert fetched(reference, tmp_path / "cache", "--verify-key", str(public)).is_dir()


@pytest.fixture
def push_env(monkeypatch):
    """push's environment without COSIGN_PASSWORD, whatever the one running the tests has."""
    monkeypatch.delenv("COSIGN_PASSWORD", raising=False)


def refused_push(registry, model: Path, secret: Path, env: dict[str, str] | None, input: str | None) -> str:
    """The one error line of a push refused for its key, having sent the registry nothing."""
    before = len(registry.lines)
    done = run_cli("push", str(model), f"{registry.host}/acme/refused:v1", "--sign-key", str(secret), env=env,
                   input=input)
    assert done.returncode == EXIT_SIGNATURE, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and " -- fix: " in lines[0], done.stderr
    assert registry.lines[before:] == [], "a refused key must cost no upload"
    return lines[0]


def test_a_wrong_password_is_refused_before_anything_is_pushed(registry, tmp_path, model, cosign, push_env, pynacl):
    binary, env = cosign
    secret, _ = cosign_key(binary, env, tmp_path / "keys", PASSWORD)
    for wrong in ("not-" + PASSWORD, ""):
        line = refused_push(registry, model, secret, {"COSIGN_PASSWORD": wrong}, input=None)
        assert "cannot decrypt the signing key" in line and "COSIGN_PASSWORD" in line, line
        assert PASSWORD not in line  # nor the wrong one, which holds it


def test_no_password_and_no_terminal_is_refused_naming_cosign_password(registry, tmp_path, model, cosign, push_env,
                                                                       pynacl):
    binary, env = cosign
    secret, _ = cosign_key(binary, env, tmp_path / "keys", PASSWORD)
    # cosign would read a piped password; push refuses it, so that a stray pipe does not become a password.
    line = refused_push(registry, model, secret, None, input=PASSWORD + "\n")
    assert "COSIGN_PASSWORD is not set" in line and "no terminal" in line, line
    assert PASSWORD not in line


def test_without_cosign_password_the_terminal_is_asked(registry, tmp_path, model, cosign, push_env, pynacl):
    # As cosign: the prompt on a terminal. A pseudo-terminal as standard input, in a session of its own (no
    # controlling terminal), so getpass reads it rather than the terminal of whoever runs the tests.
    import pty
    import select
    import sys

    binary, env = cosign
    secret, public = cosign_key(binary, env, tmp_path / "keys", PASSWORD)
    reference = f"{registry.host}/acme/typed:v1"
    main, child = pty.openpty()
    with os.fdopen(main, "r+b", buffering=0) as terminal:
        process = subprocess.Popen([sys.executable, "-m", "oci_crane_loader", "push", str(model), reference,
                                    "--quiet", "--sign-key", str(secret)], stdin=child, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, start_new_session=True)
        os.close(child)
        try:
            # Typed once asked: getpass flushes what the terminal holds when it turns echo off.
            prompt = b""
            while not prompt.endswith(b"private key: "):
                assert select.select([process.stderr], [], [], 120)[0], f"no prompt, only {prompt!r}"
                chunk = os.read(process.stderr.fileno(), 1)  # type: ignore[union-attr]
                assert chunk, prompt
                prompt += chunk
            terminal.write(PASSWORD.encode() + b"\n")
            out, err = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 0, err
    assert prompt == b"Enter password for private key: " and PASSWORD.encode() not in out + err
    assert fetched(reference, tmp_path / "cache", "--verify-key", str(public)).is_dir()


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_keys_cosign_imports_sign_our_push(registry, tmp_path, model, cosign, kind, pynacl):
    # generate-key-pair makes ECDSA P-256 only; import-key-pair wraps RSA and Ed25519 keys the same way.
    binary, env = cosign
    plain, public = key_pair(tmp_path / "plain", kind=kind)
    subprocess.run([binary, "import-key-pair", "--key", str(plain), "--output-key-prefix", "imported"],
                   cwd=tmp_path, env=env, check=True, capture_output=True, timeout=120)
    assert b"ENCRYPTED SIGSTORE PRIVATE KEY" in (tmp_path / "imported.key").read_bytes()
    reference = f"{registry.host}/acme/imported-{kind}:v1"
    digest = push(model, reference, tmp_path / "push-cache", "--sign-key", str(tmp_path / "imported.key"),
                  env={"COSIGN_PASSWORD": env["COSIGN_PASSWORD"]})
    assert fetched(reference, tmp_path / "cache", "--verify-key", str(public)).is_dir()
    verified = cosign_verifies(binary, env, tmp_path / "imported.pub", f"{registry.host}/acme/imported-{kind}@{digest}")
    assert verified.returncode == 0, verified.stderr


def test_payload_is_byte_for_byte_what_cosign_writes():
    # sigstore's payload.Cosign{Image: digest}.MarshalJSON(): field order and `"optional":null` as Go writes them.
    reference = parse_reference("127.0.0.1:5000/acme/m:v1")
    digest = "sha256:" + "ab" * 32
    assert make_payload(reference, digest) == (
        b'{"critical":{"identity":{"docker-reference":"127.0.0.1:5000/acme/m"},"image":{"docker-manifest-digest":'
        b'"sha256:' + b"ab" * 32 + b'"},"type":"cosign container image signature"},"optional":null}')


# --- cosign 3's sigstore bundles, as OCI 1.1 referrers (the tag-schema fallback: crane registry serve has no API) --

BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"


def dsse_bundle(secret: Path, digest: str, predicate: str = "https://sigstore.dev/cosign/sign/v1") -> bytes:
    """A key-signed sigstore bundle as cosign 3 makes it for an image: a DSSE envelope over an in-toto statement."""
    from oci_crane_loader.signatures.bundles import pae

    statement = json.dumps({"_type": "https://in-toto.io/Statement/v1", "subject": [
        {"digest": {"sha256": digest.removeprefix("sha256:")}}], "predicateType": predicate, "predicate": {}}).encode()
    _, signature = signed_entry(secret, pae("application/vnd.in-toto+json", statement))
    return json.dumps({"mediaType": BUNDLE, "verificationMaterial": {"publicKey": {"hint": "x"}}, "dsseEnvelope": {
        "payload": base64.b64encode(statement).decode(), "payloadType": "application/vnd.in-toto+json",
        "signatures": [{"sig": signature}]}}).encode()


def put_referrers(tmp_path: Path, repository: str, digest: str, bundle: bytes, copies: int = 1,
                  declared_size: int | None = None) -> None:
    """``bundle`` as a referrer manifest of ``digest``, listed ``copies`` times in the tag-schema index
    (``sha256-<hex>``) that registries without the referrers API hold."""
    import httpx

    layout = tmp_path / f"bundle-layout-{len(list(tmp_path.glob('bundle-layout-*')))}"
    writer = LayoutWriter(layout)
    layer = writer.add_bytes(BUNDLE, bundle)
    config = writer.add_bytes("application/vnd.oci.empty.v1+json", b"{}")
    manifest = writer.add_manifest(config, [layer], artifact_type=BUNDLE)
    Crane().push(layout, f"{repository}@{manifest}")  # the blobs and the referrer manifest
    raw = (layout / "blobs" / "sha256" / manifest.removeprefix("sha256:")).read_bytes()
    host, _, path = repository.partition("/")
    url = f"http://{host}/v2/{path}/manifests"
    media = "application/vnd.oci.image.manifest.v1+json"
    if declared_size is not None:  # a manifest whose bundle layer claims another size, put by hand
        document = json.loads(raw)
        document["layers"][0]["size"] = declared_size
        raw = json.dumps(document).encode()
        manifest = "sha256:" + hashlib.sha256(raw).hexdigest()
        assert httpx.put(f"{url}/{manifest}", content=raw, headers={"Content-Type": media}).status_code == 201
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": media, "digest": manifest, "size": len(raw), "artifactType": BUNDLE}] * copies}
    done = httpx.put(f"{url}/{digest.replace(':', '-')}", content=json.dumps(index).encode(),
                     headers={"Content-Type": "application/vnd.oci.image.index.v1+json"})
    assert done.status_code == 201, done.text


def test_a_bundle_referrer_signed_with_the_key_is_served_and_kept_for_offline(registry, tmp_path, model, keys):
    secret, public = keys
    reference = f"{registry.host}/acme/bundled:v1"
    digest = push(model, reference, tmp_path / "push-cache")
    put_referrers(tmp_path, f"{registry.host}/acme/bundled", digest, dsse_bundle(secret, digest))
    assert fetched(reference, tmp_path / "cache", "--verify-key", str(public)).is_dir()
    assert fetched(reference, tmp_path / "cache", "--verify-key", str(public), "--offline").is_dir()
    _, other = key_pair(tmp_path / "other", "other")
    assert "none of the trusted keys" in fetch_refused(reference, tmp_path / "cache2", "--verify-key", str(other))


def test_a_registry_with_the_referrers_api_is_asked_through_it(registry, tmp_path, model, keys):
    """Where the registry has the OCI 1.1 referrers API, the bundles are found through
    /v2/<name>/referrers/<digest> (the tag schema answers 404 there, so nothing else could find them)."""
    secret, public = keys
    digest = push(model, f"{registry.host}/acme/api:v1", tmp_path / "push-cache")
    put_referrers(tmp_path, f"{registry.host}/acme/api", digest, dsse_bundle(secret, digest))
    handler, record = referrers_api(registry.host)
    with serve(handler) as host:
        assert fetched(f"{host}/acme/api:v1", tmp_path / "cache", "--verify-key", str(public)).is_dir()
        _, other = key_pair(tmp_path / "other", "other")
        assert "none of the trusted keys" in fetch_refused(f"{host}/acme/api:v1", tmp_path / "cache2",
                                                           "--verify-key", str(other))
    asked = [(path, status) for _, path, status in record.requests]
    assert (f"/v2/acme/api/referrers/{digest}", 200) in asked, asked
    assert not any(path.endswith(f"/manifests/{digest.replace(':', '-')}") and status == 200
                   for path, status in asked)  # the tag schema was never what answered


def test_a_bundle_for_another_digest_or_predicate_is_refused(registry, tmp_path, model, keys):
    secret, public = keys
    reference = f"{registry.host}/acme/bundled:v1"
    digest = push(model, reference, tmp_path / "push-cache")
    put_referrers(tmp_path, f"{registry.host}/acme/bundled", digest, dsse_bundle(secret, "sha256:" + "1" * 64))
    assert "a bundle signature for another manifest" in fetch_refused(reference, tmp_path / "cache", "--verify-key",
                                                                      str(public))
    put_referrers(tmp_path, f"{registry.host}/acme/bundled", digest,
                  dsse_bundle(secret, digest, predicate="https://slsa.dev/provenance/v1"))
    assert "not cosign's signature" in fetch_refused(reference, tmp_path / "cache", "--verify-key", str(public))


def test_a_referrer_flood_is_read_only_up_to_the_cap(registry, tmp_path, model, keys):
    from oci_crane_loader.signatures.bundles import MAX_BUNDLES

    secret, public = keys
    reference = f"{registry.host}/acme/flood:v1"
    digest = push(model, reference, tmp_path / "push-cache")
    put_referrers(tmp_path, f"{registry.host}/acme/flood", digest, dsse_bundle(secret, "sha256:" + "1" * 64),
                  copies=MAX_BUNDLES + 100)
    line, downloads = refused_counting_blobs(registry, reference, tmp_path / "cache", public)
    assert f"100 bundles past the first {MAX_BUNDLES}" in line
    assert downloads == MAX_BUNDLES


def test_a_huge_bundle_is_refused_unread(registry, tmp_path, model, keys):
    from oci_crane_loader.signatures.bundles import MAX_BUNDLE

    secret, public = keys
    reference = f"{registry.host}/acme/huge:v1"
    digest = push(model, reference, tmp_path / "push-cache")
    put_referrers(tmp_path, f"{registry.host}/acme/huge", digest, dsse_bundle(secret, digest),
                  declared_size=1 << 30)
    line, downloads = refused_counting_blobs(registry, reference, tmp_path / "cache", public)
    assert f"is {1 << 30} bytes (at most {MAX_BUNDLE})" in line
    assert downloads == 0


def test_cosign_3_and_we_verify_each_others_signatures(registry, tmp_path, model, cosign, keys):
    # cosign 3 writes a sigstore bundle as a referrer (not the .sig tag) unless told otherwise; its `verify --key`
    # still reads the .sig tag that `push --sign-key` writes.
    _, env = cosign
    binary = tool("cosign3")
    if binary is None:
        pytest.skip("cosign 3 is not installed: run bin/install-cosign")
    subprocess.run([binary, "generate-key-pair"], cwd=tmp_path, env=env, check=True, capture_output=True)
    reference = f"{registry.host}/acme/cosign3:v1"
    digest = push(model, reference, tmp_path / "push-cache")
    # No transparency log: without a signing config (which names one), --tlog-upload=false is allowed.
    done = subprocess.run([binary, "sign", "--key", "cosign.key", "--use-signing-config=false", "--tlog-upload=false",
                           "--allow-http-registry",
                           f"{registry.host}/acme/cosign3@{digest}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert fetched(reference, tmp_path / "cache", "--verify-key", str(tmp_path / "cosign.pub")).is_dir()
    assert f"/acme/cosign3/manifests/{signature_tag(digest)}" not in "\n".join(
        line for line in registry.lines if " PUT " in line)
    _, other = key_pair(tmp_path / "other", "other")
    assert "none of the trusted keys" in fetch_refused(reference, tmp_path / "cache2", "--verify-key", str(other))

    secret, public = keys
    ours = f"{registry.host}/acme/ours:v1"
    signed = push(model, ours, tmp_path / "push-cache", "--sign-key", str(secret))
    for key, expected in ((public, 0), (other, 1)):
        done = subprocess.run([binary, "verify", "--key", str(key), "--insecure-ignore-tlog", "--allow-http-registry",
                               f"{registry.host}/acme/ours@{signed}"], env=env, capture_output=True, text=True,
                              timeout=120)
        assert (done.returncode != 0) == bool(expected), done.stderr


@pytest.mark.parametrize(("named", "problem"), [
    ("index.docker.io/library/ubuntu", None),  # what cosign writes for `ubuntu`: Docker Hub's aliases are one
    ("docker.io/library/ubuntu", None),
    ("index.docker.io/library/debian", "another repository"),
    ("", "another repository"),
])
def test_the_payloads_repository_is_compared_as_crane_names_it(named, problem):
    from oci_crane_loader.signatures.cosign import payload_problem

    digest = "sha256:" + "ab" * 32
    payload = json.dumps({"critical": {"identity": {"docker-reference": named}, "image": {
        "docker-manifest-digest": digest}, "type": "cosign container image signature"}, "optional": None}).encode()
    found = payload_problem(payload, digest, parse_reference("ubuntu:22.04"))
    assert (found is None) if problem is None else (problem in str(found))
