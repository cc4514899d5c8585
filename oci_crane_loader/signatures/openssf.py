"""OpenSSF model signing (the `model-signing` package, `model_signing sign key DIR`): a sigstore bundle over the
model's *files*, carried as a file of the artifact (a layer named ``model.sig``) or attached to its manifest as a
sigstore bundle referrer. Its DSSE envelope holds an in-toto statement of predicate
``https://model_signing/signature/v1.0`` listing every file (or shard) with its digest.

Where a signature policy is in force and no cosign signature vouches for the manifest (policy.py), such a bundle is
checked in three steps:

1. Up front, before any weight is downloaded: its blob read (size-capped, its JSON's depth bounded), its DSSE
   signature checked with the trusted keys (ECDSA over DSSE's PAE, as model-signing's key signer makes it), then
   its file list compared with the manifest's file layers (a file layer's digest is its file's sha256, which crane
   checks on download): a wrong key, a tampered, extra or missing file is refused before the weights come.
2. Once the model directory is materialised (hard links and extracted files, no symlinks) and before the fetch is
   recorded, handed to vLLM or placed in --local-dir: the `model-signing` library's own verify over the directory,
   and the directory's file list exactly the bundle's (the signature file aside; a file the signer left out with
   --ignore-paths is refused too: the registry could change it unseen).
3. A warm fetch (cached.py's record) re-checks step 1 with the keys in force (a small blob) and the marker step 2
   left for this directory and this bundle: the 100 GB are not re-hashed on every warm fetch. The cache's blobs
   are trusted as for every cached fetch (sizes checked; `oci-crane cache verify` re-hashes).

`model-signing` is imported only in step 2 (the `model-signing` extra).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import errors
from ..digests import sha256_digest
from ..files import list_files
from .bundles import IN_TOTO_PAYLOAD, STATEMENT_TYPE, envelope

if TYPE_CHECKING:
    from pathlib import Path

    from ..cache.store import Store
    from ..reference import Reference
    from ..registry.crane import Crane
    from .keys import PublicKey

log = logging.getLogger(__name__)

SIGNATURE_NAMES = ("model.sig",)  # model_signing's default --signature: the file of the artifact we read
REFERRER = "model.sig (a referrer)"  # a bundle attached to the manifest rather than carried among its files
PREDICATE = "https://model_signing/signature/v1.0"
# A bundle lists each file with a digest (~150 bytes a file): 16 MiB is 100 000 files. Checked before parsing.
MAX_MODEL_BUNDLE = 16 << 20
MAX_RESOURCES = 200_000
TITLE_KEYS = ("org.opencontainers.image.title", "org.cncf.model.filepath", "org.cnai.model.filepath")
UNCACHED = "the cache lacks its"  # a note that says nothing was judged (offline, an outage)
INSTALL_FIX = "pip install 'oci-crane-loader[model-signing]'"
SIGN_FIX = ("sign the model directory as you push it (model_signing sign key DIR --private_key KEY.pem "
            "--signature DIR/model.sig), or sign the manifest digest with cosign, or pass the right --verify-key; "
            "docs/security.md, Signatures")


@dataclass(frozen=True)
class FileBundle:
    """A model-signing bundle a trusted key signed: what the model's files must match."""

    name: str  # the file of the artifact it came as
    blob: str  # that file's digest (its layer's)
    data: bytes
    key: PublicKey  # the trusted key whose signature verified
    method: str  # "files" or "shards" (model-signing's serialization)
    serialization: Mapping[str, Any]  # how it hashed: hash_type, shard_size
    resources: Mapping[str, str]  # resource name (a file, or file:start:end) -> "algorithm:hex"

    @property
    def files(self) -> set[str]:
        """The files the bundle covers."""
        if self.method == "files":
            return set(self.resources)
        return {name.rsplit(":", 2)[0] for name in self.resources}

    def file_digest(self, name: str) -> str | None:
        """``name``'s sha256 as the bundle says it, where the bundle hashes whole files with sha256."""
        digest = self.resources.get(name) if self.method == "files" else None
        return digest if digest is not None and digest.startswith("sha256:") else None


