"""Plain container images (KubeAI, KServe modelcars, ramalama), Ollama refusals and choosing from image indexes,
end to end: layouts written here, pushed with a real crane to a real registry, fetched through the command line."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zstandard
from safetensors.numpy import save_file
from support.cache import model_dirs
from support.commands import fetch, fetch_fails, run_cli
from support.models import push_layout, tree_bytes, write_model

from oci_crane_loader import errors
from oci_crane_loader.formats import Action, image, ollama, recognise
from oci_crane_loader.formats.dmr_pack import pack_dmr
from oci_crane_loader.formats.index import select_child
from oci_crane_loader.layout import LayoutWriter, canonical_json
from oci_crane_loader.oci import DOCKER_MANIFEST, Descriptor, Index, Manifest, sha256_digest
from oci_crane_loader.platforms import host_platform
from oci_crane_loader.registry.crane import Crane

OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_TYPES = {"tar": OCI_TAR, "gzip": OCI_GZIP, "zstd": OCI_ZSTD}
COSIGN = "application/vnd.dev.cosign.artifact.sig.v1+json"


# --- building images ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One tar member: a file (data), a directory (data None), a symlink or a hard link (link set)."""

    name: str
    data: bytes | None = None
    symlink: str | None = None
    hardlink: str | None = None


def files_of(directory: Path, prefix: str) -> list[Entry]:
    """The directory's files as tar entries under ``prefix`` (directories first, as `tar` writes them)."""
    entries = [Entry(prefix + str(p.relative_to(directory)) + "/") for p in sorted(directory.rglob("*")) if p.is_dir()]
    entries += [Entry(prefix + str(p.relative_to(directory)), p.read_bytes())
                for p in sorted(directory.rglob("*")) if p.is_file()]
    return entries


