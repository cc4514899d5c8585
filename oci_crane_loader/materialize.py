"""Turn verified blobs into a model directory: hard links for files, safe extraction for tars, shard names.

The directory is built under tmp/, validated (every safetensors header), then renamed into models/ in one step,
so a model directory that exists is always complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
from pathlib import Path

from .errors import InvalidModelError
from .formats import Action, LayerPlan, Plan, safe_relative_path
from .safetensors_check import check_model_dir, read_header, read_index
from .store import Store, remove_tree

log = logging.getLogger(__name__)

INDEX_NAME = "model.safetensors.index.json"


def link_or_copy(source: Path, target: Path) -> None:
    """Hard link (no second copy on disk); copy only where the filesystem cannot link."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        raise InvalidModelError(f"two layers both write {target.name!r}",
                                "re-push the artifact with one layer per file")
    try:
        os.link(source, target)
    except OSError as exc:
        log.warning("cannot hard-link %s (%s); copying instead", target.name, exc.strerror)
        shutil.copyfile(source, target)


def extract_tar(archive: Path, root: Path, where: str) -> list[str]:
    """Extract regular files and directories only; links, devices and escaping names never reach the disk."""
    written = []
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            if member.isdir():
                (root / safe_relative_path(member.name, where)).mkdir(parents=True, exist_ok=True)
                continue
            if not member.isreg():
                log.warning("%s: skipping %s (not a regular file)", where, member.name)
                continue
            relative = safe_relative_path(member.name, where)
            target = root / relative
            if target.exists():
                raise InvalidModelError(f"{where}: {relative!r} is written twice", "re-push the artifact")
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            with source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
            written.append(relative)
    return written


def shard_names(shards: list[LayerPlan], store: Store, model_dir: Path) -> list[str]:
    """Names for unnamed DMR v0.1 shards: by the index's weight_map (matched on each shard's own tensor names,
    so layer order does not matter), else model.safetensors or model-%05d-of-%05d.safetensors."""
    index_file = model_dir / INDEX_NAME
    if index_file.exists():
        weight_map = read_index(index_file).weight_map
        names = []
        for number, shard in enumerate(shards):
            tensors = read_header(store.blob_path(shard.descriptor.digest)).tensors
            files = {weight_map.get(name, "") for name in tensors}
            if len(files) != 1 or "" in files:
                raise InvalidModelError(
                    f"shard {number} ({shard.descriptor.digest[:19]}) does not match one file of {INDEX_NAME}",
                    "re-push the model with the index that belongs to its shards")
            names.append(files.pop())
        return names
    if len(shards) == 1:
        return ["model.safetensors"]
    return [f"model-{number:05d}-of-{len(shards):05d}.safetensors" for number in range(1, len(shards) + 1)]


def materialize(store: Store, plan: Plan, manifest_digest: str, *, weights: bool = True) -> Path:
    """The model directory (``weights=False``: only config, tokenizer and other small files, under configs/)."""
    final = store.model_path(manifest_digest) if weights else store.config_path(manifest_digest)
    if final.is_dir():
        return final
    work = store.new_model_dir(manifest_digest)
    try:
        for number, layer in enumerate(plan.layers):
            if layer.weights and not weights:
                continue
            blob = store.blob_path(layer.descriptor.digest)
            if layer.action is Action.TAR:
                extract_tar(blob, work, f"layer {number} ({layer.descriptor.media_type})")
            elif layer.action is Action.FILE:
                assert layer.path is not None
                link_or_copy(blob, work / layer.path)
        if weights:
            shards = [layer for layer in plan.layers if layer.action is Action.SHARD]
            for shard, name in zip(shards, shard_names(shards, store, work), strict=True):
                link_or_copy(store.blob_path(shard.descriptor.digest), work / name)
            check_model_dir(work)
        elif (work / INDEX_NAME).exists():
            read_index(work / INDEX_NAME)
        return store.publish_dir(work, final)
    finally:
        remove_tree(work)  # nothing left behind when validation fails; a no-op after publishing


def list_files(model_dir: Path) -> list[str]:
    return sorted(str(path.relative_to(model_dir)) for path in model_dir.rglob("*") if path.is_file())
