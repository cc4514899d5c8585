"""Write a CNCF ModelPack artifact (one raw, uncompressed layer per file), as modctl writes it; see FORMATS.md.

The reader is modelpack.py: the media types, annotations and config model written here are the ones it reads.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import stat
from pathlib import Path

from ..errors import InvalidModelError
from ..layout import LayoutWriter, canonical_json
from ..oci import TITLE
from ..packing import SourceTimes, collect_files, open_packed, read_hf_config, timestamp
from ..safetensors_check import read_header
from .modelpack import (
    ARTIFACT_TYPE,
    CODE_RAW,
    CONFIG,
    DOC_RAW,
    FILE_METADATA,
    FILEPATH,
    MEDIATYPE_UNTESTED,
    WEIGHT_CONFIG_RAW,
    WEIGHT_RAW,
    FileMetadata,
    ModelConfig,
    ModelDescriptor,
    ModelFS,
    ModelPackConfig,
)

# The spec's recommended layer order: config, weights, code, docs (each group sorted by path).
_ORDER = (WEIGHT_CONFIG_RAW, WEIGHT_RAW, CODE_RAW, DOC_RAW)

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
        return DOC_RAW, False
    for patterns, media_type in ((_WEIGHT_NAMES, WEIGHT_RAW), (_CODE_NAMES, CODE_RAW),
                                 (_DOC_NAMES, DOC_RAW), (_CONFIG_NAMES, WEIGHT_CONFIG_RAW)):
        if _matches(name, patterns):
            return media_type, False
    return (WEIGHT_RAW if size > _WEIGHT_SIZE_THRESHOLD else WEIGHT_CONFIG_RAW), True


def _param_size(count: int) -> str:
    """The spec's ``<count><scale-prefix>``, one decimal at most: 7241732096 -> 7.2B, 8000000000 -> 8B, 282 -> 0.3K."""
    for scale, prefix in ((10**15, "Q"), (10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if count >= scale or prefix == "K":
            text = f"{count / scale:.1f}"
            return (text[:-2] if text.endswith(".0") else text) + prefix
    raise AssertionError("unreachable")


def modelpack_properties(model_dir: Path, weights: list[str]) -> dict[str, str]:
    """The config's ``config`` object: architecture, format, paramSize, precision, quantization (those known).

    paramSize and precision come from the safetensors headers (never tensor data); paramSize is left out for a
    quantized model, whose packed integer tensors do not count parameters."""
    hf_config = read_hf_config(model_dir) or {}
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


def _file_metadata(info: os.stat_result, name: str, epoch: int | None) -> str:
    """As modctl writes it, from the packed file's fstat. Owner is 0:0 so the digest does not depend on who packs;
    mtime is SOURCE_DATE_EPOCH when set, else the file's own."""
    mtime = epoch if epoch is not None else int(info.st_mtime)
    metadata = FileMetadata(name=posixpath.basename(name), mode=stat.S_IMODE(info.st_mode), uid=0, gid=0,
                            size=info.st_size, mtime=timestamp(mtime), typeflag=0)
    return canonical_json(metadata.model_dump(mode="json")).decode()


def modelpack_layer_annotations(info: os.stat_result, name: str, untested: bool,
                                epoch: int | None) -> dict[str, str]:
    # Keys sorted, as Go marshals a map: the same bytes modctl would write for the same values.
    return {MEDIATYPE_UNTESTED: "true" if untested else "false",
            FILE_METADATA: _file_metadata(info, name, epoch),
            FILEPATH: name,
            TITLE: name}  # oras and other generic clients name the file by its title


def pack_modelpack(model_dir: Path, layout_dir: Path) -> str:
    """Write a CNCF ModelPack artifact (one raw layer per file) into the OCI layout; return the manifest digest.

    Weights are hashed in chunks and hard-linked into the layout (copied only across filesystems), never read into
    memory. The same directory gives the same digests."""
    files = collect_files(model_dir)
    classified = []
    for name in files:
        media_type, untested = modelpack_media_type(name, (model_dir / name).stat().st_size)
        classified.append((_ORDER.index(media_type), name, media_type, untested))
    classified.sort()
    weights = [name for _, name, media_type, _ in classified if media_type == WEIGHT_RAW]
    if not any(name.endswith(".safetensors") for name in weights):
        raise InvalidModelError(f"{model_dir} has no .safetensors files",
                                "save the model with safetensors (save_pretrained(..., safe_serialization=True))")
    # Read before the files are packed, so that the headers it reads are those of the files the checks saw.
    properties = ModelConfig.model_validate(modelpack_properties(model_dir, weights))
    times = SourceTimes.read(model_dir, files)
    writer = LayoutWriter(layout_dir)
    layers = []
    for _, name, media_type, untested in classified:
        with open_packed(model_dir, name) as packed:  # one descriptor: its bytes and its metadata
            layers.append(writer.add_open_file(media_type, packed.fd, model_dir / name,
                                               modelpack_layer_annotations(packed.info, name, untested, times.epoch)))
    config = ModelPackConfig(
        descriptor=ModelDescriptor(created_at=times.created, name=model_dir.resolve().name),
        modelfs=ModelFS(type="layers", diff_ids=[layer.digest for layer in layers]), config=properties)
    return writer.add_manifest(writer.add_document(CONFIG, config), layers, artifact_type=ARTIFACT_TYPE)
