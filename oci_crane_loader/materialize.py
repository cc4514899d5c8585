"""Turn verified blobs into a model directory: hard links for files, safe extraction for tars, shard names.

The directory is built under tmp/, validated (every safetensors header), then renamed into models/ in one step,
so a model directory that exists is always complete.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .adapters import ADAPTER_CONFIG, check_adapter_dir, is_adapter_dir
from .cache.contents import absent_from, built_files, missing_files, save_built_files, some
from .cache.store import Store, remove_tree
from .errors import CacheError, IntegrityError, InvalidModelError, OciCraneError, cache_os_error
from .files import create_new, link_or_copy, open_nofollow
from .formats import Action, LayerPlan, Plan
from .paths import safe_relative_path
from .progress import human
from .safetensors_check import INDEX_FILENAME, check_model_dir, read_header, read_index
from .settings import UnpackLimits, settings

log = logging.getLogger(__name__)



ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


@contextlib.contextmanager
def open_tar(archive: Path) -> Iterator[tarfile.TarFile]:
    """A tar read as a stream, plain, gzip, bzip2, xz or zstd by its magic bytes: media types can mislead."""
    with open(archive, "rb") as raw:
        if raw.read(4) == ZSTD_MAGIC:
            import zstandard

            raw.seek(0)
            with zstandard.ZstdDecompressor().stream_reader(raw) as stream, tarfile.open(fileobj=stream,
                                                                                         mode="r|") as tar:
                try:
                    yield tar
                except zstandard.ZstdError as exc:  # not an OSError, unlike gzip's and xz's errors
                    raise tarfile.ReadError(f"bad zstd data: {exc}") from exc
            return
        raw.seek(0)
        with tarfile.open(fileobj=raw, mode="r|*") as tar:
            yield tar


# Bounds on what one archive may unpack to (settings.UnpackLimits): a hostile 3 MB layer can hold 3 GiB of zeros.
RATIO_FLOOR = 16 << 20  # the ratio cap applies only past this many bytes: small text files compress very well


class _Budget:
    """What one archive may still write; exceeded means a decompression bomb (or a disk too small)."""

    def __init__(self, archive: Path, target: Path, where: str, limits: UnpackLimits) -> None:
        self.where, self.limits, self.written, self.entries = where, limits, 0, 0
        self.packed = archive.stat().st_size
        self.free = shutil.disk_usage(target).free

    def entry(self) -> None:
        self.entries += 1
        if self.entries > self.limits.entries:
            raise InvalidModelError(f"{self.where}: the archive has over {self.limits.entries} entries",
                                    "if the artifact is genuine, raise OCI_CRANE_MAX_UNPACK_ENTRIES")

    def spend(self, size: int) -> None:
        self.written += size
        if self.written > self.free:
            raise CacheError(f"{self.where}: not enough free space to unpack the archive (over "
                             f"{human(self.written)} needed, {human(self.free)} free)")
        if self.written > self.limits.bytes:
            raise InvalidModelError(f"{self.where}: the archive unpacks to over {human(self.limits.bytes)}",
                                    "if the artifact is genuine, raise OCI_CRANE_MAX_UNPACK_BYTES")
        if self.written > max(RATIO_FLOOR, self.limits.ratio * self.packed):
            raise InvalidModelError(
                f"{self.where}: the archive unpacks to over {human(self.written)} from {human(self.packed)}, more "
                f"than {self.limits.ratio:g} times its size (a decompression bomb?)",
                "if the artifact is genuine, raise OCI_CRANE_MAX_UNPACK_RATIO")

    def copy(self, source: IO[bytes], target: Path, mode: int) -> None:
        """Into a new file (O_EXCL, O_NOFOLLOW: never through a symlink planted in the directory), made ``mode``."""
        with open(create_new(target), "wb") as out:
            while chunk := source.read(1 << 20):
                self.spend(len(chunk))
                out.write(chunk)
            os.fchmod(out.fileno(), mode)


def extract_tar(archive: Path, root: Path, where: str, *, into: str | None = None, overlay: bool = False,
                limits: UnpackLimits | None = None) -> list[str]:
    """Extract regular files and directories (and hard links, as copies) under ``root/into``; symlinks, devices
    and escaping names never reach the disk. ``overlay``: a container image layer over the earlier ones, so
    files may be replaced and whiteouts delete what earlier layers wrote. What it unpacks is bounded by
    ``limits`` (default: the OCI_CRANE_MAX_UNPACK_* settings)."""
    base = root / into if into else root
    budget = _Budget(archive, root, where, limits or settings().unpack)
    written = []
    ours: set[str] = set()  # overlay: what this layer wrote (whiteouts hide only what earlier layers wrote)
    try:
        with open_tar(archive) as tar:
            for member in tar:
                budget.entry()
                if posixpath.normpath(member.name) in (".", ""):
                    continue  # the archive's own root entry
                relative = safe_relative_path(member.name, where)
                try:
                    if _extract_member(tar, member, base, relative, where, overlay, ours, budget):
                        written.append(str(Path(into, relative)) if into else relative)
                except OSError as exc:
                    if exc.errno is None:
                        raise
                    raise _write_error(exc, where, relative, root) from exc
    except OciCraneError:
        raise  # CacheError is an OSError too
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise CacheError(f"{where}: cannot read the archive: {exc.strerror}") from exc
        raise InvalidModelError(f"{where}: not a readable tar archive ({exc})",
                                "re-push the artifact; tar layers must be tar, tar+gzip or tar+zstd") from exc
    return written


def tar_names(archive: Path, limits: UnpackLimits | None = None) -> list[str] | None:
    """The normalised names of an archive's entries, read without writing anything; None when the archive cannot
    be read or listed within the entry limit (extract_tar then says why)."""
    limit = (limits or settings().unpack).entries
    names = []
    try:
        with open_tar(archive) as tar:
            for member in tar:
                names.append(posixpath.normpath(member.name.lstrip("/")))
                if len(names) > limit:
                    return None
    except (tarfile.TarError, EOFError, OSError):
        return None
    return names


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, base: Path, relative: str, where: str,
                    overlay: bool, ours: set[str], budget: _Budget) -> bool:
    """Write one entry; True when it became a file."""
    target = base / relative
    name = posixpath.basename(relative)
    if overlay and name.startswith(WHITEOUT):
        _apply_whiteout(base, relative, name, ours, where)
        return False
    parts = relative.split("/")
    if overlay and (member.isdir() or member.isreg() or member.islnk()):
        ours.update("/".join(parts[:n]) for n in range(1, len(parts) + 1))
    if member.isdir():
        if overlay and (target.is_symlink() or (target.exists() and not target.is_dir())):
            remove_path(target)  # a file of an earlier layer replaced by a directory
        target.mkdir(parents=True, exist_ok=True)
        return False
    if not (member.isreg() or member.islnk()):
        log.warning("%s: skipping %s (%s, not a regular file)", where, member.name,
                    "symlink" if member.issym() else "special file")
        return False
    if target.exists() or target.is_symlink():
        if not overlay:
            raise InvalidModelError(f"{where}: {relative!r} is written twice", "re-push the artifact")
        remove_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o755 if member.mode & 0o111 else 0o644
    if member.islnk():  # a hard link to an earlier entry of this archive: copy it (the copy counts as unpacked)
        source_path = base / safe_relative_path(member.linkname, where)
        if not source_path.is_file():
            raise InvalidModelError(f"{where}: hard link {relative!r} points to a missing file")
        with open(open_nofollow(source_path), "rb") as source:
            budget.copy(source, target, mode)
    else:
        extracted = tar.extractfile(member)
        assert extracted is not None
        with extracted:
            budget.copy(extracted, target, mode)
    return True


# The disk's fault, not the archive's: these become CacheError; any other OSError is an entry that cannot be
# written where the archive puts it (a file where a directory must be, a name the filesystem refuses).
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def _write_error(exc: OSError, where: str, relative: str, root: Path) -> CacheError | InvalidModelError:
    if exc.errno in _DISK_ERRNOS:  # with the fix that fits the errno, as for every other write to the cache
        return cache_os_error(exc, f"unpack {relative!r} of {where}", root)
    return InvalidModelError(f"{where}: entry {relative!r} cannot be written ({exc.strerror}): it clashes with "
                             "another entry or is not a valid file name", "re-push the artifact")


def _apply_whiteout(base: Path, relative: str, name: str, ours: set[str], where: str) -> None:
    """Delete what a whiteout hides; ``ours`` (paths this layer wrote, with their parents) stays."""
    directory = posixpath.dirname(relative)
    if name == OPAQUE:  # everything earlier layers put in this directory is hidden
        _clear(base, directory, ours)
        return
    hidden = name[len(WHITEOUT):]
    if hidden in ("", ".", ".."):  # `.wh..` would delete the directory itself, `.wh...` its parent
        raise InvalidModelError(f"{where}: whiteout {relative!r} names no file",
                                "re-push the image; whiteouts are `.wh.NAME` for a file NAME")
    target = safe_relative_path(posixpath.join(directory, hidden), where)
    if target not in ours:
        remove_path(base / target)


def _clear(base: Path, directory: str, ours: set[str]) -> None:
    folder = base / directory
    if not folder.is_dir() or folder.is_symlink():
        return
    for child in folder.iterdir():
        relative = posixpath.join(directory, child.name)
        if relative not in ours:
            remove_path(child)
        elif child.is_dir() and not child.is_symlink():
            _clear(base, relative, ours)  # this layer's directory: its earlier contents are hidden too


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def find_model_root(tree: Path) -> Path:
    """The shallowest directory holding config.json and safetensors weights; failing that, the shallowest holding a
    LoRA adapter's config; failing that, the shallowest holding config.json (ties: the first by name). Weights
    first, because a base image's /etc/app/config.json must not beat /models/<name>/config.json."""
    def found(name: str) -> list[Path]:
        return sorted((p for p in tree.rglob(name) if p.is_file() and p.parent.name != "1_Pooling"),
                      key=lambda p: (len(p.relative_to(tree).parts), str(p)))

    # A LoRA adapter (KAITO's adapter images keep it under /data) ranks after a model with weights and before a
    # config.json without any (a base image's).
    candidates = found("config.json")
    weighted = [p for p in candidates if any(p.parent.glob("*.safetensors"))]
    candidates = weighted + found(ADAPTER_CONFIG) + [p for p in candidates if p not in weighted]
    if not candidates:
        if any(tree.rglob("*.gguf")):
            raise missing_safetensors(tree, tree, "the artifact (no config.json anywhere)")
        raise InvalidModelError("no config.json anywhere in the artifact, so the model directory is unknown",
                                "name it with --subpath DIR (a path inside the image or artifact)")
    return candidates[0].parent