def make_tar(entries: list[Entry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name.rstrip("/") or ".")
            info.mtime, info.mode = 0, 0o644
            if entry.symlink is not None:
                info.type, info.linkname = tarfile.SYMTYPE, entry.symlink
                tar.addfile(info)
            elif entry.hardlink is not None:
                info.type, info.linkname = tarfile.LNKTYPE, entry.hardlink
                tar.addfile(info)
            elif entry.data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
    return buffer.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def add_image(layout: LayoutWriter, layers: list[list[Entry]], compression: str = "tar", *,
              platform: dict[str, str] | None = None) -> str:
    """One OCI image (config with diff_ids, one layer per entry list) added to the layout; its manifest digest."""
    tars = [make_tar(entries) for entries in layers]
    descriptors = [layout.add_bytes(MEDIA_TYPES[compression], compress(data, compression)) for data in tars]
    config = {"architecture": (platform or {}).get("architecture", "amd64"), "os": "linux",
              "config": {"Env": ["PATH=/usr/bin"]}, "created": "1970-01-01T00:00:00Z",
              "rootfs": {"type": "layers", "diff_ids": [sha256_digest(data) for data in tars]},
              "history": [{"created_by": "COPY . /"} for _ in tars]}
    config_descriptor = layout.add_bytes(image.OCI_CONFIG, canonical_json(config))
    return layout.add_manifest(config_descriptor, descriptors, platform=platform)


def push_image(tmp_path: Path, reference: str, layers: list[list[Entry]], compression: str = "tar") -> str:
    layout = LayoutWriter(tmp_path / f"layout-{hashlib.sha256(reference.encode()).hexdigest()[:8]}")
    add_image(layout, layers, compression)
    return push_layout(layout.root, reference)




# A base image's files, dropped with everything outside the model directory. Its config.json lies deeper than any
# model directory here: the shallowest config.json wins.
BASE = [Entry("etc/"), Entry("etc/os-release", b"ID=distroless\n"), Entry("usr/"), Entry("usr/bin/"),
        Entry("usr/bin/true", b"\x7fELF..."), Entry("usr/share/"), Entry("usr/share/app/"),
        Entry("usr/share/app/defaults/"), Entry("usr/share/app/defaults/config.json", b'{"not": "a model"}')]


# --- the three layouts in the wild ------------------------------------------------------------------------------
@pytest.mark.parametrize(("style", "prefix", "compression", "base"), [
    ("kubeai", "", "tar", False),  # FROM scratch, model files at the image root
    ("kserve", "models/", "gzip", True),  # a modelcar: /models beside a small base image
    ("ramalama", "./models/granite-3b/", "zstd", True),  # /models/<name>/, names as `tar -C dir .` writes them
])
def test_model_directory_is_found_in_each_image_layout(registry, tmp_path, cache_dir, style, prefix, compression,
                                                        base):
    source = write_model(tmp_path / "src", shards=2)
    layers = [BASE] if base else []
    parents = [Entry("/".join(prefix.strip("./").split("/")[: n + 1]) + "/")
               for n in range(len(prefix.strip("./").split("/"))) if prefix.strip("./")]
    layers.append(parents + files_of(source, prefix))
    reference = f"{registry.host}/acme/{style}:v1"
    pinned = push_image(tmp_path, reference, layers, compression)
    result = fetch(reference, cache_dir)
    assert result["format"] == "image"
    assert result["digest"] == pinned.split("@")[1]
    assert tree_bytes(Path(str(result["path"]))) == tree_bytes(source)
    assert sorted(result["files"]) == sorted(tree_bytes(source))  # type: ignore[call-overload]


def test_layers_apply_in_order_with_whiteouts_and_opaque_directories(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src", shards=1)
    first = [Entry("models/"), *files_of(source, "models/"), Entry("models/stale.txt", b"old"),
             Entry("models/extra/"), Entry("models/extra/a.txt", b"a"), Entry("models/extra/b.txt", b"b")]
    new_config = json.dumps({"architectures": ["TestModel"], "hidden_size": 8, "patched": True}).encode()
    second = [Entry("models/config.json", new_config),
              Entry("models/.wh.stale.txt", b""),
              # In the same layer as the opaque whiteout, written before it: it must survive (OCI image spec:
              # whiteouts only hide what lower layers hold).
              Entry("models/extra/c.txt", b"c"),
              Entry("models/extra/.wh..wh..opq", b""),
              Entry("models/extra/-d.txt", b"d")]
    third = [Entry("models/tokenizer_config.json", b'{"model_max_length": 64}')]
    reference = f"{registry.host}/acme/layered:v1"
    push_image(tmp_path, reference, [first, second, third], "gzip")
    result = fetch(reference, cache_dir)
    expected = tree_bytes(source)
    expected["config.json"] = new_config
    expected["tokenizer_config.json"] = b'{"model_max_length": 64}'
    expected["extra/c.txt"] = b"c"
    expected["extra/-d.txt"] = b"d"
    assert tree_bytes(Path(str(result["path"]))) == expected


def test_subpath_chooses_among_several_model_directories(registry, tmp_path, cache_dir):
    small, large = write_model(tmp_path / "a", shards=1, seed=1), write_model(tmp_path / "b", shards=2, seed=2)
    layers = [[Entry("models/"), *files_of(small, "models/a/")], [*files_of(large, "models/b/")]]
    reference = f"{registry.host}/acme/two:v1"
    push_image(tmp_path, reference, layers, "zstd")
    default = fetch(reference, cache_dir)
    assert tree_bytes(Path(str(default["path"]))) == tree_bytes(small)  # shallowest config.json, first by name
    chosen = fetch(reference, cache_dir, "--subpath", "/models/b/")
    assert tree_bytes(Path(str(chosen["path"]))) == tree_bytes(large)
    assert chosen["path"] != default["path"] and chosen["digest"] == default["digest"]
    line = fetch_fails(reference, cache_dir, "--subpath", "models/c")
    assert "'models/c'" in line and "not a directory" in line


def test_subpath_is_one_directory_however_it_is_written(registry, tmp_path, cache_dir):
    small, large = write_model(tmp_path / "a", shards=1, seed=1), write_model(tmp_path / "b", shards=2, seed=2)
    reference = f"{registry.host}/acme/two:v1"
    push_image(tmp_path, reference, [[Entry("models/"), *files_of(small, "models/a/")],
                                     [*files_of(large, "models/b/")]])
    paths = {str(fetch(reference, cache_dir, "--subpath", typed)["path"])
             for typed in ("/models/b/", "models/b", "./models//b", "models/x/../b")}
    assert len(paths) == 1  # one model directory in the cache, not one per spelling
    assert [p.name for p in model_dirs(cache_dir)] == [Path(paths.pop()).name]


def test_python_fetch_honours_subpath_and_the_environment_as_the_cli_does(registry, tmp_path, cache_dir,
                                                                           monkeypatch):
    import oci_crane_loader
    from oci_crane_loader.settings import settings

    small, large = write_model(tmp_path / "a", shards=1, seed=1), write_model(tmp_path / "b", shards=2, seed=2)
    reference = f"{registry.host}/acme/two:v1"
    push_image(tmp_path, reference, [[Entry("models/"), *files_of(small, "models/a/")],
                                     [*files_of(large, "models/b/")]])
    by_cli = Path(str(fetch(reference, cache_dir, "--subpath", "/models/b/")["path"]))
    by_python = oci_crane_loader.fetch(reference, cache_dir=cache_dir, subpath="models/b")
    assert by_python == by_cli and tree_bytes(by_python) == tree_bytes(large)
    # The environment: the cache and offline mode from OCI_CRANE_*, for both doors alike.
    env = {"OCI_CRANE_LOADER_CACHE": str(cache_dir), "OCI_CRANE_OFFLINE": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings.cache_clear()
    try:
        assert oci_crane_loader.fetch(reference, subpath="models/b/") == by_cli
        offline = run_cli("fetch", reference, "--subpath", "models/b", env=env)
        assert offline.returncode == 0 and offline.stdout.strip() == str(by_cli), offline.stderr
        missing = f"{registry.host}/acme/never:v1"
        with pytest.raises(errors.OfflineError, match="is not in the cache"):
            oci_crane_loader.fetch(missing, subpath="models/b")
        refused = run_cli("fetch", missing, "--subpath", "models/b", "-q", env=env)
        assert refused.returncode == 1 and "is not in the cache" in refused.stderr
        with pytest.raises(errors.UsageError, match=r"--subpath: path '\.\./etc' escapes"):
            oci_crane_loader.fetch(reference, subpath="../etc")
        with pytest.raises(errors.UsageError, match="--jobs 0 is not a number from 1 to 64"):
            oci_crane_loader.fetch(reference, jobs=0)
    finally:
        settings.cache_clear()
    assert "never" not in registry.log()  # offline: no request at all


def test_large_layers_are_weights_that_inspect_does_not_download(registry, tmp_path, cache_dir):
    source = tmp_path / "src"
    source.mkdir()
    weights = np.random.default_rng(3).standard_normal(image.WEIGHTS_THRESHOLD // 4 + 1024).astype(np.float32)
    save_file({"embed.weight": weights}, str(source / "model.safetensors"))
    (source / "config.json").write_text('{"architectures": ["TestModel"]}')
    big = [Entry("models/"), Entry("models/model.safetensors", (source / "model.safetensors").read_bytes())]
    small = [Entry("models/config.json", (source / "config.json").read_bytes())]
    reference = f"{registry.host}/acme/big:v1"
    push_image(tmp_path, reference, [big, small])
    manifest = Manifest.model_validate_json(Crane().manifest(reference))
    plan = recognise(manifest, b"{}")
    assert [layer.weights for layer in plan.layers] == [True, False]
    done = run_cli("inspect", reference, "--cache-dir", str(cache_dir), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["format"] == "image"
    assert manifest.layers[0].digest not in registry.blob_downloads()
    result = fetch(reference, cache_dir)
    assert tree_bytes(Path(str(result["path"]))) == tree_bytes(source)


def test_inspect_lists_the_files_of_each_image_layer(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src", shards=1)
    reference = f"{registry.host}/acme/listed:v1"
    push_image(tmp_path, reference, [BASE, [Entry("models/"), *files_of(source, "models/")],
                                     [Entry("etc/.wh.os-release")]], "gzip")
    done = run_cli("inspect", reference, "--cache-dir", str(cache_dir))
    assert done.returncode == 0, done.stderr
    listed = [line.split()[-1] for line in done.stdout.splitlines() if line.startswith("  ")]
    assert listed == ["etc/os-release", "usr/bin/true", "usr/share/app/defaults/config.json",
                      *[f"models/{name}" for name in tree_bytes(source)]]
    assert "unnamed" not in done.stdout


def test_links_in_a_layer_hard_link_copied_symlink_dropped(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src", shards=1)
    layer = [Entry("models/"), *files_of(source, "models/"),
             Entry("models/tokenizer.json", hardlink="models/tokenizer_config.json"),
             Entry("models/latest.safetensors", symlink="model.safetensors"),
             Entry("models/passwd", symlink="/etc/passwd")]
    reference = f"{registry.host}/acme/links:v1"
    push_image(tmp_path, reference, [layer])
    result = fetch(reference, cache_dir)
    path = Path(str(result["path"]))
    expected = tree_bytes(source)
    expected["tokenizer.json"] = expected["tokenizer_config.json"]
    assert tree_bytes(path) == expected
    assert not any(p.is_symlink() for p in path.rglob("*"))
    assert not (path / "passwd").exists() and not (path / "latest.safetensors").exists()


def test_image_written_by_crane_append_with_docker_media_types(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src", shards=2)
    layer = tmp_path / "layer.tar"
    layer.write_bytes(make_tar([Entry("models/"), Entry("models/m/"), *files_of(source, "models/m/")]))
    reference = f"{registry.host}/acme/appended:v1"
    Crane().run("append", options=["--new_layer", str(layer), "-t", reference])
    manifest = json.loads(Crane().manifest(reference))
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == image.DOCKER_CONFIG
    assert [layer["mediaType"] for layer in manifest["layers"]] == [DOCKER_GZIP]
    result = fetch(reference, cache_dir)
    assert result["format"] == "image"
    assert tree_bytes(Path(str(result["path"]))) == tree_bytes(source)


# --- images that hold no usable model ---------------------------------------------------------------------------
def test_gguf_only_images_say_so(registry, tmp_path, cache_dir):
    gguf = b"GGUF\x03\x00\x00\x00" + bytes(64)
    with_config = [Entry("models/"), Entry("models/config.json", b'{"architectures": ["LlamaForCausalLM"]}'),
                   Entry("models/model-q4_k_m.gguf", gguf)]
    ramalama_car = [Entry("models/"), Entry("models/smollm/"), Entry("models/smollm/smollm.gguf", gguf)]
    for name, layer in (("with-config", with_config), ("car", ramalama_car)):
        reference = f"{registry.host}/acme/{name}:v1"
        push_image(tmp_path, reference, [layer])
        line = fetch_fails(reference, cache_dir)
        assert "GGUF" in line and ".gguf" in line and "safetensors" in line, line
    assert model_dirs(cache_dir) == []


def test_image_without_weights_names_the_directory(registry, tmp_path, cache_dir):
    layer = [Entry("models/"), Entry("models/config.json", b'{"architectures": ["TestModel"]}'),
             Entry("models/pytorch_model.bin", b"PK\x03\x04")]
    reference = f"{registry.host}/acme/pickle:v1"
    push_image(tmp_path, reference, [layer])
    line = fetch_fails(reference, cache_dir)
    assert "no safetensors" in line and "'models'" in line and "pytorch_model.bin" in line, line


def test_image_with_foreign_layer_types_is_refused_listing_them():
    layer = {"mediaType": OCI_GZIP, "digest": sha256_digest(b"a"), "size": 1}
    gguf = {"mediaType": "application/vnd.docker.ai.gguf.v3", "digest": sha256_digest(b"b"), "size": 1}
    wasm = {"mediaType": "application/vnd.wasm.content.layer.v1+wasm", "digest": sha256_digest(b"c"), "size": 1}
    manifest = Manifest.model_validate({
        "schemaVersion": 2, "config": {"mediaType": image.OCI_CONFIG, "digest": sha256_digest(b"{}"), "size": 2},
        "layers": [layer, gguf, wasm, gguf]})
    with pytest.raises(errors.UnsupportedFormatError) as info:
        recognise(manifest, b"{}")
    assert info.value.cause.endswith(
        "layers that are not filesystem tars: application/vnd.docker.ai.gguf.v3, "
        "application/vnd.wasm.content.layer.v1+wasm")
    only_tars = manifest.model_copy(update={"layers": manifest.layers[:1]})
    plan = recognise(only_tars, b'{"architecture": "amd64", "os": "linux", "rootfs": null, "x-extra": 1}')
    assert plan.format == "image" and plan.find_root and [layer.action for layer in plan.layers] == [Action.IMAGE]
    with pytest.raises(errors.InvalidDocumentError, match="image config"):
        recognise(only_tars, b'{"os": 5}')


# --- Ollama ----------------------------------------------------------------------------------------------------
def test_ollama_model_is_refused_in_one_line_before_any_layer_is_downloaded(registry, tmp_path, cache_dir):
    layout = LayoutWriter(tmp_path / "ollama")
    gguf = b"GGUF\x03\x00\x00\x00" + bytes(256)
    layers = [layout.add_bytes(ollama.MODEL, gguf), layout.add_bytes(ollama.TEMPLATE, b"{{ .Prompt }}"),
              layout.add_bytes(ollama.LICENSE, b"Apache-2.0"), layout.add_bytes(ollama.PARAMS, b'{"stop": ["</s>"]}')]
    config = {"model_format": "gguf", "model_family": "llama", "model_families": ["llama"], "model_type": "135M",
              "file_type": "Q8_0", "architecture": "amd64", "os": "linux",
              "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]}}
    manifest = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                "config": layout.add_bytes(image.DOCKER_CONFIG, canonical_json(config)), "layers": layers}
    layout.descriptors.append(layout.add_document(DOCKER_MANIFEST, Manifest.model_validate(manifest)))
    layout.write_index()
    reference = f"{registry.host}/library/smollm:135m"
    push_layout(layout.root, reference)
    line = fetch_fails(reference, cache_dir)
    assert "Ollama model" in line and "GGUF" in line and "ollama run" in line and "oci-crane push" in line, line
    assert layers[0].digest not in registry.blob_downloads()


# --- image indexes ---------------------------------------------------------------------------------------------
def test_multi_platform_image_index_picks_the_platform(registry, tmp_path, cache_dir):
    host_arch = host_platform(os="linux").split("/")[1]
    architectures = [*sorted({"amd64", "arm64"} - {host_arch}), host_arch]  # the host's last: not picked by chance
    models = {arch: write_model(tmp_path / arch, shards=1, seed=seed) for seed, arch in enumerate(architectures)}
    layout = LayoutWriter(tmp_path / "multi")
    digests = {arch: add_image(layout, [files_of(model, "models/")], "gzip",
                               platform={"os": "linux", "architecture": arch}) for arch, model in models.items()}
    reference = f"{registry.host}/acme/multi:v1"
    Crane().run("push", str(layout.root), reference, options=["--index"])
    arm = fetch(reference, cache_dir, "--platform", "linux/arm64")
    assert arm["digest"] == digests["arm64"] and arm["index_digest"] not in (None, digests["arm64"])
    assert tree_bytes(Path(str(arm["path"]))) == tree_bytes(models["arm64"])
    default = fetch(reference, cache_dir)
    assert default["digest"] == digests[host_arch]
    assert tree_bytes(Path(str(default["path"]))) == tree_bytes(models[host_arch])
    line = fetch_fails(reference, cache_dir, "--platform", "linux/s390x")
    assert "no manifest for platform linux/s390x" in line and "linux/arm64" in line


def add_signature(layout: LayoutWriter, subject: str) -> str:
    """A cosign-style signature child (an artifact manifest with artifactType, listed in the index as such)."""
    payload = layout.add_bytes("application/vnd.dev.cosign.simplesigning.v1+json",
                               json.dumps({"critical": {"image": {"docker-manifest-digest": subject}}}).encode(),
                               {"dev.cosignproject.cosign/signature": "MEUCIQ=="})
    empty = layout.add_bytes("application/vnd.oci.empty.v1+json", b"{}")
    digest = layout.add_manifest(empty, [payload], artifact_type=COSIGN)
    layout.descriptors[-1] = with_fields(layout.descriptors[-1], artifactType=COSIGN)
    return digest


def add_attestation(layout: LayoutWriter, subject: str) -> str:
    """A buildkit attestation child: platform unknown/unknown, an in-toto layer in an image manifest."""
    statement = layout.add_bytes("application/vnd.in-toto+json", b'{"_type": "https://in-toto.io/Statement/v0.1"}',
                                 {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"})
    config = layout.add_bytes(image.OCI_CONFIG, b'{"architecture": "unknown", "os": "unknown"}')
    digest = layout.add_manifest(config, [statement], platform={"os": "unknown", "architecture": "unknown"})
    layout.descriptors[-1] = with_fields(layout.descriptors[-1],
                                         annotations={"vnd.docker.reference.type": "attestation-manifest",
                                                      "vnd.docker.reference.digest": subject})
    return digest


def with_fields(descriptor: Descriptor, **fields: object) -> Descriptor:
    """The index entry with fields added or replaced (the layout writer lists manifests without them)."""
    return Descriptor.model_validate({**descriptor.model_dump(by_alias=True, exclude_unset=True), **fields})


@pytest.mark.parametrize("marked", [False, True])
def test_artifact_index_without_platforms_picks_the_model(registry, tmp_path, cache_dir, marked):
    source = write_model(tmp_path / "src", shards=2)
    root = tmp_path / "artifact-index"
    if marked:  # a plain image sits beside the model: only the model's artifactType tells them apart
        other = LayoutWriter(root)
        add_image(other, [files_of(write_model(tmp_path / "decoy", shards=1, seed=9), "")])
    model_digest = pack_dmr(source, root)
    layout = LayoutWriter(root)  # adds to the index.json there
    if marked:
        layout.descriptors = [with_fields(d, artifactType="application/vnd.docker.ai.model.config.v0.2+json")
                              if d.digest == model_digest else d for d in layout.descriptors]
    add_signature(layout, model_digest)
    add_attestation(layout, model_digest)
    layout.write_index()
    reference = f"{registry.host}/acme/signed:v1"
    Crane().run("push", str(root), reference, options=["--index"])
    for extra in ((), ("--platform", "linux/arm64")):  # no child names a platform: --platform does not matter
        result = fetch(reference, cache_dir, *extra)
        assert result["digest"] == model_digest and result["format"] == "dmr-v0.2"
        assert tree_bytes(Path(str(result["path"]))) == tree_bytes(source)


def test_artifact_index_with_two_candidates_fails_listing_the_children(registry, tmp_path, cache_dir):
    root = tmp_path / "ambiguous"
    first = pack_dmr(write_model(tmp_path / "one", shards=1, seed=1), root)
    second = pack_dmr(write_model(tmp_path / "two", shards=1, seed=2), root)
    layout = LayoutWriter(root)  # adds to the index.json there
    add_signature(layout, first)
    layout.write_index()
    reference = f"{registry.host}/acme/ambiguous:v1"
    Crane().run("push", str(root), reference, options=["--index"])
    line = fetch_fails(reference, cache_dir)
    assert "no model artifact" in line and first[:19] in line and second[:19] in line and COSIGN in line, line
    assert "@sha256:" in line
    assert registry.blob_downloads() == []


def descriptor(digest_seed: str, **fields: object) -> dict[str, object]:
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256_digest(digest_seed.encode()), "size": 100, **fields}


def test_select_child_rules():
    def index(*children: dict[str, object]) -> Index:
        return Index.model_validate({"schemaVersion": 2, "manifests": list(children)})

    amd = descriptor("amd", platform={"os": "linux", "architecture": "amd64"})
    arm = descriptor("arm", platform={"os": "linux", "architecture": "arm64", "variant": "v8"})
    attestation = descriptor("att", platform={"os": "unknown", "architecture": "unknown"})
    modelpack = descriptor("mp", artifactType="application/vnd.cncf.model.manifest.v1+json")
    kit = descriptor("kit", artifactType="application/vnd.kitops.modelkit.manifest.v1+json")
    plain = descriptor("plain")
    signature = descriptor("sig", artifactType=COSIGN)
    sbom = descriptor("sbom", artifactType="application/spdx+json")
    annotated = descriptor("ann", annotations={"org.cncf.model.name": "llama"})

    def pick(wanted: str | None, *children: dict[str, object]) -> str:
        return select_child(index(*children), wanted).digest

    assert pick("linux/arm64", amd, arm) == arm["digest"]
    assert pick("linux/arm64/v8", amd, arm) == arm["digest"]
    assert pick("linux/amd64", attestation, amd, arm) == amd["digest"]
    assert pick(None, plain) == plain["digest"]  # a lone child, whatever it is
    assert pick("linux/arm64", attestation, signature, modelpack) == modelpack["digest"]
    assert pick(None, plain, signature, sbom, kit) == kit["digest"]
    assert pick(None, annotated, plain) == annotated["digest"]
    assert pick(None, signature, plain, attestation) == plain["digest"]
    with pytest.raises(errors.NotFoundError, match="no manifest for platform linux/s390x"):
        pick("linux/s390x", amd, arm, plain)
    with pytest.raises(errors.NotFoundError, match="no model artifact"):
        pick(None, signature, sbom, attestation)
    with pytest.raises(errors.UnsupportedFormatError, match="2 model artifacts") as info:
        pick(None, modelpack, kit, signature)
    assert "application/vnd.kitops.modelkit.manifest.v1+json" in info.value.cause


def test_recognisers_claim_only_their_own_manifests():
    def manifest(config_type: str, *layer_types: str, artifact_type: str | None = None) -> Manifest:
        layers = [{"mediaType": kind, "digest": sha256_digest(kind.encode()), "size": 1} for kind in layer_types]
        return Manifest.model_validate({
            "schemaVersion": 2, "artifactType": artifact_type, "layers": layers,
            "config": {"mediaType": config_type, "digest": sha256_digest(b"{}"), "size": 2}})

    assert image.recognise(manifest(image.OCI_CONFIG, OCI_GZIP, artifact_type="application/vnd.example"), b"{}") is None
    assert image.recognise(manifest("application/vnd.example.config", OCI_GZIP), b"{}") is None
    assert image.recognise(manifest(image.DOCKER_CONFIG, DOCKER_GZIP), b"{}") is not None
    assert ollama.recognise(manifest(image.DOCKER_CONFIG, ollama.TEMPLATE, DOCKER_GZIP), b"{}") is None
    with pytest.raises(errors.UnsupportedFormatError, match="Ollama model"):
        ollama.recognise(manifest(image.DOCKER_CONFIG, ollama.MODEL, ollama.PROJECTOR, ollama.SYSTEM), b"{}")
