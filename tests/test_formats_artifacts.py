"""ModelPack, KitOps and ORAS artifacts, built as their tools write them, pushed with crane (and with the real oras
CLI), fetched through the command line and compared byte for byte with the source directory."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard
from support.cache import blob_names, model_dirs, scratch
from support.commands import fetch, fetch_fails, run_cli, tool
from support.models import push_layout, tree_bytes, write_model

from oci_crane_loader import errors
from oci_crane_loader.formats import Action, kitops, modelpack, oras, recognise
from oci_crane_loader.layout import LayoutWriter
from oci_crane_loader.oci import OCI_EMPTY, TITLE, Descriptor, Manifest, sha256_digest
from oci_crane_loader.registry.crane import Crane

MTIME = 1_700_000_000
GGUF = b"GGUF\x03\x00\x00\x00" + bytes(64)


# --- helpers ------------------------------------------------------------------------------------------------------
def make_tar(root: Path, names: list[str], compression: str = "", *, uid: int = 0, gid: int = 0,
             mtime: int = MTIME) -> bytes:
    """A tar of ``root/<name>`` for each name, in order (directories as entries of their own); compression ''
    (plain), 'gzip' (tarfile's gzip mode) or 'zstd' (the zstandard package)."""
    buffer = io.BytesIO()
    mode = "w:gz" if compression == "gzip" else "w"
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name in names:
            path = root / name
            info = tarfile.TarInfo(name)
            info.uid, info.gid, info.mtime = uid, gid, mtime
            if path.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                data = path.read_bytes()
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    return zstandard.ZstdCompressor().compress(data) if compression == "zstd" else data


def relative_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())




def nothing_materialised(cache_dir: Path) -> bool:
    return not model_dirs(cache_dir) and not scratch(cache_dir)


