"""`oci-crane cache verify`: re-hash every blob and manifest, check every ref holds a digest and every model or
config directory hard-links the very blobs of its manifest and still holds every file it was built with."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .. import errors
from ..digests import sha256_digest
from ..files import file_sha256
from ..formats import Action, recognise
from ..oci import Manifest
from .contents import missing_files, some
from .reachability import document
from .store import DigestFile, ModelDir, Store
from .usage import inodes_of, walk_files

_EMPTY_CONFIG = sha256_digest(b"{}")


@dataclass(frozen=True)
class Problem:
    kind: str  # blob, manifest, ref, model, config
    path: Path  # the damaged file, or the model/config directory
    detail: str

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "path": str(self.path), "detail": self.detail}


@dataclass(frozen=True)
class VerifyReport:
    root: Path
    blobs: int
    manifests: int
    refs: int
    directories: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {"root": str(self.root), "ok": self.ok, "checked": {"blobs": self.blobs, "manifests": self.manifests,
                "refs": self.refs, "directories": self.directories},
                "problems": [problem.to_json() for problem in self.problems]}

    def error(self) -> errors.IntegrityError:
        shown = ", ".join(str(problem.path) for problem in self.problems[:3])
        more = f" and {len(self.problems) - 3} more" if len(self.problems) > 3 else ""
        return errors.IntegrityError(
            f"{len(self.problems)} damaged cache entr{'y' if len(self.problems) == 1 else 'ies'}: {shown}{more}",
            "run `oci-crane cache prune --damaged`, then fetch the model again")


def _hash_problem(kind: str, file: DigestFile) -> Problem | None:
    if file.digest is None:
        return Problem(kind, file.path, "the file name is not a sha256 digest")
    try:
        actual = file_sha256(file.path)
    except OSError as exc:
        return Problem(kind, file.path, f"cannot be read ({exc.strerror})")
    if actual != file.digest:
        return Problem(kind, file.path, f"content hashes to {actual}")
    return None


def _linked_blobs(store: Store, digest: str, weights: bool) -> tuple[set[str], list[str]] | None:
    """The blobs a model (``weights``) or config directory of this manifest hard-links, and the blobs it needs
    that are missing; None if the manifest or its plan cannot be read (then only the general link check runs)."""
    manifest = document(store, digest)
    if not isinstance(manifest, Manifest):
        return None
    config_digest = manifest.config.digest
    missing = []
    if config_digest == _EMPTY_CONFIG:
        config = b"{}"
    else:
        try:
            config = store.blob_path(config_digest).read_bytes()
        except OSError:
            return set(), [config_digest]
    try:
        plan = recognise(manifest, config)
    except errors.OciCraneError:
        return None
    linked = {layer.descriptor.digest for layer in plan.layers
              if layer.action in (Action.FILE, Action.SHARD) and (weights or not layer.weights)}
    missing += sorted(d for d in linked if not store.blob_path(d).is_file())
    return linked, missing


def _directory_problems(store: Store, directory: ModelDir, blob_inodes: set[tuple[int, int]]) -> list[Problem]:
    """Every hard-linked file (link count > 1) must be the very inode of one of this manifest's blobs."""
    kind, path = directory.kind, directory.path
    problems = []
    expected = _linked_blobs(store, directory.manifest_digest, weights=kind == "model")
    allowed = blob_inodes
    if expected is not None:
        linked, missing = expected
        if not directory.filtered:  # a filtered fetch's directory needs only the blobs of the files it chose
            problems += [Problem(kind, path, f"needs blob {d} which is missing from the cache") for d in missing]
        allowed = inodes_of(store.blob_path(d) for d in linked)
    gone = missing_files(store, path)
    if gone:  # deleted (or cut) from the directory: a fetch would build it again, prune --damaged removes it
        problems.append(Problem(kind, path, f"lacks {len(gone)} file(s) it was built with: {some(gone)}"))
    for file in walk_files(path):
        info = file.lstat()
        if info.st_nlink > 1 and (info.st_dev, info.st_ino) not in allowed:
            problems.append(Problem(kind, path, f"{file.relative_to(path)} is hard-linked to a file "
                                                "that is not its blob"))
    return problems


def _hash_problems(kind: str, files: Iterable[DigestFile]) -> list[Problem]:
    return [problem for file in files if (problem := _hash_problem(kind, file))]


def verify_cache(store: Store) -> VerifyReport:
    """Re-hash every blob and manifest, check every ref holds a digest and every model/config directory links
    the blobs of its manifest."""
    blobs, manifests, refs = list(store.blobs()), list(store.manifests()), list(store.refs())
    problems = _hash_problems("blob", blobs) + _hash_problems("manifest", manifests)
    problems += [Problem("ref", ref.path, "not refs/<registry>/<repository>/@tags/<tag> or @digests/<hex>"
                         if ref.name is None
                         else "does not hold a sha256 digest") for ref in refs
                 if ref.name is None or ref.target is None]
    blob_inodes = inodes_of(blob.path for blob in blobs)
    directories = 0
    for directory in store.model_dirs():
        directories += 1
        problems += _directory_problems(store, directory, blob_inodes)
    return VerifyReport(store.root, len(blobs), len(manifests), len(refs), directories, tuple(problems))
