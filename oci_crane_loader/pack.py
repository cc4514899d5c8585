"""Package a local model directory as an OCI artifact in an OCI image layout, for `crane push DIR REF`.

Docker Model Runner (``pack_dmr``):
v0.2 (default): one layer per file, path in `org.cncf.model.filepath`, as `docker model package` writes today.
v0.1: safetensors shards as layers, every other file in one `vllm.config.tar`.

CNCF ModelPack (``pack_modelpack``): one raw (uncompressed) layer per file, as modctl writes it, see FORMATS.md.

Both read the directory the same way (``collect_files``): hidden files and directories (``.git/``, ``.cache/``) and
Python bytecode are left out; symlinks are followed when they resolve inside the directory and refused when not.
The same directory always packs to the same digests (times come from SOURCE_DATE_EPOCH or the files' mtimes).
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import posixpath
import stat
import tarfile
import time
from pathlib import Path

from .errors import InvalidModelError
from .formats import dmr
from .layout import LayoutWriter, canonical_json
from .oci import TITLE, sha256_digest
from .safetensors_check import read_header

FILE_METADATA = "org.cncf.model.file.metadata+json"
MEDIATYPE_UNTESTED = "org.cncf.model.file.mediatype.untested"

# Python bytecode is a by-product of running the model's code, never part of the model (modctl skips it too).
_SKIPPED_DIRS = {"__pycache__"}
_SKIPPED_SUFFIXES = (".pyc", ".pyo")


def collect_files(model_dir: Path) -> list[str]:
    """The files to pack: POSIX paths relative to ``model_dir``, sorted.

    Hidden files and directories (``.git/``, ``.cache/``, ``.gitattributes``) and Python bytecode are skipped.
    A symlink is followed when it resolves inside the directory (its target's bytes are packed under the link's
    name); one that escapes the directory, dangles or loops is refused with InvalidModelError."""
    root = model_dir.resolve()
    found: list[str] = []

    def walk(directory: Path, prefix: str, active: frozenset[Path]) -> None:
        with os.scandir(directory) as entries:
            names = sorted(entry.name for entry in entries)
        for name in names:
            if name.startswith(".") or name in _SKIPPED_DIRS or name.endswith(_SKIPPED_SUFFIXES):
                continue
            relative = f"{prefix}{name}"
            if "\\" in name or "\n" in name:
                raise InvalidModelError(f"{model_dir}/{relative}: a file name with a backslash or newline",
                                        "rename the file: readers refuse such paths")
            path = directory / name
            if path.is_symlink():
                _check_link(model_dir, root, path, relative)
            if path.is_dir():
                real = path.resolve()
                if real in active:
                    raise InvalidModelError(f"{model_dir}/{relative} is a symlink loop (it points at its own parent)",
                                            "remove the link")
                walk(path, f"{relative}/", active | {real})
            elif path.is_file():
                found.append(relative)
            # sockets, FIFOs and devices are not model files: left out

    if not root.is_dir():
        raise InvalidModelError(f"{model_dir} is not a directory",
                                "pass the model directory (the one holding config.json and the .safetensors files)")
    walk(root, "", frozenset({root}))
    return sorted(found)


def _check_link(model_dir: Path, root: Path, path: Path, relative: str) -> None:
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # dangling (FileNotFoundError) or a loop (RuntimeError before 3.13)
        raise InvalidModelError(f"{model_dir}/{relative} is a broken symlink (-> {os.readlink(path)})",
                                "fix or remove the link") from exc
    if target != root and not target.is_relative_to(root):
        raise InvalidModelError(
            f"{model_dir}/{relative} is a symlink to {target}, outside the model directory",
            "push a directory that holds the files themselves: copy it with `cp -rL SRC DST` (a Hugging Face "
            "cache snapshot links into ../../blobs: use `huggingface-cli download REPO --local-dir DIR`)")


def model_files(model_dir: Path) -> list[str]:
    """Relative paths, config and tokenizer files first, then weights, each group sorted by path."""
    return sorted(collect_files(model_dir), key=lambda name: (name.endswith(".safetensors"), name))


def _source_epoch(model_dir: Path, files: list[str]) -> int:
    """SOURCE_DATE_EPOCH if set (reproducible builds), else the newest mtime among the files: never "now", so the
    same directory always gives the same config and manifest digests."""
    explicit = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if explicit:
        try:
            return int(explicit)
        except ValueError:
            raise InvalidModelError(f"SOURCE_DATE_EPOCH={explicit!r} is not a whole number of seconds",
                                    "set it to a Unix time, e.g. SOURCE_DATE_EPOCH=$(date +%s), or unset it") from None
    return max((int((model_dir / name).stat().st_mtime) for name in files), default=0)


def _timestamp(epoch: int) -> str:
    """RFC 3339 in UTC, as Go's time.Time marshals a whole second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _created(model_dir: Path, files: list[str]) -> str:
    return _timestamp(_source_epoch(model_dir, files))


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