def manifest_at(layout: LayoutWriter, digest: str) -> Manifest:
    return Manifest.model_validate_json((layout.root / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())


# --- ModelPack (modctl) -------------------------------------------------------------------------------------------
MP = "application/vnd.cncf.model"
CNAI = "application/vnd.cnai.model"


def modctl_kind(name: str) -> str:
    """modctl's classification of a file in the model directory."""
    if name.endswith((".safetensors", ".gguf")):
        return "weight"
    if name.endswith(".py"):
        return "code"
    if name.endswith(".md") or name.startswith("LICENSE"):
        return "doc"
    return "weight.config"


def modctl_order(names: list[str]) -> list[str]:
    """config, weights, code, docs, each by path (the order the ModelPack spec asks for)."""
    rank = {"weight.config": 0, "weight": 1, "code": 2, "doc": 3}
    return sorted(names, key=lambda name: (rank[modctl_kind(name)], name))


def modctl_layer(layout: LayoutWriter, source: Path, name: str, packing: str, *, prefix: str = MP,
                 key: str = modelpack.FILEPATH, filepath: str | None = None) -> dict[str, object]:
    """One layer per file as modctl writes it: raw (the file) or a tar whose one entry is the relative path;
    the filepath annotation is the relative path (or what ``filepath`` says)."""
    media_type = f"{prefix}.{modctl_kind(name)}.v1.{packing}"
    annotations = {key: filepath if filepath is not None else name}
    if packing == "raw":
        return layout.add_file(media_type, source / name, annotations)
    compression = packing.partition("+")[2]
    return layout.add_bytes(media_type, make_tar(source, [name], compression, uid=1000, gid=1000), annotations)


def modctl_config(layers: list[Descriptor], fmt: str = "safetensors") -> bytes:
    return json.dumps({
        "descriptor": {"createdAt": "2025-06-01T12:00:00.123456789Z", "family": "tiny", "name": "tiny-test"},
        "modelfs": {"type": "layers", "diffIds": [layer.digest for layer in layers]},
        "config": {"architecture": "transformer", "format": fmt, "paramSize": "1k", "precision": "float16"},
    }, separators=(",", ":")).encode()


def push_modelpack(layout: LayoutWriter, layers: list[Descriptor], reference: str, *,
                   artifact_type: str = modelpack.ARTIFACT_TYPE, config_type: str = modelpack.CONFIG,
                   config: bytes | None = None) -> str:
    config_descriptor = layout.add_bytes(config_type, modctl_config(layers) if config is None else config)
    digest = layout.add_manifest(config_descriptor, layers, artifact_type=artifact_type,
                                 annotations={"org.cncf.model.modelfile": "NAME tiny-test"})
    push_layout(layout.root, reference)
    return digest


def modelpack_source(tmp_path: Path) -> Path:
    source = write_model(tmp_path / "src", shards=2)
    (source / "README.md").write_text("# tiny\n")
    (source / "handler.py").write_text("print('hi')\n")
    return source


@pytest.mark.parametrize("packing", ["raw", "tar", "tar+gzip", "tar+zstd", "mixed"])
def test_modelpack_layers_become_the_model_directory(registry, tmp_path, cache_dir, packing):
    source = modelpack_source(tmp_path)
    names = modctl_order(relative_files(source))
    assert "1_Pooling/config.json" in names
    layout = LayoutWriter(tmp_path / "layout")
    # mixed: modctl's default (raw weights) beside every archive kind
    mixed = {"weight": "raw", "weight.config": "tar", "code": "tar+zstd", "doc": "tar+gzip"}
    layers = [modctl_layer(layout, source, name, mixed[modctl_kind(name)] if packing == "mixed" else packing)
              for name in names]
    reference = f"{registry.host}/acme/modelpack:{packing.replace('+', '-')}"
    digest = push_modelpack(layout, layers, reference)
    result = fetch(reference, cache_dir)
    assert result["format"] == "modelpack"
    assert result["digest"] == digest
    assert tree_bytes(Path(str(result["path"]))) == tree_bytes(source)
    assert result["files"] == sorted(names)
    plan = recognise(manifest_at(layout, digest), modctl_config(layers))
    expected_action = {"raw": Action.FILE}.get(packing, Action.TAR)
    if packing != "mixed":
        assert {layer.action for layer in plan.layers} == {expected_action}
    assert [layer.weights for layer in plan.layers] == [modctl_kind(name) == "weight" for name in names]


def test_modelpack_older_cnai_names(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src", shards=1)
    layout = LayoutWriter(tmp_path / "layout")
    layers = []
    for name in modctl_order(relative_files(source)):
        packing = "raw" if name == "1_Pooling/config.json" else "tar"  # the older annotation on a raw layer too
        layers.append(modctl_layer(layout, source, name, packing, prefix=CNAI, key=modelpack.LEGACY_FILEPATH))
    reference = f"{registry.host}/acme/cnai:v1"
    push_modelpack(layout, layers, reference, artifact_type=modelpack.LEGACY_ARTIFACT_TYPE,
                   config_type=modelpack.LEGACY_CONFIG)
    result = fetch(reference, cache_dir)
    assert result["format"] == "modelpack"
    assert tree_bytes(Path(str(result["path"]))) == tree_bytes(source)


@pytest.mark.parametrize("config_type", [modelpack.CONFIG, OCI_EMPTY])
def test_modelpack_with_an_empty_config_as_kaito_pushes_it(registry, tmp_path, cache_dir, config_type):
    source = write_model(tmp_path / "src", shards=1)
    layout = LayoutWriter(tmp_path / "layout")
    layers = [modctl_layer(layout, source, name, "raw") for name in modctl_order(relative_files(source))]
    reference = f"{registry.host}/kaito/phi:{'empty' if config_type == OCI_EMPTY else 'braces'}"
    push_modelpack(layout, layers, reference, config_type=config_type, config=b"{}")
    result = fetch(reference, cache_dir)
    assert result["format"] == "modelpack"
    assert tree_bytes(Path(str(result["path"]))) == tree_bytes(source)


def test_modelpack_tar_layers_annotated_with_a_category_extract_by_entry_names(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src", shards=2)
    configs = ["config.json", "model.safetensors.index.json", "tokenizer_config.json", "1_Pooling",
               "1_Pooling/config.json"]
    shards = sorted(name for name in relative_files(source) if name.endswith(".safetensors"))
    layout = LayoutWriter(tmp_path / "layout")
    layers = [layout.add_bytes(f"{MP}.weight.config.v1.tar", make_tar(source, configs), {modelpack.FILEPATH: "config"}),
              layout.add_bytes(f"{MP}.weight.v1.tar+gzip", make_tar(source, shards, "gzip"),
                               {modelpack.FILEPATH: "weights"})]
    reference = f"{registry.host}/acme/categories:v1"
    push_modelpack(layout, layers, reference)
    result = fetch(reference, cache_dir)
    path = Path(str(result["path"]))
    assert tree_bytes(path) == tree_bytes(source)
    assert not (path / "config").exists() and not (path / "weights").exists()


def test_modelpack_leading_dotdot_in_filepath_is_stripped(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src", shards=1)
    layout = LayoutWriter(tmp_path / "layout")
    layers = [modctl_layer(layout, source, name, "raw", filepath=f"../{name}")
              for name in modctl_order(relative_files(source))]
    reference = f"{registry.host}/acme/dotdot:v1"
    push_modelpack(layout, layers, reference)
    result = fetch(reference, cache_dir)
    assert tree_bytes(Path(str(result["path"]))) == tree_bytes(source)


@pytest.mark.parametrize(("filepath", "refusal"), [
    ("../../escaped.bin", "escapes the model directory"),  # one ../ stripped (modctl writes it), one left
    ("../a/../../escaped.bin", "escapes the model directory"),
    ("/tmp/escaped.bin", "unsafe path"),  # absolute
])
def test_modelpack_path_still_escaping_after_stripping_is_refused(registry, tmp_path, cache_dir, filepath, refusal):
    source = write_model(tmp_path / "work" / "deep" / "src", shards=1)
    layout = LayoutWriter(tmp_path / "layout")
    layers = [modctl_layer(layout, source, name, "raw") for name in modctl_order(relative_files(source))]
    layers.append(layout.add_bytes(f"{MP}.doc.v1.raw", b"owned", {modelpack.FILEPATH: filepath}))
    reference = f"{registry.host}/acme/evil:v1"
    push_modelpack(layout, layers, reference)
    line = fetch_fails(reference, cache_dir)
    assert "escaped.bin" in line and refusal in line, line
    assert not list(tmp_path.rglob("escaped.bin")) and not Path("/tmp/escaped.bin").exists()
    assert nothing_materialised(cache_dir)
    # Refused while planning: the config (read to plan) is the only blob fetched, no layer.
    config_digest = json.loads(Crane().manifest(reference))["config"]["digest"]
    assert blob_names(cache_dir) == [config_digest.removeprefix("sha256:")]


def test_modelpack_two_layers_for_one_path_are_refused(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src", shards=1)
    layout = LayoutWriter(tmp_path / "layout")
    layers = [modctl_layer(layout, source, name, "raw") for name in modctl_order(relative_files(source))]
    layers.append(layout.add_bytes(f"{MP}.weight.config.v1.raw", b'{"other": 1}', {modelpack.FILEPATH: "config.json"}))
    reference = f"{registry.host}/acme/twice:v1"
    push_modelpack(layout, layers, reference)
    line = fetch_fails(reference, cache_dir)
    assert "both write 'config.json'" in line, line
    assert nothing_materialised(cache_dir)


def test_gguf_only_modelpack_is_refused_naming_what_to_use(registry, tmp_path, cache_dir):
    source = tmp_path / "src"
    source.mkdir()
    (source / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (source / "model-q4_k_m.gguf").write_bytes(GGUF)
    layout = LayoutWriter(tmp_path / "layout")
    layers = [modctl_layer(layout, source, name, "raw") for name in modctl_order(relative_files(source))]
    reference = f"{registry.host}/ai/smollm:q4"
    push_modelpack(layout, layers, reference, config=modctl_config(layers, fmt="gguf"))
    line = fetch_fails(reference, cache_dir)
    assert "GGUF" in line and "llama.cpp" in line and "docker model run" in line, line
    assert sha256_digest(GGUF) not in registry.blob_downloads()
    assert nothing_materialised(cache_dir)


def _descriptor(media_type: str, name: str | None, data: bytes, **annotations: str) -> dict[str, object]:
    notes = dict(annotations)
    if name is not None:
        notes[modelpack.FILEPATH] = name
    return {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data), "annotations": notes}


def _manifest(config_type: str, layers: list[dict[str, object]], artifact_type: str | None = None) -> Manifest:
    document: dict[str, object] = {"schemaVersion": 2, "config": {"mediaType": config_type,
                                                                   "digest": sha256_digest(b"{}"), "size": 2},
                                   "layers": layers}
    if artifact_type:
        document["artifactType"] = artifact_type
    return Manifest.model_validate(document)


def test_modelpack_gguf_rule_looks_at_weight_names_and_format():
    gguf = _descriptor(f"{MP}.weight.v1.raw", "model.gguf", b"g")
    safetensors = _descriptor(f"{MP}.weight.v1.raw", "model.safetensors", b"s")
    config = _descriptor(f"{MP}.weight.config.v1.raw", "config.json", b"c")
    both = modelpack.recognise(_manifest(modelpack.CONFIG, [config, safetensors, gguf]), b"{}")
    assert both is not None and [layer.path for layer in both.layers] == ["config.json", "model.safetensors",
                                                                          "model.gguf"]
    with pytest.raises(errors.UnsupportedFormatError, match="GGUF"):
        modelpack.recognise(_manifest(modelpack.CONFIG, [config, gguf]), b"{}")
    unnamed = _descriptor(f"{MP}.weight.v1.tar", "weights", b"t")
    with pytest.raises(errors.UnsupportedFormatError, match="GGUF"):
        modelpack.recognise(_manifest(modelpack.CONFIG, [unnamed]), b'{"config": {"format": "gguf"}}')
    assert modelpack.recognise(_manifest(modelpack.CONFIG, [unnamed]), b'{"config": {"format": "safetensors"}}')


def test_modelpack_is_claimed_by_artifact_type_or_config_and_tolerates_unknown_fields():
    layer = _descriptor(f"{MP}.weight.v1.raw", "model.safetensors", b"s")
    by_type = modelpack.recognise(_manifest(OCI_EMPTY, [layer], modelpack.ARTIFACT_TYPE), b"{}")
    assert by_type is not None and by_type.format == "modelpack"
    extra = b'{"descriptor": {"name": "x", "x-vendor": {"a": 1}}, "config": {"paramSize": "8b"}, "future": []}'
    assert modelpack.recognise(_manifest(modelpack.CONFIG, [layer]), extra) is not None
    assert modelpack.recognise(_manifest("application/vnd.oci.image.config.v1+json", [layer]), b"{}") is None
    with pytest.raises(errors.InvalidDocumentError, match="ModelPack config"):
        modelpack.recognise(_manifest(modelpack.CONFIG, [layer]), b'{"descriptor": {"authors": "me"}}')
    foreign = _descriptor("application/vnd.example.kitfile", "Kitfile", b"k")
    plan = modelpack.recognise(_manifest(modelpack.CONFIG, [layer, foreign]), b"{}")
    assert plan is not None and [d.media_type for d in plan.skipped] == ["application/vnd.example.kitfile"]


# --- KitOps (kit pack) --------------------------------------------------------------------------------------------
KIT = "application/vnd.kitops.modelkit"


def kit_walk(context: Path, path: str) -> list[str]:
    """The entry names `kit pack` writes for one Kitfile path: walking the context directory in lexical order,
    keeping what lies under ``path`` (directories included), relative to the context."""
    base = context / path
    if base.is_file():
        return [path]
    names = [path]
    for child in sorted(base.rglob("*"), key=lambda p: p.relative_to(context).parts):
        names.append(str(child.relative_to(context)))
    return names


def kit_layout(tmp_path: Path, context: Path, kitfile: dict[str, object], sections: list[tuple[str, str]],
               compression: str) -> tuple[LayoutWriter, str]:
    """A ModelKit as `kit pack` writes it: one tar layer per (kind, path), annotated with the path; the Kitfile
    (with each layer's digest and diffId) as the config."""
    layout = LayoutWriter(tmp_path / "kit-layout")
    layers = []
    infos: list[dict[str, str]] = []
    suffix = {"none": "", "gzip": "+gzip", "zstd": "+zstd"}[compression]
    for kind, path in sections:
        plain = make_tar(context, kit_walk(context, path), uid=1000, mtime=0)
        blob = make_tar(context, kit_walk(context, path), "" if compression == "none" else compression,
                        uid=1000, mtime=0)
        layers.append(layout.add_bytes(f"{KIT}.{kind}.v1.tar{suffix}", blob, {kitops.FILEPATH: path}))
        infos.append({"digest": sha256_digest(blob), "diffId": sha256_digest(plain)})
    sequence = iter(infos)
    model = kitfile.get("model")
    if isinstance(model, dict):
        model.update(next(sequence))
    for section in ("code", "datasets", "docs"):
        for entry in kitfile.get(section, []):
            entry.update(next(sequence))
    config = layout.add_bytes(kitops.CONFIG, json.dumps(kitfile, separators=(",", ":")).encode())
    digest = layout.add_manifest(config, layers, artifact_type=kitops.ARTIFACT_TYPE,
                                 annotations={"ml.kitops.modelkit.cli-version": "1.4.0",
                                              "org.opencontainers.image.created": "2025-06-01T12:00:00Z"})
    return layout, digest


def kit_context(tmp_path: Path) -> Path:
    context = tmp_path / "project"
    write_model(context / "model", shards=2)
    (context / "code").mkdir()
    (context / "code" / "train.py").write_text("print('train')\n")
    (context / "docs").mkdir()
    (context / "docs" / "README.md").write_text("# tiny\n")
    return context


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_kitops_modelkit_model_dir_is_where_config_json_is(registry, tmp_path, cache_dir, compression):
    context = kit_context(tmp_path)
    kitfile: dict[str, object] = {
        "manifestVersion": "1.0.0", "package": {"name": "tiny", "authors": ["acme"]},
        "model": {"name": "tiny", "path": "model", "framework": "transformers"},
        "code": [{"path": "code", "description": "training"}], "docs": [{"path": "docs"}]}
    layout, digest = kit_layout(tmp_path, context, kitfile, [("model", "model"), ("code", "code"),
                                                             ("docs", "docs")], compression)
    reference = f"{registry.host}/acme/modelkit:{compression}"
    push_layout(layout.root, reference)
    result = fetch(reference, cache_dir)
    assert result["format"] == "kitops"
    path = Path(str(result["path"]))
    # The model directory holds only the config.json directory's subtree: code/ and docs/ stay out.
    assert tree_bytes(path) == tree_bytes(context / "model")
    assert not (path / "code").exists() and not (path / "docs").exists() and not (path / "model").exists()
    plan = recognise(manifest_at(layout, digest), (layout.root / "blobs" / "sha256" /
                                                   manifest_at(layout, digest).config.digest[7:]).read_bytes())
    assert plan.find_root and [(layer.action, layer.path, layer.weights) for layer in plan.layers] == [
        (Action.TAR, None, True), (Action.TAR, None, False), (Action.TAR, None, False)]


def test_kitops_raw_layers_are_files_at_their_annotated_paths(registry, tmp_path, cache_dir):
    context = tmp_path / "project"
    source = write_model(context / "model", shards=1)
    (context / "README.md").write_text("# tiny\n")
    parts = ["model/config.json", "model/tokenizer_config.json", "model/1_Pooling/config.json"]
    layout = LayoutWriter(tmp_path / "layout")
    layers = [layout.add_file(f"{KIT}.model.v1.raw", context / "model/model.safetensors",
                              {kitops.FILEPATH: "model/model.safetensors"})]
    layers += [layout.add_file(f"{KIT}.modelpart.v1.raw", context / part, {kitops.FILEPATH: part}) for part in parts]
    layers.append(layout.add_file(f"{KIT}.docs.v1.raw", context / "README.md", {kitops.FILEPATH: "README.md"}))
    kitfile = {"manifestVersion": "1.0.0", "package": {"name": "tiny"},
               "model": {"path": "model/model.safetensors", "digest": layers[0].digest,
                         "parts": [{"path": part, "digest": layer.digest} for part, layer in zip(parts, layers[1:4],
                                                                                                  strict=True)]},
               "docs": [{"path": "README.md", "digest": layers[4].digest}]}
    config = layout.add_bytes(kitops.CONFIG, json.dumps(kitfile).encode())
    layout.add_manifest(config, layers, artifact_type=kitops.ARTIFACT_TYPE)
    reference = f"{registry.host}/acme/rawkit:v1"
    push_layout(layout.root, reference)
    result = fetch(reference, cache_dir)
    assert result["format"] == "kitops"
    assert tree_bytes(Path(str(result["path"]))) == tree_bytes(source)


def test_kitops_before_layer_digests_extracts_into_the_entry_parent(registry, tmp_path, cache_dir):
    """ModelKits packed before KitOps 0.5 name entries from the Kitfile path's parent (kit unpack's rule)."""
    context = tmp_path / "project"
    source = write_model(context / "models" / "tiny", shards=1)
    parent = context / "models"
    layout = LayoutWriter(tmp_path / "layout")
    names = kit_walk(parent, "tiny")
    layers = [layout.add_bytes(f"{KIT}.model.v1.tar+gzip", make_tar(parent, names, "gzip"))]
    kitfile = {"manifestVersion": "v1.0.0", "package": {"name": "old"}, "model": {"path": "models/tiny"}}
    layout.add_manifest(layout.add_bytes(kitops.CONFIG, json.dumps(kitfile).encode()), layers)
    reference = f"{registry.host}/acme/oldkit:v1"
    push_layout(layout.root, reference)
    result = fetch(reference, cache_dir)
    assert tree_bytes(Path(str(result["path"]))) == tree_bytes(source)
    named = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--subpath", "models/tiny", "--json")
    assert named.returncode == 0, named.stderr  # the Kitfile's path names the directory, as after kit unpack
    assert tree_bytes(Path(json.loads(named.stdout)["path"])) == tree_bytes(source)


def test_kitops_plan_rules():
    def layer(kind: str, n: int, suffix: str = ".tar", **notes: str) -> dict[str, object]:
        data = str(n).encode()
        return {"mediaType": f"{KIT}.{kind}.v1{suffix}", "digest": sha256_digest(data), "size": 1,
                "annotations": notes}

    mcpb = {"mediaType": f"{KIT}.mcpb.v1.raw", "digest": sha256_digest(b"m"), "size": 1}
    manifest = _manifest(kitops.CONFIG, [layer("model", 1), layer("dataset", 2, ".tar+zstd"), mcpb])
    plan = kitops.recognise(manifest, b'{"manifestVersion": "1.0.0", "model": {"path": "m"}, "unknown": 1}')
    assert plan is not None and plan.find_root and [d.media_type for d in plan.skipped] == [mcpb["mediaType"]]
    assert [layer.weights for layer in plan.layers] == [True, True]
    with pytest.raises(errors.UnsupportedFormatError, match="compressed with gzip"):
        kitops.recognise(_manifest(kitops.CONFIG, [layer("model", 1, ".raw+gzip", **{kitops.FILEPATH: "m.bin"})]),
                         b"{}")
    referenced = b'{"model": {"path": "registry.example/acme/base:v1"}}'
    with pytest.raises(errors.UnsupportedFormatError, match=r"registry\.example/acme/base:v1"):
        kitops.recognise(_manifest(kitops.CONFIG, [layer("docs", 3)]), referenced)
    with pytest.raises(errors.InvalidModelError, match="escapes"):
        kitops.recognise(_manifest(kitops.CONFIG, [layer("docs", 3, ".raw", **{kitops.FILEPATH: "../x"})]), b"{}")
    assert kitops.recognise(_manifest(modelpack.CONFIG, [layer("model", 1)]), b"{}") is None


# --- ORAS ---------------------------------------------------------------------------------------------------------
ORAS_FILE = "application/vnd.oci.image.layer.v1.tar"
ORAS_DIR = "application/vnd.oci.image.layer.v1.tar+gzip"


def oras_layout(tmp_path: Path, source: Path, files: list[str], directories: list[str], media_type: str,
                artifact_type: str = oras.DEFAULT_ARTIFACT_TYPE,
                extra: list[tuple[str, bytes]] | None = None) -> tuple[LayoutWriter, str]:
    """As `oras push REF FILE... DIR/` writes it: the 2-byte empty config, one raw layer per file titled with its
    name, each directory a tar+gzip whose entries start with the directory's name, marked for unpacking."""
    layout = LayoutWriter(tmp_path / "oras-layout")
    layers = [layout.add_file(media_type, source / name, {TITLE: name}) for name in files]
    for directory in directories:
        names = kit_walk(source, directory)
        plain = make_tar(source, names)
        layers.append(layout.add_bytes(ORAS_DIR, make_tar(source, names, "gzip"), {
            "io.deis.oras.content.digest": sha256_digest(plain), "io.deis.oras.content.unpack": "true",
            TITLE: directory}))
    for media, data in extra or []:
        layers.append(layout.add_bytes(media, data))
    config = layout.add_bytes(OCI_EMPTY, b"{}")
    config = Descriptor.model_validate({**config.model_dump(by_alias=True, exclude_unset=True), "data": "e30="})
    digest = layout.add_manifest(config, layers, artifact_type=artifact_type,
                                 annotations={"org.opencontainers.image.created": "2025-06-01T12:00:00Z"})
    return layout, digest


@pytest.mark.parametrize("media_type", [ORAS_FILE, "application/vnd.kaito.llm.v1"])
def test_oras_titled_files_are_written_verbatim_and_directories_unpacked(registry, tmp_path, cache_dir, media_type):
    source = write_model(tmp_path / "src", shards=2)
    # A file that IS a tar+gzip, pushed as a file: without the unpack annotation it must stay as it is.
    (source / "extras.tar.gz").write_bytes(make_tar(source, ["config.json"], "gzip"))
    files = [name for name in relative_files(source) if not name.startswith("1_Pooling/")]
    untitled = b"no title, not pulled"
    layout, digest = oras_layout(tmp_path, source, files, ["1_Pooling"], media_type,
                                 extra=[("application/vnd.example.signature", untitled)])
    reference = f"{registry.host}/acme/oras:v1"
    push_layout(layout.root, reference)
    result = fetch(reference, cache_dir)
    assert result["format"] == "oras"
    assert tree_bytes(Path(str(result["path"]))) == tree_bytes(source)
    assert sha256_digest(untitled) not in registry.blob_downloads()
    plan = recognise(manifest_at(layout, digest), b"{}")
    assert [d.digest for d in plan.skipped] == [sha256_digest(untitled)]
    by_path = {layer.path: layer for layer in plan.layers}
    assert by_path["extras.tar.gz"].action is Action.FILE
    assert by_path["model-00001-of-00002.safetensors"].weights and not by_path["config.json"].weights
    assert [layer.action for layer in plan.layers].count(Action.TAR) == 1


def test_oras_recogniser_leaves_container_images_alone():
    image_config = "application/vnd.oci.image.config.v1+json"
    plain = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256_digest(b"a"), "size": 1}
    titled = {**plain, "digest": sha256_digest(b"b"), "annotations": {TITLE: "weights.tar.gz"}}
    assert oras.recognise(_manifest(image_config, [plain]), b"{}") is None
    assert oras.recognise(_manifest(image_config, [plain, titled]), b"{}") is None
    assert oras.recognise(_manifest(OCI_EMPTY, [plain]), b"{}") is None
    plan = oras.recognise(_manifest(OCI_EMPTY, [plain, titled]), b"{}")
    assert plan is not None and [layer.path for layer in plan.layers] == ["weights.tar.gz"]
    assert plan.layers[0].action is Action.FILE  # no unpack annotation: the blob is the file
    unknown = oras.recognise(_manifest("application/vnd.unknown.config.v1+json", [titled]), b"{}")
    assert unknown is not None and unknown.format == "oras"
    with pytest.raises(errors.InvalidModelError, match="escapes"):
        oras.recognise(_manifest(OCI_EMPTY, [{**titled, "annotations": {TITLE: "../x"}}]), b"{}")


def test_oras_cli_push_then_fetch_equals_the_source(registry, tmp_path, cache_dir):
    binary = tool("oras")
    if binary is None:
        pytest.skip("oras is not installed: run bash bin/install-oras")
    source = write_model(tmp_path / "src", shards=1)
    reference = f"{registry.host}/x/y:v1"
    pushed = subprocess.run([binary, "push", "--plain-http", reference, "config.json", "model.safetensors",
                             "tokenizer_config.json", "1_Pooling/"], cwd=source, capture_output=True, text=True,
                            timeout=120, check=False)
    assert pushed.returncode == 0, pushed.stderr
    result = fetch(reference, cache_dir)
    assert result["format"] == "oras"
    path = Path(str(result["path"]))
    assert tree_bytes(path) == tree_bytes(source)
    # oras's own pull writes the same tree.
    pulled = tmp_path / "oras-pull"
    done = subprocess.run([binary, "pull", "--plain-http", reference, "-o", str(pulled)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert tree_bytes(pulled) == tree_bytes(path)


# --- inspect ------------------------------------------------------------------------------------------------------
def test_inspect_modelpack_lists_files_without_downloading_weights(registry, tmp_path, cache_dir):
    source = modelpack_source(tmp_path)
    names = modctl_order(relative_files(source))
    layout = LayoutWriter(tmp_path / "layout")
    layers = [modctl_layer(layout, source, name, "raw" if modctl_kind(name) == "weight" else "tar+gzip")
              for name in names]
    reference = f"{registry.host}/acme/inspect:v1"
    digest = push_modelpack(layout, layers, reference)
    done = run_cli("inspect", reference, "--json", "--cache-dir", str(cache_dir))
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["digest"] == digest and info["format"] == "modelpack"
    assert info["artifact_type"] == modelpack.ARTIFACT_TYPE
    assert {entry["path"]: entry["size"] for entry in info["files"]} == {
        name: len(data) for name, data in tree_bytes(source).items()}
    weights = [layer.digest for layer, name in zip(layers, names, strict=True) if modctl_kind(name) == "weight"]
    assert len(weights) == 2
    assert not any(weight in registry.blob_downloads() for weight in weights)
    assert not any(p.name.endswith(".safetensors") for p in cache_dir.rglob("*"))
    cached = set(blob_names(cache_dir))
    assert not any(str(weight).split(":")[1] in cached for weight in weights)


def test_inspect_modelkit_lists_small_layers_and_names_the_model_archive(registry, tmp_path, cache_dir):
    context = kit_context(tmp_path)
    kitfile: dict[str, object] = {"manifestVersion": "1.0.0", "model": {"path": "model"},
                                  "code": [{"path": "code"}], "docs": [{"path": "docs"}]}
    layout, digest = kit_layout(tmp_path, context, kitfile, [("model", "model"), ("code", "code"),
                                                             ("docs", "docs")], "gzip")
    reference = f"{registry.host}/acme/kit-inspect:v1"
    push_layout(layout.root, reference)
    done = run_cli("inspect", reference, "--json", "--cache-dir", str(cache_dir))
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["format"] == "kitops"
    model_layer = manifest_at(layout, digest).layers[0]
    assert [entry for entry in info["files"] if entry.get("archive")] == [
        {"media_type": model_layer.media_type, "digest": model_layer.digest, "size": model_layer.size,
         "path": None, "archive": True}]
    assert sorted(entry["path"] for entry in info["files"] if entry.get("from_tar")) == [
        "code/train.py", "docs/README.md"]
    assert model_layer.digest not in registry.blob_downloads()
    human = run_cli("inspect", reference, "--cache-dir", str(cache_dir))
    assert human.returncode == 0 and "(archive, listed once fetched)" in human.stdout and "train.py" in human.stdout