def load_json(raw: bytes, what: str) -> Any:
    """oci.load_json (depth-bounded), imported only here: a fetch without such a bundle loads no pydantic."""
    from ..oci import load_json as load

    return load(raw, what)


def find_bundle_layer(raw_manifest: bytes, what: str) -> tuple[str, str, int] | None:
    """The (name, digest, size) of the manifest's layer that is a model-signing bundle, by its file name."""
    try:
        document = load_json(raw_manifest, what)
    except errors.InvalidDocumentError:
        return None
    layers = document.get("layers") if isinstance(document, dict) else None
    for layer in layers if isinstance(layers, list) else []:
        annotations = layer.get("annotations") if isinstance(layer, dict) else None
        if not isinstance(annotations, dict):
            continue
        name = next((annotations[key] for key in TITLE_KEYS if isinstance(annotations.get(key), str)), None)
        digest, size = layer.get("digest"), layer.get("size")
        if name in SIGNATURE_NAMES and isinstance(digest, str) and isinstance(size, int) and \
                not isinstance(size, bool):
            return name, digest, size
    return None


def up_front(store: Store, crane: Crane, reference: Reference, digest: str,
             keys: tuple[PublicKey, ...], *, cache_only: bool = False,
             referrers: Sequence[tuple[str, bytes]] = ()) -> tuple[FileBundle | None, list[str]]:
    """The model-signing bundle among ``digest``'s files that a trusted key signed (step 1 of the module's doc), or
    None and why not. Offline (or in an outage) only the cache is read: the manifest and the bundle's blob a
    fetch kept."""
    cache_only = cache_only or crane.access.offline
    raw = store.load_manifest(digest)
    if raw is None:
        if cache_only:
            return None, [f"{UNCACHED} manifest to look for a model-signing bundle in"]
        from ..sourcing import digest_manifest

        raw = digest_manifest(crane, reference, digest)  # through the node's mirrors, checked against the digest
        store.save_manifest(raw)  # the fetch reads it next
    found = find_bundle_layer(raw, f"manifest of {reference}")
    if found is None:
        bundle, notes = _from_referrers(store, digest, keys, cache_only, referrers)
        if bundle is None and not notes:
            notes = [f"no model-signing bundle (a file {' or '.join(SIGNATURE_NAMES)}) among its files or referrers"]
        return bundle, notes
    name, blob, size = found
    if not 0 < size <= MAX_MODEL_BUNDLE:
        return None, [f"its model-signing bundle {name} is {size} bytes (at most {MAX_MODEL_BUNDLE >> 20} MiB): not "
                      "read"]
    if store.has_blob_sized(blob, size):
        data = store.blob_path(blob).read_bytes()
    elif cache_only:
        return None, [f"{UNCACHED} model-signing bundle {name} ({blob})"]
    else:
        from ..sourcing import small_blob

        data = small_blob(crane, reference, blob, size)
    if len(data) != size or sha256_digest(data) != blob:
        raise errors.IntegrityError(f"{name} ({blob}) of {reference} does not match its digest")
    opened = open_bundle(data, name, blob, keys)
    return (opened, []) if isinstance(opened, FileBundle) else (None, [opened])


def _from_referrers(store: Store, digest: str, keys: tuple[PublicKey, ...], cache_only: bool,
                    referrers: Sequence[tuple[str, bytes]]) -> tuple[FileBundle | None, list[str]]:
    """A model-signing bundle among ``digest``'s sigstore bundle referrers (`oras attach --artifact-type
    application/vnd.dev.sigstore.bundle.v0.3+json REF model.sig:application/vnd.dev.sigstore.bundle.v0.3+json`),
    as policy.py read them with cosign 3's (``referrers``: at most 16, each at most 256 KiB); one that verifies is
    kept in the cache (its signatures file) for --offline, which verifies it again with the keys in force then."""
    import base64

    if cache_only:
        try:
            record = json.loads(store.load_signatures(digest) or b"{}")["model_signing"]
            data, blob = base64.b64decode(str(record["bundle"]), validate=True), str(record["blob"])
        except (KeyError, ValueError, TypeError, RecursionError):
            return None, []
        referrers = [(blob, data)]
    problems: list[str] = []
    for manifest, data in referrers:
        opened = open_bundle(data, REFERRER, manifest, keys)
        if isinstance(opened, FileBundle):
            if not cache_only:
                _keep(store, digest, {"bundle": base64.b64encode(data).decode(), "blob": manifest})
            return opened, []
        problems.append(opened)
    return None, problems


