"""Write a Docker Model Runner artifact, as `docker model package` writes it; the reader is dmr.py.

v0.2 (default): one layer per file, path in `org.cncf.model.filepath`.
v0.1: safetensors shards as layers, every other file in one `vllm.config.tar`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidModelError
from ..layout import LayoutWriter, canonical_json
from ..oci import Descriptor
from ..packing import SourceTimes, deterministic_tar, model_files, open_packed, read_hf_config
from .dmr import CONFIG_V01, CONFIG_V02, MODEL_FILE, SAFETENSORS, VLLM_CONFIG_TAR, DMRConfig, ModelProperties
from .modelpack import FILE_METADATA, FILEPATH, FileMetadata

VERSIONS = ("v0.1", "v0.2")


def _model_properties(model_dir: Path) -> ModelProperties:
    architectures = (read_hf_config(model_dir) or {}).get("architectures") or []
    weights = sum(p.stat().st_size for p in model_dir.rglob("*.safetensors"))
    if architectures:
        return ModelProperties(format="safetensors", architecture=architectures[0], size=f"{weights} B")
    return ModelProperties(format="safetensors", size=f"{weights} B")


def pack_dmr(model_dir: Path, layout_dir: Path, *, version: str = "v0.2", annotate_shards: bool = True,
             platform: dict[str, str] | None = None) -> str:
    """Write the layout and return the manifest digest. ``annotate_shards=False`` mimics older v0.1 artifacts.
    Packing into an existing layout adds one more manifest to its index.json (``platform`` tells them apart)."""
    if version not in VERSIONS:
        raise InvalidModelError(f"unknown Docker Model Runner config version {version!r}",
                                f"use one of {', '.join(VERSIONS)}")
    files = model_files(model_dir)
    if not any(name.endswith(".safetensors") for name in files):
        raise InvalidModelError(f"{model_dir} has no .safetensors files",
                                "save the model with safetensors (save_pretrained(..., safe_serialization=True))")
    writer = LayoutWriter(layout_dir)
    created = SourceTimes.read(model_dir, files).created  # also each file's mtime: Go's time.Time, RFC 3339
    layers: list[Descriptor] = []
    if version == "v0.2":
        for name in files:
            media_type = SAFETENSORS if name.endswith(".safetensors") else MODEL_FILE
            with open_packed(model_dir, name) as packed:  # one descriptor: its bytes and its size
                metadata = FileMetadata(name=name, mode=0o644, uid=0, gid=0, size=packed.info.st_size,
                                        mtime=created, typeflag=48)
                annotations = {FILEPATH: name,
                               FILE_METADATA: canonical_json(metadata.model_dump(mode="json")).decode()}
                layers.append(writer.add_open_file(media_type, packed.fd, model_dir / name, annotations))
        config_type = CONFIG_V02
    else:
        others = [name for name in files if not name.endswith(".safetensors")]
        for name in files:
            if name.endswith(".safetensors"):
                shard_annotations = {FILEPATH: name} if annotate_shards else None
                with open_packed(model_dir, name) as packed:
                    layers.append(writer.add_open_file(SAFETENSORS, packed.fd, model_dir / name, shard_annotations))
        if others:
            layers.append(writer.add_bytes(VLLM_CONFIG_TAR, deterministic_tar(model_dir, others)))
        config_type = CONFIG_V01
    config = DMRConfig(config=_model_properties(model_dir), descriptor={"created": created},
                       rootfs={"type": "rootfs", "diff_ids": [layer.digest for layer in layers]})
    return writer.add_manifest(writer.add_document(config_type, config), layers, platform=platform)