_OTHER_WEIGHTS = {".gguf": "GGUF", ".bin": "PyTorch pickle", ".pt": "PyTorch pickle", ".pth": "PyTorch pickle",
                  ".ckpt": "checkpoint", ".onnx": "ONNX", ".h5": "Keras", ".msgpack": "Flax"}


def missing_safetensors(tree: Path, root: Path, where: str | None = None) -> InvalidModelError:
    """The error for a model directory without .safetensors weights, naming what it holds instead."""
    where = where or f"the model directory {str(root.relative_to(tree)) if root != tree else '.'!r}"
    others = sorted(str(p.relative_to(tree if root == tree else root)) for p in root.rglob("*")
                    if p.suffix in _OTHER_WEIGHTS and p.is_file())
    gguf = [name for name in others if name.endswith(".gguf")]
    shown = gguf or others
    names = ", ".join(shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")
    if gguf:
        return InvalidModelError(
            f"{where} holds no safetensors weights, only GGUF ({names}): a llama.cpp / Ollama model, which vLLM's "
            "safetensors loader cannot serve",
            "run it with llama.cpp, Ollama or ramalama, or push a safetensors build of the model (oci-crane push)")
    if others:
        kinds = " / ".join(sorted({_OTHER_WEIGHTS[posixpath.splitext(name)[1]] for name in others}))
        return InvalidModelError(f"{where} holds no safetensors weights, only {kinds} weights ({names})",
                                 "convert the weights to safetensors and push the model again")
    return InvalidModelError(f"{where} holds no safetensors weights",
                             "name the directory that holds them with --subpath DIR, or push the model's "
                             ".safetensors files")


def shard_names(shards: list[LayerPlan], store: Store, model_dir: Path) -> list[str]:
    """Names for unnamed DMR v0.1 shards: by the index's weight_map (matched on each shard's own tensor names,
    so layer order does not matter), else model.safetensors or model-%05d-of-%05d.safetensors."""
    index_file = model_dir / INDEX_FILENAME
    if index_file.exists():
        weight_map = read_index(index_file).weight_map
        names = []
        for number, shard in enumerate(shards):
            tensors = read_header(store.blob_path(shard.descriptor.digest)).tensors
            files = {weight_map.get(name, "") for name in tensors}
            if len(files) != 1 or "" in files:
                raise InvalidModelError(
                    f"shard {number} ({shard.descriptor.digest[:19]}) does not match one file of {INDEX_FILENAME}",
                    "re-push the model with the index that belongs to its shards")
            names.append(files.pop())
        return names
    if len(shards) == 1:
        return ["model.safetensors"]
    return [f"model-{number:05d}-of-{len(shards):05d}.safetensors" for number in range(1, len(shards) + 1)]


def materialize(store: Store, plan: Plan, manifest_digest: str, *, weights: bool = True,
                subpath: str | None = None, variant: str | None = None, limits: UnpackLimits | None = None) -> Path:
    """The model directory (``weights=False``: only config, tokenizer and other small files, under configs/).
    ``variant`` names a filtered plan (--include/--exclude): a set of files, not checked as a loadable model."""
    final = (store.model_path(manifest_digest, subpath, variant) if weights
             else store.config_path(manifest_digest, subpath))
    missing = missing_files(store, final) if final.is_dir() else []
    if final.is_dir() and missing == []:
        return final
    try:
        work = store.new_model_dir(manifest_digest)
    except OSError as exc:
        if missing is None:  # built by an older version and the cache is read-only: served as it is
            return final
        if not final.is_dir():
            raise
        raise IntegrityError(f"{lacks(final, missing)}, and the cache at {store.root} cannot be written to build "
                             f"it again ({exc.strerror})", "run `oci-crane cache prune --damaged` where the cache is "
                             "writable, then fetch again") from exc
    try:
        for number, layer in enumerate(plan.layers):
            if layer.weights and not weights:
                continue
            blob = store.blob_path(layer.descriptor.digest)
            where = f"layer {number} ({layer.descriptor.media_type})"
            if layer.action is Action.TAR:
                extract_tar(blob, work, where, into=layer.path, limits=limits)
            elif layer.action is Action.IMAGE:
                extract_tar(blob, work, where, overlay=True, limits=limits)
            elif layer.action is Action.FILE:
                assert layer.path is not None
                link_or_copy(blob, work / layer.path)
        if weights:
            shards = [layer for layer in plan.layers if layer.action is Action.SHARD]
            for shard, name in zip(shards, shard_names(shards, store, work), strict=True):
                link_or_copy(store.blob_path(shard.descriptor.digest), work / name)
        model_root = _model_root(work, plan, subpath)
        if variant is None:  # a filtered fetch is the files asked for (digest-verified), not checked as a model
            _check_model(model_root, work, plan, weights=weights)
        if model_root != work:  # keep only the model directory: move it out of the tree, drop the rest
            chosen = store.temp_path("model-root")
            os.rename(model_root, chosen)
            remove_tree(work)
            work = chosen
        files = built_files(work)
        if final.is_dir() and _replace_incomplete(store, final, files):
            return final
        save_built_files(store, final, files)  # before it is published: a published directory has its record
        return store.publish_dir(work, final)
    finally:
        remove_tree(work)  # nothing left behind when validation fails; a no-op after publishing


def _replace_incomplete(store: Store, final: Path, files: dict[str, int]) -> bool:
    """``final`` exists but lacks files, or nothing records what it was built with (an older version built it):
    judged against ``files``, a fresh build's. True when it holds them all (it is kept, and recorded); else it is
    deleted, to be replaced by the fresh build."""
    gone = absent_from(final, files)
    if not gone:
        save_built_files(store, final, files)
        return True
    log.warning("%s: built again", lacks(final, gone))
    with contextlib.suppress(FileNotFoundError):  # another fetch replaced it first
        store.discard_dir(final)
    return False


def lacks(directory: Path, missing: list[str]) -> str:
    """A model or config directory that lacks files it was built with (deleted, or changed in size)."""
    return f"{directory} lacks {len(missing)} file(s) it was built with ({some(missing)})"


def _check_model(model_root: Path, work: Path, plan: Plan, *, weights: bool) -> None:
    if weights and is_adapter_dir(model_root):  # a LoRA adapter: no config.json of its own
        check_adapter_dir(model_root)
        return
    if is_adapter_dir(model_root):
        raise InvalidModelError("the artifact is a LoRA adapter (adapter_config.json), not a model vLLM can serve "
                                "alone", "serve its base model and name the adapter with --lora-modules NAME=REF, or "
                                "as a request's model (docs/vllm.md: LoRA adapters)")
    if not (model_root / "config.json").is_file():  # vLLM and transformers cannot start without it
        raise missing_config(plan)
    if weights:
        if not check_model_dir(model_root) and plan.find_root:  # the guessed directory may be the wrong one
            raise missing_safetensors(work, model_root)
    elif (model_root / INDEX_FILENAME).exists():
        read_index(model_root / INDEX_FILENAME)


def missing_config(plan: Plan) -> InvalidModelError:
    """No config.json at the model directory's root: often it sits in a layer whose media type we skip."""
    used = sorted({layer.descriptor.media_type for layer in plan.layers})
    skipped = sorted({descriptor.media_type for descriptor in plan.skipped})
    seen = f"layers used: {', '.join(used) or 'none'}" + (f"; skipped: {', '.join(skipped)}" if skipped else "")
    return InvalidModelError(f"the model directory has no config.json at its root ({seen})",
                             "push the model with its config.json as a file layer (oci-crane push DIR REF), or name "
                             "the directory that holds it with --subpath DIR")


def _model_root(tree: Path, plan: Plan, subpath: str | None) -> Path:
    if subpath:
        root = tree / safe_relative_path(subpath.strip("/"), "--subpath")
        if not root.is_dir():
            raise InvalidModelError(f"--subpath {subpath!r} is not a directory in the artifact",
                                    "run `oci-crane inspect REF` to see its files")
        return root
    return find_model_root(tree) if plan.find_root else tree