def _keep(store: Store, digest: str, bundle: dict[str, str]) -> None:
    """Beside the cosign signatures policy.py keeps for ``digest`` (which `cache prune` drops with the manifest)."""
    try:
        kept = json.loads(store.load_signatures(digest) or b"{}")
    except (ValueError, RecursionError):
        kept = {}
    kept = kept if isinstance(kept, dict) else {}
    kept = {"signatures": kept.get("signatures", []), "model_signing": bundle}
    store.save_signatures(digest, json.dumps(kept).encode())


def names_model_signing(statement: bytes) -> bool:
    """Whether a bundle's (unverified) statement is model-signing's: then openssf.py judges it, not cosign's rules."""
    return PREDICATE.encode() in statement


def open_bundle(data: bytes, name: str, blob: str, keys: tuple[PublicKey, ...]) -> FileBundle | str:
    """The bundle, if one of ``keys`` signed it and it lists files; else why not. Bounded before parsing: size,
    then depth (oci.load_json walks without recursion), then each field's shape."""
    if len(data) > MAX_MODEL_BUNDLE:
        return f"its model-signing bundle {name} is over {MAX_MODEL_BUNDLE >> 20} MiB"
    try:
        load_json(data, f"model-signing bundle {name}")
    except errors.InvalidDocumentError as exc:
        return exc.cause
    opened = envelope(data)
    if isinstance(opened, str):
        return f"{name}: {opened}"
    signed, signature, statement = opened
    key = next((key for key in keys if key.verifies(signature, signed)), None)
    if key is None:
        return (f"its model-signing bundle {name} was signed by none of the trusted keys (another key, or a changed "
                "file list)")
    if not signed.startswith(b"DSSEv1 %d %s " % (len(IN_TOTO_PAYLOAD), IN_TOTO_PAYLOAD.encode())):
        return f"{name}: a DSSE payload that is not an in-toto statement"
    problem = _statement(statement)
    if isinstance(problem, str):
        return f"{name}: {problem}"
    serialization, resources = problem
    return FileBundle(name, blob, data, key, serialization["method"], serialization, resources)


def _statement(statement: bytes) -> tuple[dict[str, Any], dict[str, str]] | str:
    try:
        document: Any = load_json(statement, "the signed statement")
        kind, predicate_type = document["_type"], document["predicateType"]
        if kind != STATEMENT_TYPE or predicate_type != PREDICATE:
            return f"a signed statement of predicate {str(predicate_type)[:100]!r}, not model-signing's {PREDICATE}"
        serialization = document["predicate"]["serialization"]
        method = serialization["method"]
        listed = document["predicate"]["resources"]
        if method not in ("files", "shards") or not isinstance(listed, list) or len(listed) > MAX_RESOURCES:
            return "a signed statement whose file list is not model-signing's"
        resources = {str(item["name"]): f"{item['algorithm']}:{item['digest']}" for item in listed}
    except errors.InvalidDocumentError as exc:
        return exc.cause
    except (KeyError, TypeError, AttributeError):
        return "a signed statement that is not model-signing's (no predicate.serialization or resources)"
    return serialization, resources


def check_layers(bundle: FileBundle, files: Mapping[str, str], complete: bool) -> str | None:
    """Before downloading: the manifest's file layers (path -> digest) against the bundle. ``complete``: the
    layers are the whole model (no archive, no unnamed shard), so a file the bundle lists must be among them."""
    listed = bundle.files
    for path, digest in sorted(files.items()):
        if path in SIGNATURE_NAMES:
            continue
        if path not in listed:
            return f"{path} is in the model but not in its model-signing bundle {bundle.name}"
        signed = bundle.file_digest(path)
        if signed is not None and signed != digest:
            return f"{path} is not the file {bundle.name} signed (its digest is {digest}, the signed one {signed})"
    missing = sorted(listed - set(files))
    if complete and missing:
        return f"{bundle.name} lists {len(missing)} file(s) the model lacks: {', '.join(missing[:5])}"
    return None


