"""Models for tests: small real safetensors models, packed as artifacts and pushed with crane."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from oci_crane_loader.formats.dmr_pack import pack_dmr
from oci_crane_loader.registry.crane import Crane


def write_model(directory: Path, shards: int = 2, seed: int = 0) -> Path:
    """A small model with real safetensors shards (several dtypes), an index, config and tokenizer files."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for number in range(1, shards + 1):
        name = f"model-{number:05d}-of-{shards:05d}.safetensors" if shards > 1 else "model.safetensors"
        tensors = {
            f"layers.{number}.weight": rng.standard_normal((16, 8)).astype(np.float16),
            f"layers.{number}.bias": rng.standard_normal(8).astype(np.float32),
            f"layers.{number}.ids": np.arange(5, dtype=np.int64),
        }
        save_file(tensors, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    if shards > 1:
        (directory / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}, indent=2))
    (directory / "config.json").write_text(json.dumps({"architectures": ["TestModel"], "hidden_size": 8}))
    (directory / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128}))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return directory


def push_layout(layout: Path, reference: str) -> str:
    return Crane().push(layout, reference)


def push_model(model: Path, reference: str, tmp_path: Path, *, version: str = "v0.2",
               annotate_shards: bool = True) -> str:
    layout = tmp_path / f"layout-{abs(hash((reference, version)))}"
    pack_dmr(model, layout, version=version, annotate_shards=annotate_shards)
    return push_layout(layout, reference)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def pushed_model(registry_host: str, tmp_path: Path, repository: str) -> tuple[str, Path]:
    """write_model's model pushed to ``registry_host/repository``: the reference and the source directory."""
    source = write_model(tmp_path / "source")
    reference = f"{registry_host}/{repository}"
    push_model(source, reference, tmp_path)
    return reference, source
