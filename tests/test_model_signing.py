"""OpenSSF model signing under the signature policy (signatures/openssf.py): the real `model-signing` library signs
a model directory (its CLI, as a team's pipeline would), `oci-crane push` carries model.sig as a file of the
artifact, and a fetch with --verify-key serves the model only if the bundle's key is trusted and the files fetched
are exactly the files it signed; on a real `crane registry serve`, with the hostile cases of docs/security.md."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.commands import run_cli
from support.models import write_model

from oci_crane_loader import errors
from oci_crane_loader.cache.store import Store
from oci_crane_loader.fetching import prepare
from oci_crane_loader.options import fetch_options
from oci_crane_loader.registry.crane import Crane
from oci_crane_loader.signatures.openssf import MAX_MODEL_BUNDLE

pytest.importorskip("model_signing")
from test_signatures import (
    EXIT_SIGNATURE,
    fetch_refused,
    fetched,
    key_pair,
    model_blob_downloads,
    push,
)


def sign(model: Path, secret: Path) -> Path:
    """`model_signing sign key` as a pipeline runs it (the installed package's CLI), model.sig into the directory."""
    signature = model / "model.sig"
    done = subprocess.run([sys.executable, "-m", "model_signing", "sign", "key", str(model), "--private_key",
                           str(secret), "--signature", str(signature)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return signature


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return key_pair(tmp_path / "keys")


@pytest.fixture
def signed_model(tmp_path: Path, keys: tuple[Path, Path]) -> Path:
    model = write_model(tmp_path / "model")
    sign(model, keys[0])
    return model


def downloads_of_weights(registry, digest: str, cache_dir: Path) -> list[str]:
    manifest = json.loads(Store(cache_dir).load_manifest(digest) or b"{}")
    weights = {layer["digest"] for layer in manifest.get("layers", [])
               if layer.get("annotations", {}).get("org.opencontainers.image.title", "").endswith(".safetensors")}
    return [blob for blob in model_blob_downloads(registry, digest, cache_dir) if blob in weights]


def test_a_model_signed_with_model_signing_is_served_under_its_key(registry, tmp_path, signed_model, keys):
    reference = f"{registry.host}/acme/msign:v1"
    push(signed_model, reference, tmp_path / "push-cache")
    path = fetched(reference, tmp_path / "cache", "--verify-key", str(keys[1]))
    assert (path / "model.sig").is_file() and (path / "config.json").is_file()
    # The library itself agrees on the directory we made (the signature file aside, as it signed).
    done = subprocess.run([sys.executable, "-m", "model_signing", "verify", "key", str(path), "--signature",
                           str(path / "model.sig"), "--public_key", str(keys[1])], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    # Warm: answered from the record, still under the policy (another key is refused from the cache too).
    assert fetched(reference, tmp_path / "cache", "--verify-key", str(keys[1])) == path
    _, other = key_pair(tmp_path / "other", "other")
    line = fetch_refused(reference, tmp_path / "cache", "--verify-key", str(other))
    assert "model.sig was signed by none of the trusted keys" in line


def test_a_model_signed_with_model_signing_comes_through_the_nodes_mirror(registry, tmp_path, signed_model, keys):
    """The manifest and the model.sig blob the policy reads come from the node's mirror, as the model does, when the
    node blocks the upstream (registries.conf)."""
    from support.mirror_config import registries_conf
    from support.storage_proxy import StorageProxy

    reference = f"{registry.host}/acme/msign-mirrored:v1"
    push(signed_model, reference, tmp_path / "push-cache")
    with StorageProxy(registry.host, redirect_blobs=False) as mirror:
        env = registries_conf(tmp_path / "registries.conf", registry.host, mirror.address, blocked=True)
        path = fetched(reference, tmp_path / "cache", "--verify-key", str(keys[1]), env=env)
        asked = [path for method, path, _, _ in mirror.front_requests if method == "GET"]
    assert (path / "model.sig").is_file()
    sig = "sha256:" + hashlib.sha256((signed_model / "model.sig").read_bytes()).hexdigest()
    through_mirror = sum(1 for p in asked if p.endswith(f"/blobs/{sig}"))
    # The mirror forwards to the upstream: every upstream read of model.sig was one of the mirror's.
    assert through_mirror >= 1 and registry.blob_downloads().count(sig) == through_mirror, asked


def test_another_key_is_refused_before_any_weight(registry, tmp_path, signed_model):
    reference = f"{registry.host}/acme/msign:v1"
    digest = push(signed_model, reference, tmp_path / "push-cache")
    _, other = key_pair(tmp_path / "other", "other")
    line = fetch_refused(reference, tmp_path / "cache", "--verify-key", str(other))
    assert reference in line and digest in line and "signed by none of the trusted keys" in line
    assert "model_signing sign key" in line  # the fix
    assert downloads_of_weights(registry, digest, tmp_path / "cache") == []


def test_a_file_changed_after_signing_is_refused_before_download(registry, tmp_path, signed_model, keys):
    (signed_model / "config.json").write_text(json.dumps({**json.loads((signed_model / "config.json").read_text()),
                                                          "hidden_size": 1}))
    reference = f"{registry.host}/acme/msign:v1"
    digest = push(signed_model, reference, tmp_path / "push-cache")
    line = fetch_refused(reference, tmp_path / "cache", "--verify-key", str(keys[1]))
    assert "config.json is not the file model.sig signed" in line and digest in line
    assert downloads_of_weights(registry, digest, tmp_path / "cache") == []


def test_a_file_added_or_removed_after_signing_is_refused(registry, tmp_path, signed_model, keys):
    (signed_model / "extra.txt").write_text("not signed")
    reference = f"{registry.host}/acme/extra:v1"
    push(signed_model, reference, tmp_path / "push-cache")
    assert "extra.txt is in the model but not in its model-signing bundle" in fetch_refused(
        reference, tmp_path / "cache", "--verify-key", str(keys[1]))
    (signed_model / "extra.txt").unlink()
    (signed_model / "tokenizer_config.json").unlink()
    reference = f"{registry.host}/acme/missing:v1"
    push(signed_model, reference, tmp_path / "push-cache")
    assert "lists 1 file(s) the model lacks: tokenizer_config.json" in fetch_refused(
        reference, tmp_path / "cache", "--verify-key", str(keys[1]))


def test_a_signature_copied_from_another_model_is_refused(registry, tmp_path, signed_model, keys):
    other = write_model(tmp_path / "other-model", seed=1)
    shutil.copy(signed_model / "model.sig", other / "model.sig")
    reference = f"{registry.host}/acme/copied:v1"
    digest = push(other, reference, tmp_path / "push-cache")
    line = fetch_refused(reference, tmp_path / "cache", "--verify-key", str(keys[1]))
    assert "is not the file model.sig signed" in line
    assert downloads_of_weights(registry, digest, tmp_path / "cache") == []


def test_an_unsigned_model_is_refused_naming_both_kinds_of_signature(registry, tmp_path, keys):
    model = write_model(tmp_path / "model")
    reference = f"{registry.host}/acme/unsigned:v1"
    digest = push(model, reference, tmp_path / "push-cache")
    line = fetch_refused(reference, tmp_path / "cache", "--verify-key", str(keys[1]))
    assert "is missing" in line and "no model-signing bundle (a file model.sig) among its files" in line
    assert downloads_of_weights(registry, digest, tmp_path / "cache") == []


def sign_shards(model: Path, secret: Path) -> None:
    """model-signing's other serialization (its Python API): a digest per shard of each file, which the manifest's
    layer digests cannot be compared with, so only the library's verify of the files made can judge them."""
    from model_signing import hashing, signing

    signing.Config().set_hashing_config(hashing.Config().use_shard_serialization(
        shard_size=64, ignore_paths=[Path("model.sig")])).use_elliptic_key_signer(private_key=secret).sign(
        model, model / "model.sig")


def test_the_library_checks_the_files_made_before_the_fetch_counts(registry, tmp_path, keys):
    model = write_model(tmp_path / "model")
    sign_shards(model, keys[0])
    reference = f"{registry.host}/acme/shards:v1"
    push(model, reference, tmp_path / "push-cache")
    assert (fetched(reference, tmp_path / "cache", "--verify-key", str(keys[1])) / "model.sig").is_file()

    weight = model / "model-00001-of-00002.safetensors"
    data = bytearray(weight.read_bytes())
    data[-1] ^= 1  # same name, same size, one bit: the names match up front, the bytes do not
    weight.write_bytes(bytes(data))
    push(model, reference, tmp_path / "push-cache")
    target = tmp_path / "placed"
    for _ in range(2):  # nothing was recorded: the second fetch checks again rather than answering from a record
        line = fetch_refused(reference, tmp_path / "cache", "--verify-key", str(keys[1]), "--local-dir", str(target))
        assert "model-signing's verify failed" in line and "model-00001-of-00002.safetensors" in line
    assert not target.exists() or list(target.iterdir()) == []
    # The vLLM loader streams weights as they arrive: a bundle of shards cannot vouch for them before they load.
    with pytest.raises(errors.SignatureError, match="weights streamed to vLLM cannot be checked"):
        prepare(fetch_options(cache_dir=tmp_path / "cache2", verify_keys=[keys[1]]), reference)


def test_a_cached_directory_changed_in_place_is_refused_on_the_warm_path(registry, tmp_path, signed_model, keys):
    """Fetched once without a policy (nothing checked, no marker kept), a cached file then changed in place with
    its size kept (the cache's cheap look passes): the first fetch under the policy runs the library's verify."""
    reference = f"{registry.host}/acme/msign:v1"
    push(signed_model, reference, tmp_path / "push-cache")
    path = fetched(reference, tmp_path / "cache")
    target = path / "tokenizer_config.json"
    data = target.read_bytes()
    target.chmod(0o644)
    target.write_bytes(data.replace(b"{", b"[", 1))
    line = fetch_refused(reference, tmp_path / "cache", "--verify-key", str(keys[1]))
    assert "model-signing's verify failed" in line and "tokenizer_config.json" in line


def test_offline_holds_the_policy_from_the_cache(registry, tmp_path, signed_model, keys):
    reference = f"{registry.host}/acme/msign:v1"
    digest = push(signed_model, reference, tmp_path / "push-cache")
    cache = tmp_path / "cache"
    path = fetched(reference, cache, "--verify-key", str(keys[1]))
    Crane().run("delete", f"{registry.host}/acme/msign@{digest}")  # withdrawn from the registry after caching
    assert fetched(reference, cache, "--verify-key", str(keys[1]), "--offline") == path
    _, other = key_pair(tmp_path / "other", "other")
    assert "signed by none of the trusted keys" in fetch_refused(reference, cache, "--verify-key", str(other),
                                                                 "--offline")
    # The bundle's blob removed from the cache: offline there is nothing left to verify against.
    manifest = json.loads(Store(cache).load_manifest(digest) or b"{}")
    bundle = next(layer["digest"] for layer in manifest["layers"]
                  if layer["annotations"].get("org.opencontainers.image.title") == "model.sig")
    Store(cache).blob_path(bundle).unlink()
    line = fetch_refused(reference, cache, "--verify-key", str(keys[1]), "--offline")
    assert "the cache lacks its model-signing bundle model.sig" in line, line


def test_local_dir_places_nothing_when_refused(registry, tmp_path, signed_model, keys):
    (signed_model / "extra.txt").write_text("not signed")
    reference = f"{registry.host}/acme/extra:v1"
    push(signed_model, reference, tmp_path / "push-cache")
    target = tmp_path / "placed"
    fetch_refused(reference, tmp_path / "cache", "--verify-key", str(keys[1]), "--local-dir", str(target))
    assert not target.exists() or list(target.iterdir()) == []
    (signed_model / "extra.txt").unlink()
    push(signed_model, reference, tmp_path / "push-cache")
    done = run_cli("fetch", reference, "--cache-dir", str(tmp_path / "cache"), "--quiet", "--verify-key",
                   str(keys[1]), "--local-dir", str(target))
    assert done.returncode == 0, done.stderr
    assert (target / "model.sig").is_file() and (target / "config.json").is_file()


def test_a_part_of_a_model_signed_whole_is_refused(registry, tmp_path, signed_model, keys):
    reference = f"{registry.host}/acme/msign:v1"
    push(signed_model, reference, tmp_path / "push-cache")
    line = fetch_refused(reference, tmp_path / "cache", "--verify-key", str(keys[1]), "--include", "*.json")
    assert "asks for a part of it" in line


def test_the_vllm_prepare_path_checks_before_streaming(registry, tmp_path, signed_model, keys):
    reference = f"{registry.host}/acme/msign:v1"
    push(signed_model, reference, tmp_path / "push-cache")
    options = fetch_options(cache_dir=tmp_path / "cache", verify_keys=[keys[1]])
    _, resolved, _, path = prepare(options, reference)
    assert resolved.signed is not None and (path / "config.json").is_file()
    _, other = key_pair(tmp_path / "other", "other")
    with pytest.raises(errors.SignatureError, match="signed by none of the trusted keys"):
        prepare(fetch_options(cache_dir=tmp_path / "cache2", verify_keys=[other]), reference)
    (signed_model / "extra.txt").write_text("not signed")
    push(signed_model, reference, tmp_path / "push-cache")
    with pytest.raises(errors.SignatureError, match=r"extra\.txt is in the model but not in"):
        prepare(fetch_options(cache_dir=tmp_path / "cache3", verify_keys=[keys[1]]), reference)


def _resigned(signature: Path, secret: Path, statement: bytes) -> bytes:
    """``signature``'s bundle with ``statement`` as its payload, signed with ``secret`` (DSSE's PAE, ECDSA)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from oci_crane_loader.signatures.bundles import pae

    key = serialization.load_pem_private_key(secret.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    bundle = json.loads(signature.read_bytes())
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(statement).decode()
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(
        key.sign(pae("application/vnd.in-toto+json", statement), ec.ECDSA(hashes.SHA256()))).decode()
    return json.dumps(bundle).encode()


def test_a_huge_bundle_is_refused_unparsed(registry, tmp_path, signed_model, keys):
    (signed_model / "model.sig").write_bytes(b" " * (MAX_MODEL_BUNDLE + 1))
    reference = f"{registry.host}/acme/huge:v1"
    digest = push(signed_model, reference, tmp_path / "push-cache")
    line = fetch_refused(reference, tmp_path / "cache", "--verify-key", str(keys[1]))
    assert f"is {MAX_MODEL_BUNDLE + 1} bytes (at most 16 MiB): not read" in line
    assert Store(tmp_path / "cache").load_manifest(digest) is not None
    assert not any(blob in registry.blob_downloads() for blob in
                   [layer["digest"] for layer in json.loads(Store(tmp_path / "cache").load_manifest(digest) or b"{}")
                    ["layers"] if layer["size"] == MAX_MODEL_BUNDLE + 1])


@pytest.mark.parametrize("where", ["bundle", "statement"])
def test_a_deeply_nested_bundle_is_refused_cleanly(registry, tmp_path, signed_model, keys, where):
    deep = b"[" * 100_000 + b"]" * 100_000
    if where == "bundle":
        (signed_model / "model.sig").write_bytes(deep)
    else:  # validly signed by the trusted key, its statement nested past any parser's depth
        (signed_model / "model.sig").write_bytes(_resigned(signed_model / "model.sig", keys[0], deep))
    reference = f"{registry.host}/acme/deep:v1"
    push(signed_model, reference, tmp_path / "push-cache")
    line = fetch_refused(reference, tmp_path / "cache", "--verify-key", str(keys[1]))
    assert "nested too deeply" in line


def test_a_statement_of_another_predicate_is_refused(registry, tmp_path, signed_model, keys):
    statement = json.dumps({"_type": "https://in-toto.io/Statement/v1", "subject": [],
                            "predicateType": "https://sigstore.dev/cosign/sign/v1", "predicate": {}}).encode()
    (signed_model / "model.sig").write_bytes(_resigned(signed_model / "model.sig", keys[0], statement))
    reference = f"{registry.host}/acme/predicate:v1"
    push(signed_model, reference, tmp_path / "push-cache")
    line = fetch_refused(reference, tmp_path / "cache", "--verify-key", str(keys[1]))
    assert "not model-signing's https://model_signing/signature/v1.0" in line


def test_the_exit_code_and_no_traceback_for_every_refusal(registry, tmp_path, signed_model):
    """One line, exit 3 (fetch_refused asserts both) also for a key model-signing cannot use (Ed25519)."""
    _, public = key_pair(tmp_path / "ed", "ed", kind="ed25519")
    reference = f"{registry.host}/acme/msign:v1"
    push(signed_model, reference, tmp_path / "push-cache")
    done = run_cli("fetch", reference, "--cache-dir", str(tmp_path / "cache"), "--quiet", "--verify-key", str(public))
    assert done.returncode == EXIT_SIGNATURE and "Traceback" not in done.stderr


def test_a_file_the_signer_left_out_is_refused(registry, tmp_path, keys):
    """`--ignore-paths` leaves a file out of the bundle, but the push carries it: unsigned bytes the registry could
    change unseen, so refused like any extra file (the bundle's own ignore list does not excuse it)."""
    model = write_model(tmp_path / "model")
    (model / "README.md").write_text("# a model card\n")
    done = subprocess.run([sys.executable, "-m", "model_signing", "sign", "key", str(model), "--private_key",
                           str(keys[0]), "--signature", str(model / "model.sig"), "--ignore-paths",
                           str(model / "README.md")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    reference = f"{registry.host}/acme/ignored:v1"
    push(model, reference, tmp_path / "push-cache")
    assert "README.md is in the model but not in its model-signing bundle" in fetch_refused(
        reference, tmp_path / "cache", "--verify-key", str(keys[1]))


def test_a_file_planted_in_the_cached_directory_is_refused_warm(registry, tmp_path, signed_model, keys):
    reference = f"{registry.host}/acme/msign:v1"
    push(signed_model, reference, tmp_path / "push-cache")
    path = fetched(reference, tmp_path / "cache", "--verify-key", str(keys[1]))
    path.chmod(0o755)
    (path / "planted.py").write_text("print('not signed')\n")
    line = fetch_refused(reference, tmp_path / "cache", "--verify-key", str(keys[1]))
    assert "1 file(s) are not in the bundle: planted.py" in line


def test_an_outage_verifies_the_bundle_the_cache_kept(registry, tmp_path, signed_model, keys):
    reference = f"{registry.host}/acme/msign:v1"
    push(signed_model, reference, tmp_path / "push-cache")
    path = fetched(reference, tmp_path / "cache", "--verify-key", str(keys[1]))
    registry.process.terminate()
    registry.process.wait(timeout=30)
    done = run_cli("fetch", reference, "--cache-dir", str(tmp_path / "cache"), "--quiet", "--verify-key",
                   str(keys[1]))
    assert done.returncode == 0 and done.stdout.strip() == str(path), done.stderr
    assert "verifying the model-signing bundle the cache kept" in done.stderr
    _, other = key_pair(tmp_path / "other", "other")
    done = run_cli("fetch", reference, "--cache-dir", str(tmp_path / "cache"), "--quiet", "--verify-key", str(other))
    assert done.returncode == EXIT_SIGNATURE and "signed by none of the trusted keys" in done.stderr


def test_inspect_checks_the_file_list_too(registry, tmp_path, signed_model, keys):
    (signed_model / "extra.txt").write_text("not signed")
    reference = f"{registry.host}/acme/extra:v1"
    push(signed_model, reference, tmp_path / "push-cache")
    line = fetch_refused(reference, tmp_path / "cache", "--verify-key", str(keys[1]), command="inspect")
    assert "extra.txt is in the model but not in its model-signing bundle" in line


def test_without_the_library_one_error_names_the_extra(registry, tmp_path, signed_model, keys):
    """The key check up front needs only `cryptography`; the files' check needs `model-signing`: where it cannot be
    imported (a package that fails to import shadows it here), the fetch is refused with the extra to install, and
    nothing is recorded (installed again, the fetch succeeds)."""
    blocker = tmp_path / "blocker" / "model_signing"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('model-signing is not installed here')\n")
    reference = f"{registry.host}/acme/msign:v1"
    push(signed_model, reference, tmp_path / "push-cache")
    env = {"PYTHONPATH": os.pathsep.join([str(blocker.parent), os.environ.get("PYTHONPATH", "")])}
    done = run_cli("fetch", reference, "--cache-dir", str(tmp_path / "cache"), "--quiet", "--verify-key",
                   str(keys[1]), env=env)
    assert done.returncode == EXIT_SIGNATURE, done.stderr
    assert "pip install 'oci-crane-loader[model-signing]'" in done.stderr and "Traceback" not in done.stderr
    assert fetched(reference, tmp_path / "cache", "--verify-key", str(keys[1])).is_dir()


def test_a_bundle_attached_as_a_referrer_is_read_too(registry, tmp_path, keys):
    """model.sig kept out of the artifact and attached to its manifest as a sigstore bundle referrer (as `oras
    attach` does): verified as a file of the artifact would be, kept in the cache for --offline."""
    from test_signatures import put_referrers

    model = write_model(tmp_path / "model")
    signature = tmp_path / "model.sig"
    done = subprocess.run([sys.executable, "-m", "model_signing", "sign", "key", str(model), "--private_key",
                           str(keys[0]), "--signature", str(signature)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    reference = f"{registry.host}/acme/attached:v1"
    digest = push(model, reference, tmp_path / "push-cache")
    cache = tmp_path / "cache"
    line = fetch_refused(reference, cache, "--verify-key", str(keys[1]))
    assert "no model-signing bundle (a file model.sig) among its files or referrers" in line
    put_referrers(tmp_path, f"{registry.host}/acme/attached", digest, signature.read_bytes())
    path = fetched(reference, cache, "--verify-key", str(keys[1]))
    assert not (path / "model.sig").exists()
    # `cache prune` keeps what a model the cache still names needs: the kept bundle, the directory's marker.
    assert run_cli("cache", "prune", "--cache-dir", str(cache)).returncode == 0
    assert len(list((cache / "records").glob("*.json"))) == 2  # the fetch's record, the marker
    assert fetched(reference, cache, "--verify-key", str(keys[1]), "--offline") == path
    _, other = key_pair(tmp_path / "other", "other")
    assert "was signed by none of the trusted keys" in fetch_refused(reference, tmp_path / "cache2", "--verify-key",
                                                                     str(other))
    # The same bundle attached to another model: its files are not these.
    other_model = write_model(tmp_path / "other-model", seed=1)
    reference = f"{registry.host}/acme/attached:v2"
    digest = push(other_model, reference, tmp_path / "push-cache")
    put_referrers(tmp_path, f"{registry.host}/acme/attached", digest, signature.read_bytes())
    assert "is not the file model.sig (a referrer) signed" in fetch_refused(reference, cache, "--verify-key",
                                                                            str(keys[1]))