def _marker_key(bundle: FileBundle, directory: Path) -> str:  # dropped by `cache prune` with its directory
    return json.dumps(["model-signing", directory.name, sha256_digest(bundle.data)])


def require_files(store: Store, bundle: FileBundle, directory: Path, reference: Reference, digest: str) -> None:
    """Step 2 (or, for a directory checked before, step 3): ``directory`` holds exactly the files ``bundle``
    signed, each with the signed digest; else SignatureError naming the reference, the digest and the fix."""
    present = [name for name in list_files(directory) if name not in SIGNATURE_NAMES]
    problem = _file_list(bundle, present)
    if problem is None:
        marker = store.load_record(_marker_key(bundle, directory))
        if marker is not None and marker.get("files") == present:
            return
        problem = _library_verify(store, bundle, directory)
    if problem is not None:
        raise errors.SignatureError(f"{reference} ({digest}) is not the model its model-signing bundle signed (key "
                                    f"{bundle.key.path}): {problem}", SIGN_FIX)
    store.save_record(_marker_key(bundle, directory), {"dir": directory.name, "files": present})
    log.info("%s: its %d file(s) match the model-signing bundle %s signed by %s", reference, len(present),
             bundle.name, bundle.key.path)


def _file_list(bundle: FileBundle, present: list[str]) -> str | None:
    extra = sorted(set(present) - bundle.files)
    missing = sorted(bundle.files - set(present))
    if extra:
        return f"{len(extra)} file(s) are not in the bundle: {', '.join(extra[:5])}"
    if missing:
        return f"{len(missing)} file(s) of the bundle are missing: {', '.join(missing[:5])}"
    return None


def _library_verify(store: Store, bundle: FileBundle, directory: Path) -> str | None:
    """model-signing's verify over ``directory``, from the bundle bytes verified up front (a temp file: never a
    file of the directory that could have changed since)."""
    import importlib

    try:  # untyped, and absent where the extra is not installed: Any either way
        hashing: Any = importlib.import_module("model_signing.hashing")
        verifying: Any = importlib.import_module("model_signing.verifying")
    except ImportError:
        raise errors.SignatureError(f"verifying the model-signing bundle {bundle.name} needs the `model-signing` "
                                    "package, which is not installed", INSTALL_FIX) from None
    document = bundle.serialization
    config = hashing.Config().set_ignored_paths(paths=list(SIGNATURE_NAMES), ignore_git_paths=False)
    try:
        if bundle.method == "files":
            config.use_file_serialization(hashing_algorithm=document["hash_type"], allow_symlinks=False)
        else:
            # The statement is a protobuf Struct: its numbers come back as floats (64.0), which the library's own
            # guess passes on as is and then fails on.
            size = document["shard_size"]
            if isinstance(size, bool) or not isinstance(size, int | float) or size != int(size) or size < 1:
                return f"its shard size {size!r} is not a positive whole number"
            config.use_shard_serialization(hashing_algorithm=document["hash_type"], shard_size=int(size),
                                           allow_symlinks=False)
    except (KeyError, TypeError, ValueError) as exc:
        return f"its serialization is not one model-signing reads ({exc})"
    temp = store.temp_path("model-signing-bundle")
    try:
        temp.write_bytes(bundle.data)
        verifying.Config().use_elliptic_key_verifier(public_key=bundle.key.path).set_hashing_config(
            config).verify(directory, temp)
    except (ValueError, KeyError, TypeError, OSError) as exc:  # the library's mismatch is a ValueError
        return f"model-signing's verify failed: {str(exc)[:600]}"
    finally:
        temp.unlink(missing_ok=True)
    return None

