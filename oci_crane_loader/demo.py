"""`oci-crane demo`: the whole job on an embedded default, with no internet.

Writes a tiny two-shard model, packs it as a Docker Model Runner artifact, pushes it with crane to a registry on
127.0.0.1, fetches it back through the cache, checks every byte, and stops the registry.
"""

from __future__ import annotations

import filecmp
import json
import struct
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from .fetching import fetch
from .formats.dmr_pack import pack_dmr
from .options import fetch_options
from .progress import Progress
from .registry.crane import Crane
from .registry.local_registry import serve_registry
from .safetensors_check import INDEX_FILENAME


def write_safetensors(path: Path, tensors: dict[str, tuple[list[int], list[float]]]) -> None:
    """A minimal F32 safetensors writer, so the demo needs neither numpy nor torch."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    data = b""
    for name, (shape, values) in tensors.items():
        chunk = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(chunk)]}
        data += chunk
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data section to 8 bytes with spaces
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


def write_tiny_model(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"architectures": ["TinyDemo"], "hidden_size": 4}, indent=2))
    write_safetensors(directory / "model-00001-of-00002.safetensors",
                      {"embed.weight": ([2, 4], [float(i) for i in range(8)])})
    write_safetensors(directory / "model-00002-of-00002.safetensors",
                      {"head.weight": ([4, 2], [float(-i) for i in range(8)])})
    weight_map = {"embed.weight": "model-00001-of-00002.safetensors", "head.weight": "model-00002-of-00002.safetensors"}
    (directory / INDEX_FILENAME).write_text(
        json.dumps({"metadata": {"total_size": 64}, "weight_map": weight_map}, indent=2))
    return directory


def run_demo(cache_dir: str | None = None) -> str:
    with tempfile.TemporaryDirectory(prefix="oci-crane-demo-") as scratch:
        work = Path(scratch)
        source = write_tiny_model(work / "tiny-model")
        pack_dmr(source, work / "layout")
        with serve_registry() as registry:
            reference = f"{registry.host}/demo/tiny:v1"
            print(f"pushed {Crane().push(work / 'layout', reference)}", file=sys.stderr)
            # The user's real cache: the printed directory stays for them to look at. The registry is this
            # process's own, on loopback: OCI_CRANE_OFFLINE does not keep the demo from it.
            options = fetch_options(cache_dir=cache_dir)
            options = replace(options, access=options.access.online())
            result = fetch(options, reference, Progress(enabled=not options.settings.disable_progress))
        same = filecmp.dircmp(source, result.path)
        if same.left_only or same.right_only or same.diff_files or not all(
                filecmp.cmp(source / name, result.path / name, shallow=False) for name in result.files):
            raise SystemExit(f"demo failed: fetched files differ from the source ({same.diff_files})")
        print(f"fetched {reference} ({result.format}, {len(result.files)} files, {result.bytes} bytes) and "
              "verified it byte for byte", file=sys.stderr)
        return json.dumps(result.to_json(), indent=2)
