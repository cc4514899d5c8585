"""Package a local model directory as a Docker Model Runner artifact in an OCI layout.

v0.2 (default): one layer per file, path in `org.cncf.model.filepath`, as `docker model package` writes today.
v0.1: safetensors shards as layers, every other file in one `vllm.config.tar`.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path

from .formats import dmr
from .layout import LayoutWriter, canonical_json
from .oci import sha256_digest

FILE_METADATA = "org.cncf.model.file.metadata+json"


def _created() -> str:
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def model_files(model_dir: Path) -> list[str]:
    """Relative paths, config and tokenizer files first, then weights, each group sorted by path."""
    files = [str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file() and not p.is_symlink()]
    return sorted(files, key=lambda name: (name.endswith(".safetensors"), name))


def _model_properties(model_dir: Path) -> dict[str, object]:
    properties: dict[str, object] = {"format": "safetensors"}
    config = model_dir / "config.json"
    if config.exists():
        architectures = json.loads(config.read_text()).get("architectures") or []
        if architectures:
            properties["architecture"] = architectures[0]
    weights = sum(p.stat().st_size for p in model_dir.rglob("*.safetensors"))
    properties["size"] = f"{weights} B"
    return properties


def _config(model_dir: Path, layers: list[dict[str, object]]) -> dict[str, object]:
    return {"config": _model_properties(model_dir), "descriptor": {"created": _created()},
            "rootfs": {"type": "rootfs", "diff_ids": [layer["digest"] for layer in layers]}}


def _config_tar(model_dir: Path, names: list[str]) -> bytes:
    """Deterministic tar: sorted, zero mtimes and owners, so the same directory gives the same digest."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(names):
            info = tar.gettarinfo(model_dir / name, arcname=name)
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
            with open(model_dir / name, "rb") as handle:
                tar.addfile(info, handle)
    return buffer.getvalue()


def pack_dmr(model_dir: Path, layout_dir: Path, *, version: str = "v0.2", annotate_shards: bool = True,
             platform: dict[str, str] | None = None) -> str:
    """Write the layout and return the manifest digest. ``annotate_shards=False`` mimics older v0.1 artifacts.
    Packing into an existing layout adds one more manifest to its index.json (``platform`` tells them apart)."""
    writer = LayoutWriter(layout_dir)
    if (layout_dir / "index.json").exists():
        writer.descriptors = json.loads((layout_dir / "index.json").read_text())["manifests"]
    files = model_files(model_dir)
    if not any(name.endswith(".safetensors") for name in files):
        raise ValueError(f"{model_dir} has no .safetensors files")
    layers: list[dict[str, object]] = []
    if version == "v0.2":
        for name in files:
            media_type = dmr.SAFETENSORS if name.endswith(".safetensors") else dmr.MODEL_FILE
            stat = (model_dir / name).stat()
            metadata = {"name": name, "mode": 0o644, "uid": 0, "gid": 0, "size": stat.st_size, "mtime": 0,
                        "typeflag": 48}
            annotations = {dmr.FILEPATH: name, FILE_METADATA: json.dumps(metadata, separators=(",", ":"))}
            layers.append(writer.add_file(media_type, model_dir / name, annotations))
        config_type = dmr.CONFIG_V02
    elif version == "v0.1":
        others = [name for name in files if not name.endswith(".safetensors")]
        for name in files:
            if name.endswith(".safetensors"):
                shard_annotations = {dmr.FILEPATH: name} if annotate_shards else None
                layers.append(writer.add_file(dmr.SAFETENSORS, model_dir / name, shard_annotations))
        if others:
            layers.append(writer.add_bytes(dmr.VLLM_CONFIG_TAR, _config_tar(model_dir, others)))
        config_type = dmr.CONFIG_V01
    else:
        raise ValueError(f"unknown Docker Model Runner config version {version!r} (v0.1 or v0.2)")
    config_bytes = canonical_json(_config(model_dir, layers))
    config = writer.add_bytes(config_type, config_bytes)
    assert config["digest"] == sha256_digest(config_bytes)
    return writer.add_manifest(config, layers, platform=platform)