def _config(model_dir: Path, layers: list[dict[str, object]], created: str) -> dict[str, object]:
    return {"config": _model_properties(model_dir), "descriptor": {"created": created},
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
    created = _created(model_dir, files)  # also each file's mtime: Go's time.Time reads an RFC 3339 string
    layers: list[dict[str, object]] = []
    if version == "v0.2":
        for name in files:
            media_type = dmr.SAFETENSORS if name.endswith(".safetensors") else dmr.MODEL_FILE
            stat = (model_dir / name).stat()
            metadata = {"name": name, "mode": 0o644, "uid": 0, "gid": 0, "size": stat.st_size, "mtime": created,
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
    config_bytes = canonical_json(_config(model_dir, layers, created))
    config = writer.add_bytes(config_type, config_bytes)
    assert config["digest"] == sha256_digest(config_bytes)
    return writer.add_manifest(config, layers, platform=platform)


# --- CNCF ModelPack ------------------------------------------------------------------------------------------------
# modelpack/model-spec specs-go/v1 (mediatype.go, annotations.go, config.go)

MODELPACK_ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
MODELPACK_CONFIG = "application/vnd.cncf.model.config.v1+json"
MODELPACK_WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
MODELPACK_WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
MODELPACK_CODE = "application/vnd.cncf.model.code.v1.raw"
MODELPACK_DOC = "application/vnd.cncf.model.doc.v1.raw"
MODELPACK_FILEPATH = "org.cncf.model.filepath"

# The spec's recommended layer order: config, weights, code, docs (each group sorted by path).
_MODELPACK_ORDER = (MODELPACK_WEIGHT_CONFIG, MODELPACK_WEIGHT, MODELPACK_CODE, MODELPACK_DOC)

# Classification by name, case-insensitive, a subset of modctl's pkg/modelfile/constants.go. One difference:
# *.txt is config here (vocab.txt and merges.txt are tokenizer files), not documentation.
_DOC_PREFIXES = ("readme*", "license*", "licence*", "notice*", "copying*", "use_policy*", "changelog*")
_DOC_NAMES = ("*.md", "*.markdown", "*.rst", "*.pdf", "*.png", "*.jpg", "*.jpeg", "*.gif", "*.svg", "*.webp")
_WEIGHT_NAMES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.gguf", "*.onnx", "*.onnx_data", "*.h5",
                 "*.msgpack", "*.pb", "*.tflite", "*.npz", "*.npy", "*.pkl", "*.pickle", "*.keras", "*.dduf",
                 "*.engine", "*.trt", "*.ot")
_CODE_NAMES = ("*.py", "*.ipynb", "*.sh", "*.bash", "*.patch", "*.c", "*.h", "*.cc", "*.cpp", "*.hpp", "*.cu",
               "*.cuh", "*.js", "*.ts", "*.go", "*.rs", "*.so")
_CONFIG_NAMES = ("*.json", "*.jsonl", "*.json5", "*.yaml", "*.yml", "*.toml", "*.ini", "*.cfg", "*.conf",
                 "*.config", "*.txt", "*.jinja", "*.j2", "*.model", "*.tiktoken", "*.vocab", "*.spm", "*.xml",
                 "*.csv", "*.tsv", "*tokenizer*", "vocab*", "merges*")
# modctl: a large file of unknown type is usually weights.
_WEIGHT_SIZE_THRESHOLD = 128 * 1024 * 1024

# safetensors dtype -> ModelPack precision words ("bf16", "fp16", "int8", ...; "mixed" for several).
_PRECISION = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F64": "fp64", "F8_E4M3": "fp8", "F8_E5M2": "fp8",
              "F8_E8M0": "fp8", "F6_E2M3": "fp6", "F6_E3M2": "fp6", "F4": "fp4", "I8": "int8", "U8": "uint8",
              "I16": "int16", "U16": "uint16", "I32": "int32", "U32": "uint32", "I64": "int64", "U64": "uint64",
              "BOOL": "bool", "C64": "complex64"}
