"""`oci-crane demo`: the whole job on an embedded default, with no internet.

Writes a tiny two-shard model, packs it as a Docker Model Runner artifact, pushes it with crane to a registry on
127.0.0.1, fetches it back into a cache of its own (removed at the end; --cache-dir keeps it), checks every
byte, stops the registry, and says what to try next.
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


NEXT_STEPS = """next:
  a registry of your own: docs/registries.md (a local one: docker-registry, or crane registry serve)
  oci-crane push DIR REGISTRY/REPOSITORY:TAG     pack and push your own model directory (docs/push.md)
  oci-crane inspect REF                          its digest, format and files, without the weights
  oci-crane fetch REF                            download it into the cache and print its directory
  vllm serve REF --load-format oci-crane         serve it with vLLM (docs/vllm.md)"""


def run_demo(cache_dir: str | None = None) -> str:
    """The fetch result as JSON. Without ``cache_dir`` the demo fetches into a cache of its own, removed at the
    end: its registry dies with it, so a tag in the user's cache would only point at a dead loopback port."""
    with tempfile.TemporaryDirectory(prefix="oci-crane-demo-") as scratch:
        work = Path(scratch)
        source = write_tiny_model(work / "tiny-model")
        pack_dmr(source, work / "layout")
        with serve_registry() as registry:
            reference = f"{registry.host}/demo/tiny:v1"
            print(f"pushed {Crane().push(work / 'layout', reference)}", file=sys.stderr)
            # The registry is this process's own, on loopback: OCI_CRANE_OFFLINE does not keep the demo from it.
            options = fetch_options(cache_dir=cache_dir or str(work / "cache"))
            options = replace(options, access=options.access.online())
            result = fetch(options, reference, Progress(enabled=not options.settings.disable_progress))
        same = filecmp.dircmp(source, result.path)
        if same.left_only or same.right_only or same.diff_files or not all(
                filecmp.cmp(source / name, result.path / name, shallow=False) for name in result.files):
            raise SystemExit(f"demo failed: fetched files differ from the source ({same.diff_files})")
        kept = f"in {result.path}" if cache_dir else "into a cache of its own, now removed"
        print(f"fetched {reference} ({result.format}, {len(result.files)} files, {result.bytes} bytes) {kept}, "
              f"and verified it byte for byte\n{NEXT_STEPS}", file=sys.stderr)
        answer = result.to_json()
        if not cache_dir:
            del answer["path"]  # gone with the demo's cache
        return json.dumps(answer, indent=2)
