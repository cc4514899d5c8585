"""`oci-crane push DIR REF`: check a local model directory, pack it as an OCI artifact, push it with crane.

The directory is validated before anything is packed or sent (config.json, safetensors weights with sound headers,
an index that matches its shards; for a PEFT LoRA adapter, adapters.check_adapter_dir), so a push never publishes
a model that `fetch` would refuse. The artifact is written as an OCI image layout in a scratch directory on the
model's filesystem, so weights are hard-linked rather than copied, then `crane push LAYOUT REF` sends it byte for
byte; the layout is removed afterwards, always.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import errors
from .adapters import ADAPTER_CONFIG, check_adapter_dir
from .cache.store import Store, remove_tree
from .formats.dmr_pack import pack_dmr
from .formats.modelpack_pack import pack_modelpack
from .packing import collect_files, read_hf_config
from .progress import Progress, human
from .reference import parse_reference
from .registry.crane import Crane
from .safetensors_check import check_model_dir

log = logging.getLogger(__name__)

FORMATS = ("modelpack", "dmr")
_FORMAT_NAMES = {"modelpack": "modelpack", "dmr": "dmr-v0.2"}  # as `fetch` reports them


@dataclass(frozen=True)
class PushResult:
    reference: str  # as typed
    pinned: str  # registry/repository@sha256:...
    digest: str  # the manifest digest
    format: str  # "modelpack" or "dmr-v0.2"
    files: list[str] = field(default_factory=list)  # relative paths, one layer each
    bytes: int = 0  # total size of the files
    signature: str | None = None  # the pinned signature image, with --sign-key

    def to_json(self) -> dict[str, object]:
        found: dict[str, object] = {"reference": self.reference, "pinned": self.pinned, "digest": self.digest,
                                    "format": self.format, "files": self.files, "bytes": self.bytes}
        if self.signature is not None:
            found["signature"] = self.signature
        return found


def validate_model_dir(model_dir: Path) -> list[str]:
    """Refuse a directory that vLLM could not load; return the files that will be packed."""
    fix = "pass the model directory: the one holding config.json and the .safetensors files"
    if not model_dir.exists():
        raise errors.InvalidModelError(f"{model_dir} does not exist", fix)
    if not model_dir.is_dir():
        raise errors.InvalidModelError(f"{model_dir} is not a directory", fix)
    files = collect_files(model_dir)
    if "config.json" not in files and ADAPTER_CONFIG in files:  # a LoRA adapter: it rides on a base model's config
        check_adapter_dir(model_dir)
        return files
    if "config.json" not in files:
        raise errors.InvalidModelError(f"{model_dir} has no config.json (vLLM needs it to load the model)", fix)
    read_hf_config(model_dir)  # refuses a config.json that is not a JSON object
    if not any(name.endswith(".safetensors") for name in files):
        raise errors.InvalidModelError(
            f"{model_dir} has no .safetensors files (vLLM's loader reads safetensors weights)",
            "save the model with save_pretrained(DIR, safe_serialization=True) and push that directory")
    check_model_dir(model_dir)  # every header, and the index against its shards
    return files


def _scratch_dir(model_dir: Path, store: Store) -> Path:
    """A new empty directory on the model's filesystem, so the layout's blobs can be hard links: the cache's scratch
    space, else the system temp dir, else beside the model. Elsewhere (copies) only if none of them is.

    Not a cache shared by a group: crane pushes, with our credentials, whatever the layout directory holds when it
    runs, and a member could swap ours there for a directory of theirs (docs/security.md)."""
    private = False
    with contextlib.suppress(OSError):  # not there, or not writable: try the next one
        private = store.scratch_is_private()
        if private and store.scratch_shares_filesystem(model_dir):
            return store.scratch_dir("push-layout.")
    device = model_dir.stat().st_dev
    candidates = [(Path(tempfile.gettempdir()), "oci-crane-push-layout."),
                  (model_dir.resolve().parent, ".oci-crane-push-layout.")]
    for parent, prefix in candidates:
        try:
            if parent.stat().st_dev == device:
                return Path(tempfile.mkdtemp(prefix=prefix, suffix=f".{os.getpid()}.incomplete", dir=parent))
        except OSError:
            continue  # not there, or not writable: try the next one
    scratch = (store.scratch_dir("push-layout.") if private
               else Path(tempfile.mkdtemp(prefix="oci-crane-push-layout.", suffix=f".{os.getpid()}.incomplete")))
    log.warning("no writable directory on the filesystem of %s: the push copies its files into %s first",
                model_dir, scratch)
    return scratch


def push(model_dir: str | os.PathLike[str], reference: str, *, format: str = "modelpack", insecure: bool = False,
         cache_dir: str | os.PathLike[str] | None = None, crane: Crane | None = None,
         progress: Progress | None = None, sign_key: str | os.PathLike[str] | None = None) -> PushResult:
    """Validate ``model_dir``, pack it (``format``: "modelpack" or "dmr") and push it to ``reference`` (a tag).

    ``progress`` shows each step with its time, and the upload's bytes where the OS counts crane's reads (Linux).
    Raises InvalidModelError for a directory that is not a loadable model, InvalidReferenceError for a reference
    without a tag to push to, and the CraneError subclasses for registry failures. Nothing is pushed unless the
    directory is valid. ``sign_key``: cosign's encrypted private key (password: COSIGN_PASSWORD) or an unencrypted
    PEM one; the pushed digest is then signed as `cosign sign --key` does (signatures/sign.py) and ``signature``
    names the signature image."""
    if format not in FORMATS:
        raise errors.OciCraneError(f"unknown format {format!r}", "use --format modelpack or --format dmr")
    key = None
    if sign_key is not None:  # read (and decrypted) before anything is packed or sent: a wrong password costs no upload
        from .signatures.keys import load_private_key

        key = load_private_key(sign_key)
    directory = Path(model_dir)
    files = validate_model_dir(directory)
    parsed = parse_reference(reference)
    if parsed.digest:
        raise errors.InvalidReferenceError(
            f"cannot push to {reference!r}: a digest reference names an existing manifest, a push needs a tag",
            f"push to a tag, e.g. {parsed.repository_name}:v1; the pinned repo@sha256:... is printed afterwards")
    store = Store(Path(cache_dir) if cache_dir is not None else None)
    progress = progress or Progress(enabled=False)
    size = sum((directory / name).stat().st_size for name in files)
    what = f"{len(files)} files, {human(size)}"
    layout = _scratch_dir(directory, store)
    try:
        with progress.working(f"packing {what} as {format}"):  # hashes every file: minutes for large weights
            if format == "modelpack":
                digest = pack_modelpack(directory, layout)
            else:
                digest = pack_dmr(directory, layout, version="v0.2")
        log.debug("packed %s as %s: manifest %s in %s", directory, format, digest, layout)
        crane = crane or Crane(insecure=insecure)
        with progress.transfer(f"pushing {what} to {parsed.name}", size) as advance:
            pinned = crane.push(layout, parsed.name, advance, size=size)
    finally:
        remove_tree(layout)
    pushed = pinned.rpartition("@")[2]
    if pushed != digest:
        raise errors.IntegrityError(f"crane reported manifest {pushed} but the packed manifest is {digest}",
                                    "run again with --debug; check the crane version (oci-crane doctor)")
    signature = None
    if key is not None:
        from .signatures.sign import sign_pushed

        with progress.working(f"signing {digest[:19]} with {key.path}"):
            signature = sign_pushed(crane, store, parsed, digest, key)
    return PushResult(reference=str(parsed), pinned=pinned, digest=digest, format=_FORMAT_NAMES[format],
                      files=files, bytes=size, signature=signature)