_FLOATING = {"BF16", "F16", "F32", "F64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4"}
# config.json's torch_dtype / dtype, as Hugging Face writes it.
_TORCH_DTYPES = {"bfloat16": "BF16", "float16": "F16", "half": "F16", "float32": "F32", "float": "F32",
                 "float64": "F64"}


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    lowered = posixpath.basename(name).lower()
    return any(fnmatch.fnmatchcase(lowered, pattern) for pattern in patterns)


def modelpack_media_type(name: str, size: int) -> tuple[str, bool]:
    """The raw layer media type of one file and whether the choice is a guess (modctl's "untested" flag)."""
    if _matches(name, _DOC_PREFIXES):  # LICENSE.txt and README.json are documentation, not config
        return MODELPACK_DOC, False
    for patterns, media_type in ((_WEIGHT_NAMES, MODELPACK_WEIGHT), (_CODE_NAMES, MODELPACK_CODE),
                                 (_DOC_NAMES, MODELPACK_DOC), (_CONFIG_NAMES, MODELPACK_WEIGHT_CONFIG)):
        if _matches(name, patterns):
            return media_type, False
    return (MODELPACK_WEIGHT if size > _WEIGHT_SIZE_THRESHOLD else MODELPACK_WEIGHT_CONFIG), True


def _param_size(count: int) -> str:
    """The spec's ``<count><scale-prefix>``, one decimal at most: 7241732096 -> 7.2B, 8000000000 -> 8B, 282 -> 0.3K."""
    for scale, prefix in ((10**15, "Q"), (10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if count >= scale or prefix == "K":
            text = f"{count / scale:.1f}"
            return (text[:-2] if text.endswith(".0") else text) + prefix
    raise AssertionError("unreachable")


def _read_hf_config(model_dir: Path) -> dict[str, object]:
    path = model_dir / "config.json"
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidModelError(f"{path} is not valid JSON ({exc})", "fix config.json") from exc
    if not isinstance(document, dict):
        raise InvalidModelError(f"{path} is not a JSON object", "fix config.json")
    return document


def modelpack_properties(model_dir: Path, weights: list[str]) -> dict[str, str]:
    """The config's ``config`` object: architecture, format, paramSize, precision, quantization (those known).

    paramSize and precision come from the safetensors headers (never tensor data); paramSize is left out for a
    quantized model, whose packed integer tensors do not count parameters."""
    hf_config = _read_hf_config(model_dir)
    properties: dict[str, str] = {}
    architectures = hf_config.get("architectures")
    if isinstance(architectures, list) and architectures and isinstance(architectures[0], str):
        properties["architecture"] = architectures[0]
    safetensors = [name for name in weights if name.endswith(".safetensors")]
    if safetensors:
        properties["format"] = "safetensors"
    elements: dict[str, int] = {}
    for name in safetensors:
        for tensor in read_header(model_dir / name, name=name).tensors.values():
            count = 1
            for dim in tensor.shape:
                count *= dim
            elements[tensor.dtype] = elements.get(tensor.dtype, 0) + count
    quantization = hf_config.get("quantization_config")
    method = quantization.get("quant_method") if isinstance(quantization, dict) else None
    if elements and quantization is None:
        properties["paramSize"] = _param_size(sum(elements.values()))
    floating = sorted(dtype for dtype in elements if dtype in _FLOATING)
    declared = hf_config.get("torch_dtype") or hf_config.get("dtype")
    declared_dtype = _TORCH_DTYPES.get(declared) if isinstance(declared, str) else None
    if len(floating) == 1:
        properties["precision"] = _PRECISION[floating[0]]
    elif declared_dtype in floating:  # e.g. bf16 weights with a few fp32 norms: the checkpoint's declared dtype
        properties["precision"] = _PRECISION[str(declared_dtype)]
    elif floating or len(elements) > 1:
        properties["precision"] = "mixed"
    elif elements:
        properties["precision"] = _PRECISION[next(iter(elements))]
    if isinstance(method, str) and method:
        properties["quantization"] = method
    return properties


def _file_metadata(path: Path, name: str, epoch: int | None) -> str:
    """``org.cncf.model.file.metadata+json`` as modctl writes it (Go's FileMetadata, field order kept). Owner is
    0:0 so the digest does not depend on who packs; mtime is SOURCE_DATE_EPOCH when set, else the file's own."""
    info = path.stat()
    mtime = epoch if epoch is not None else int(info.st_mtime)
    metadata = {"name": posixpath.basename(name), "mode": stat.S_IMODE(info.st_mode), "uid": 0, "gid": 0,
                "size": info.st_size, "mtime": _timestamp(mtime), "typeflag": 0}
    return json.dumps(metadata, separators=(",", ":"))


def modelpack_layer_annotations(path: Path, name: str, untested: bool, epoch: int | None) -> dict[str, str]:
    # Keys sorted, as Go marshals a map: the same bytes modctl would write for the same values.
    return {MEDIATYPE_UNTESTED: "true" if untested else "false",
            FILE_METADATA: _file_metadata(path, name, epoch),
            MODELPACK_FILEPATH: name,
            TITLE: name}  # oras and other generic clients name the file by its title


def pack_modelpack(model_dir: Path, layout_dir: Path) -> str:
    """Write a CNCF ModelPack artifact (one raw layer per file) into the OCI layout; return the manifest digest.

    Weights are hashed in chunks and hard-linked into the layout (copied only across filesystems), never read into
    memory. The same directory gives the same digests."""
    files = collect_files(model_dir)
    classified = []
    for name in files:
        media_type, untested = modelpack_media_type(name, (model_dir / name).stat().st_size)
        classified.append((_MODELPACK_ORDER.index(media_type), name, media_type, untested))
    classified.sort()
    weights = [name for _, name, media_type, _ in classified if media_type == MODELPACK_WEIGHT]
    if not any(name.endswith(".safetensors") for name in weights):
        raise InvalidModelError(f"{model_dir} has no .safetensors files",
                                "save the model with safetensors (save_pretrained(..., safe_serialization=True))")
    explicit = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    epoch = _source_epoch(model_dir, files) if explicit else None
    writer = LayoutWriter(layout_dir)
    layers = []
    for _, name, media_type, untested in classified:
        source = model_dir / name
        layers.append(writer.add_file(media_type, source.resolve(),
                                      modelpack_layer_annotations(source, name, untested, epoch)))
    # Field order of Go's v1.Model (descriptor, modelfs, config), as modctl marshals it.
    config = {"descriptor": {"createdAt": _created(model_dir, files), "name": model_dir.resolve().name},
              "modelfs": {"type": "layers", "diffIds": [layer["digest"] for layer in layers]},
              "config": modelpack_properties(model_dir, weights)}
    config_descriptor = writer.add_bytes(MODELPACK_CONFIG, canonical_json(config))
    return writer.add_manifest(config_descriptor, layers, artifact_type=MODELPACK_ARTIFACT_TYPE)
