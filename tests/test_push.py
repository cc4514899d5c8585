"""`oci-crane push DIR REF` against a real `crane registry serve`: round trips through `fetch`, the exact manifest and
config on the registry, determinism, other clients (oras, skopeo) reading our ModelPack artifact, and refusals."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from support.commands import run_cli, tool
from support.models import tree_bytes, write_model

from oci_crane_loader import errors
from oci_crane_loader import layout as layout_module
from oci_crane_loader.cache.store import Store
from oci_crane_loader.formats import modelpack_pack
from oci_crane_loader.formats.modelpack_pack import (
    _param_size,
    modelpack_media_type,
    modelpack_properties,
    pack_modelpack,
)
from oci_crane_loader.packing import SourceTimes, collect_files
from oci_crane_loader.push import _scratch_dir, push
from oci_crane_loader.registry.crane import Crane

EPOCH = 1700000000
EPOCH_TEXT = "2023-11-14T22:13:20Z"
ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
CONFIG = "application/vnd.cncf.model.config.v1+json"
WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
CODE = "application/vnd.cncf.model.code.v1.raw"
DOC = "application/vnd.cncf.model.doc.v1.raw"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def full_model(directory: Path) -> Path:
    """write_model's files (shards, index, config, tokenizer config, 1_Pooling/config.json) plus code and docs."""
    write_model(directory)
    (directory / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    (directory / "modeling_test.py").write_text("class TestModel:\n    pass\n")
    (directory / "README.md").write_text("# Test model\n")
    (directory / "LICENSE").write_text("Apache-2.0\n")
    return directory


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_cli(source: Path, reference: str, cache_dir: Path, *extra: str,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("push", str(source), reference, "--cache-dir", str(cache_dir), "--quiet", *extra, env=env)


def manifest_puts(registry) -> list[str]:
    return [line for line in registry.lines if re.search(r"\bPUT /v2/\S+/manifests/", line)]


def uploads(registry) -> list[str]:
    return [line for line in registry.lines if re.search(r"\b(PUT|POST|PATCH) /v2/", line)]


def tmp_leftovers(cache_dir: Path) -> list[str]:
    return [p.name for p in (cache_dir / "tmp").iterdir()] if (cache_dir / "tmp").exists() else []


# --- round trips ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("push_format", "fetched_format"), [("modelpack", "modelpack"), ("dmr", "dmr-v0.2")])
def test_push_then_fetch_gives_the_same_bytes(registry, tmp_path, cache_dir, push_format, fetched_format):
    source = full_model(tmp_path / "src")
    reference = f"{registry.host}/acme/tiny:v1"
    pushed = push_cli(source, reference, cache_dir, "--format", push_format)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stderr == ""
    pinned = pushed.stdout.strip()
    assert pushed.stdout == pinned + "\n"
    assert re.fullmatch(rf"{re.escape(registry.host)}/acme/tiny@sha256:[a-f0-9]{{64}}", pinned)
    assert tmp_leftovers(cache_dir) == []  # the layout is gone

    fetched = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--json")
    assert fetched.returncode == 0, fetched.stderr
    result = json.loads(fetched.stdout)
    assert result["format"] == fetched_format
    assert result["digest"] == pinned.split("@")[1]
    assert tree_bytes(Path(result["path"])) == tree_bytes(source)
    assert "1_Pooling/config.json" in result["files"]


def test_push_json_reports_the_pushed_files(registry, tmp_path, cache_dir):
    source = full_model(tmp_path / "src")
    done = push_cli(source, f"oci://{registry.host}/acme/tiny:v1", cache_dir, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["reference"] == f"{registry.host}/acme/tiny:v1"
    assert result["pinned"] == f"{registry.host}/acme/tiny@{result['digest']}"
    assert result["format"] == "modelpack"
    assert result["files"] == sorted(tree_bytes(source))
    assert result["bytes"] == sum(len(data) for data in tree_bytes(source).values())
    served = Crane().run("manifest", result["pinned"])
    assert sha256(served) == result["digest"]


# --- exactly what is pushed -----------------------------------------------------------------------------------------

def test_modelpack_manifest_and_config_are_exactly_as_specified(registry, tmp_path, cache_dir):
    source = full_model(tmp_path / "src")
    os.chmod(source / "modeling_test.py", 0o755)
    reference = f"{registry.host}/acme/tiny:v1"
    done = push_cli(source, reference, cache_dir, env={"SOURCE_DATE_EPOCH": str(EPOCH)})
    assert done.returncode == 0, done.stderr
    pinned = done.stdout.strip()
    raw = Crane().run("manifest", reference)
    assert sha256(raw) == pinned.split("@")[1]
    manifest = json.loads(raw)
    assert list(manifest) == ["schemaVersion", "mediaType", "artifactType", "config", "layers"]
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["artifactType"] == ARTIFACT_TYPE
    assert manifest["config"]["mediaType"] == CONFIG

    files = tree_bytes(source)
    expected_layers = [  # config, weights, code, docs; each group by path
        (WEIGHT_CONFIG, "1_Pooling/config.json"),
        (WEIGHT_CONFIG, "config.json"),
        (WEIGHT_CONFIG, "model.safetensors.index.json"),
        (WEIGHT_CONFIG, "tokenizer.json"),
        (WEIGHT_CONFIG, "tokenizer_config.json"),
        (WEIGHT, "model-00001-of-00002.safetensors"),
        (WEIGHT, "model-00002-of-00002.safetensors"),
        (CODE, "modeling_test.py"),
        (DOC, "LICENSE"),
        (DOC, "README.md"),
    ]
    layers = manifest["layers"]
    assert [(layer["mediaType"], layer["annotations"]["org.cncf.model.filepath"]) for layer in layers] == \
        expected_layers
    for layer, (_, name) in zip(layers, expected_layers, strict=True):
        assert set(layer) == {"mediaType", "digest", "size", "annotations"}
        # uncompressed: the blob is the file itself
        assert layer["digest"] == sha256(files[name]) and layer["size"] == len(files[name])
        annotations = layer["annotations"]
        assert list(annotations) == sorted(annotations)  # as Go marshals a map
        assert set(annotations) == {"org.cncf.model.filepath", "org.opencontainers.image.title",
                                    "org.cncf.model.file.metadata+json", "org.cncf.model.file.mediatype.untested"}
        assert annotations["org.opencontainers.image.title"] == name
        assert annotations["org.cncf.model.file.mediatype.untested"] == "false"
        metadata_json = annotations["org.cncf.model.file.metadata+json"]
        metadata = json.loads(metadata_json)
        assert list(metadata) == ["name", "mode", "uid", "gid", "size", "mtime", "typeflag"]
        mode = 0o755 if name == "modeling_test.py" else (source / name).stat().st_mode & 0o777
        assert metadata == {"name": Path(name).name, "mode": mode, "uid": 0, "gid": 0, "size": len(files[name]),
                            "mtime": EPOCH_TEXT, "typeflag": 0}
        assert " " not in metadata_json

    config_raw = Crane().run("blob", f"{registry.host}/acme/tiny@{manifest['config']['digest']}")
    assert sha256(config_raw) == manifest["config"]["digest"]
    assert len(config_raw) == manifest["config"]["size"]
    assert json.loads(config_raw) == {
        "descriptor": {"createdAt": EPOCH_TEXT, "name": "src"},
        "modelfs": {"type": "layers", "diffIds": [layer["digest"] for layer in layers]},
        # 2 shards x (16*8 fp16 + 8 fp32 + 5 int64) = 282 parameters; fp16 and fp32 floats: mixed
        "config": {"architecture": "TestModel", "format": "safetensors", "paramSize": "0.3K", "precision": "mixed"},
    }
    assert list(json.loads(config_raw)) == ["descriptor", "modelfs", "config"]  # Go's v1.Model field order


def test_dmr_push_is_a_v02_artifact_with_a_path_per_layer(registry, tmp_path, cache_dir):
    source = full_model(tmp_path / "src")
    done = push_cli(source, f"{registry.host}/acme/tiny:dmr", cache_dir, "--format", "dmr")
    assert done.returncode == 0, done.stderr
    manifest = json.loads(Crane().run("manifest", f"{registry.host}/acme/tiny:dmr"))
    assert manifest["config"]["mediaType"] == "application/vnd.docker.ai.model.config.v0.2+json"
    files = tree_bytes(source)
    paths = {layer["annotations"]["org.cncf.model.filepath"]: layer for layer in manifest["layers"]}
    assert sorted(paths) == sorted(files)
    for name, layer in paths.items():
        assert layer["digest"] == sha256(files[name])
        expected = "application/vnd.docker.ai.safetensors" if name.endswith(".safetensors") \
            else "application/vnd.docker.ai.model.file"
        assert layer["mediaType"] == expected


def test_weights_are_hard_linked_into_the_layout_not_copied(tmp_path):
    source = full_model(tmp_path / "src")
    layout = tmp_path / "layout"
    pack_modelpack(source, layout)
    shard = source / "model-00001-of-00002.safetensors"
    blob = layout / "blobs" / "sha256" / hashlib.sha256(shard.read_bytes()).hexdigest()
    assert blob.stat().st_ino == shard.stat().st_ino


# --- determinism ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("push_format", ["modelpack", "dmr"])
def test_pushing_twice_gives_the_same_digest(registry, tmp_path, cache_dir, push_format):
    source = full_model(tmp_path / "src")
    first = push_cli(source, f"{registry.host}/acme/tiny:one", cache_dir, "--format", push_format)
    time.sleep(1.1)  # a clock-based createdAt would differ now
    second = push_cli(source, f"{registry.host}/acme/tiny:two", cache_dir, "--format", push_format)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.split("@")[1] == second.stdout.split("@")[1]


def test_same_files_elsewhere_with_source_date_epoch_give_the_same_digest(registry, tmp_path, cache_dir):
    source = full_model(tmp_path / "a" / "model")
    copy = tmp_path / "b" / "model"
    shutil.copytree(source, copy)
    for path in copy.rglob("*"):
        os.utime(path, (EPOCH + 5000, EPOCH + 5000))  # different mtimes: SOURCE_DATE_EPOCH overrides them
    env = {"SOURCE_DATE_EPOCH": str(EPOCH)}
    first = push_cli(source, f"{registry.host}/acme/tiny:a", cache_dir, env=env)
    second = push_cli(copy, f"{registry.host}/acme/tiny:b", cache_dir, env=env)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.split("@")[1] == second.stdout.split("@")[1]


# --- what is packed from the directory ------------------------------------------------------------------------------

def test_hidden_files_are_skipped_and_inner_symlinks_followed(registry, tmp_path, cache_dir):
    source = full_model(tmp_path / "src")
    (source / ".git").mkdir()
    (source / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (source / ".cache" / "huggingface").mkdir(parents=True)
    (source / ".cache" / "huggingface" / "x.lock").write_text("")
    (source / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (source / "__pycache__").mkdir()
    (source / "__pycache__" / "modeling_test.cpython-311.pyc").write_bytes(b"\x00")
    (source / "generation_config.json").symlink_to("config.json")
    expected = {name: data for name, data in tree_bytes(source).items()
                if not name.startswith((".", "__pycache__"))}
    assert "generation_config.json" in expected
    assert collect_files(source) == sorted(expected)
    done = push_cli(source, f"{registry.host}/acme/tiny:v1", cache_dir)
    assert done.returncode == 0, done.stderr
    fetched = run_cli("fetch", f"{registry.host}/acme/tiny:v1", "--cache-dir", str(cache_dir), "-q")
    assert fetched.returncode == 0, fetched.stderr
    assert tree_bytes(Path(fetched.stdout.strip())) == expected


def test_symlinked_directories_inside_are_followed_and_broken_or_looping_links_refused(tmp_path):
    source = write_model(tmp_path / "src", shards=1)
    (source / "pooling").symlink_to("1_Pooling", target_is_directory=True)
    assert "pooling/config.json" in collect_files(source) and "1_Pooling/config.json" in collect_files(source)
    (source / "loop").symlink_to(".", target_is_directory=True)
    with pytest.raises(errors.InvalidModelError, match="symlink loop"):
        collect_files(source)
    (source / "loop").unlink()
    (source / "gone.json").symlink_to("missing.json")
    with pytest.raises(errors.InvalidModelError, match="broken symlink"):
        collect_files(source)


@pytest.mark.parametrize(("name", "size", "media_type", "untested"), [
    ("model.safetensors", 10, WEIGHT, False),
    ("pytorch_model.bin", 10, WEIGHT, False),
    ("vocab.txt", 10, WEIGHT_CONFIG, False),
    ("merges.txt", 10, WEIGHT_CONFIG, False),
    ("tokenizer.model", 10, WEIGHT_CONFIG, False),
    ("chat_template.jinja", 10, WEIGHT_CONFIG, False),
    ("sub/dir/generation_config.json", 10, WEIGHT_CONFIG, False),
    ("modeling_x.py", 10, CODE, False),
    ("LICENSE.txt", 10, DOC, False),
    ("README", 10, DOC, False),
    ("docs/guide.md", 10, DOC, False),
    ("weird.xyz", 10, WEIGHT_CONFIG, True),
    ("weird.xyz", 200 << 20, WEIGHT, True),
])
def test_modelpack_media_types(name, size, media_type, untested):
    assert modelpack_media_type(name, size) == (media_type, untested)


def test_param_size_and_precision():
    assert _param_size(7_241_732_096) == "7.2B"
    assert _param_size(8_000_000_000) == "8B"
    assert _param_size(124_439_808) == "124.4M"
    assert _param_size(1_000_000_000_000) == "1T"
    assert _param_size(282) == "0.3K"


def test_declared_dtype_names_the_precision_and_quantized_models_have_no_param_size(tmp_path):
    source = write_model(tmp_path / "src", shards=1)
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "torch_dtype": "float16"}))
    properties = modelpack_properties(source, ["model.safetensors"])
    assert properties["precision"] == "fp16" and properties["paramSize"] == "0.1K"
    (source / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "gptq"}}))
    properties = modelpack_properties(source, ["model.safetensors"])
    assert properties["quantization"] == "gptq" and "paramSize" not in properties


# --- other clients read what we push --------------------------------------------------------------------------------

def test_oras_pulls_our_modelpack_push_by_title(registry, tmp_path, cache_dir):
    oras = tool("oras")
    if oras is None:
        pytest.skip("oras is not installed: run bash bin/install-oras")
    source = full_model(tmp_path / "src")
    done = push_cli(source, f"{registry.host}/acme/tiny:v1", cache_dir)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "oras-out"
    pulled = subprocess.run([oras, "pull", "--plain-http", f"{registry.host}/acme/tiny:v1", "-o", str(out)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert pulled.returncode == 0, pulled.stderr
    assert tree_bytes(out) == tree_bytes(source)


@pytest.mark.parametrize("transport", ["oci", "dir"])
def test_skopeo_copies_our_modelpack_push(registry, tmp_path, cache_dir, transport):
    skopeo = tool("skopeo")
    if skopeo is None:
        pytest.skip("skopeo is not installed: run bash bin/install-test-deps")
    source = full_model(tmp_path / "src")
    done = push_cli(source, f"{registry.host}/acme/tiny:v1", cache_dir)
    assert done.returncode == 0, done.stderr
    digest = done.stdout.strip().split("@")[1]
    out = tmp_path / f"skopeo-{transport}"
    destination = f"oci:{out}:v1" if transport == "oci" else f"dir:{out}"
    copied = subprocess.run([skopeo, "copy", "--src-tls-verify=false", f"docker://{registry.host}/acme/tiny:v1",
                             destination], capture_output=True, text=True, timeout=120, check=False)
    assert copied.returncode == 0, copied.stderr
    if transport == "oci":
        blobs = out / "blobs" / "sha256"
        index = json.loads((out / "index.json").read_text())
        assert [entry["digest"] for entry in index["manifests"]] == [digest]  # the manifest was not rewritten
        manifest_bytes = (blobs / digest.split(":")[1]).read_bytes()
    else:
        blobs = out
        manifest_bytes = (out / "manifest.json").read_bytes()
    assert sha256(manifest_bytes) == digest
    for name, data in tree_bytes(source).items():
        assert (blobs / hashlib.sha256(data).hexdigest()).read_bytes() == data, name


# --- refusals -------------------------------------------------------------------------------------------------------

def _no_safetensors(tmp_path: Path, host: str) -> tuple[str, str, str]:
    source = write_model(tmp_path / "src", shards=1)
    (source / "model.safetensors").unlink()
    return str(source), f"{host}/acme/tiny:v1", "has no .safetensors files"


def _bad_header(tmp_path: Path, host: str) -> tuple[str, str, str]:
    source = write_model(tmp_path / "src", shards=1)
    data = (source / "model.safetensors").read_bytes()
    (source / "model.safetensors").write_bytes(data[:-8])  # truncated: offsets point past the end
    return str(source), f"{host}/acme/tiny:v1", "model.safetensors"


def _missing_dir(tmp_path: Path, host: str) -> tuple[str, str, str]:
    return str(tmp_path / "nowhere"), f"{host}/acme/tiny:v1", "does not exist"


def _digest_reference(tmp_path: Path, host: str) -> tuple[str, str, str]:
    source = write_model(tmp_path / "src", shards=1)
    return str(source), f"{host}/acme/tiny@sha256:{'a' * 64}", "a push needs a tag"


def _no_config(tmp_path: Path, host: str) -> tuple[str, str, str]:
    source = write_model(tmp_path / "src", shards=1)
    (source / "config.json").unlink()
    return str(source), f"{host}/acme/tiny:v1", "has no config.json"


def _escaping_symlink(tmp_path: Path, host: str) -> tuple[str, str, str]:
    source = write_model(tmp_path / "src", shards=1)
    (tmp_path / "secret.txt").write_text("not part of the model")
    (source / "notes.txt").symlink_to(tmp_path / "secret.txt")
    return str(source), f"{host}/acme/tiny:v1", "outside the model directory"


def _bad_reference(tmp_path: Path, host: str) -> tuple[str, str, str]:
    source = write_model(tmp_path / "src", shards=1)
    return str(source), f"{host}/Acme/UPPER:v1", "invalid reference"


@pytest.mark.parametrize("case", [_no_safetensors, _bad_header, _missing_dir, _digest_reference, _no_config,
                                  _escaping_symlink, _bad_reference], ids=lambda case: case.__name__.strip("_"))
def test_refusals_are_one_line_and_push_nothing(registry, tmp_path, cache_dir, case):
    directory, reference, expected = case(tmp_path, registry.host)
    done = run_cli("push", directory, reference, "--cache-dir", str(cache_dir), "--quiet")
    assert done.returncode == 1, done.stdout
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and " -- fix: " in lines[0] and expected in lines[0], lines[0]
    assert manifest_puts(registry) == [] and uploads(registry) == [], registry.log()
    assert tmp_leftovers(cache_dir) == []
    debug = run_cli("push", directory, reference, "--cache-dir", str(cache_dir), "--debug", "--quiet")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_registry_failure_is_one_line_and_leaves_no_layout(tmp_path, cache_dir, crane_binary):
    source = write_model(tmp_path / "src", shards=1)
    done = run_cli("push", str(source), "127.0.0.1:1/acme/tiny:v1", "--cache-dir", str(cache_dir), "--quiet")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the registry" in lines[0] and "fix:" in lines[0], done.stderr
    assert tmp_leftovers(cache_dir) == []
    assert sorted(tree_bytes(source)) == sorted(collect_files(source))  # the model itself is untouched


def test_python_api_refuses_a_digest_reference_before_packing(tmp_path, cache_dir):
    source = write_model(tmp_path / "src", shards=1)
    with pytest.raises(errors.InvalidReferenceError, match="needs a tag"):
        push(source, f"127.0.0.1:1/acme/tiny@sha256:{'b' * 64}", cache_dir=cache_dir)
    with pytest.raises(errors.OciCraneError, match="unknown format"):
        push(source, "127.0.0.1:1/acme/tiny:v1", format="gguf", cache_dir=cache_dir)


# --- a file swapped for a symlink while it is packed (docs/security.md) ---------------------------------------------

def _swap_for_symlink(path: Path, target: Path) -> bytes:
    """What an attacker does between our check and our read: the file becomes a symlink out of the directory."""
    original = path.read_bytes()
    moved = path.with_name(path.name + ".moved")
    path.rename(moved)
    path.symlink_to(target)
    return original


def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "home" / ".docker" / "config.json"
    secret.parent.mkdir(parents=True)
    secret.write_text('{"auths": {"registry.example": {"auth": "c2VjcmV0"}}}')
    return secret


def _swap_once_collected(monkeypatch: pytest.MonkeyPatch, path: Path, target: Path) -> None:
    """The swap, injected where pack_modelpack has collected (and checked) the files and not yet opened them."""
    real_read = SourceTimes.read

    def swap_then_read(model_dir: Path, files: list[str]) -> SourceTimes:
        _swap_for_symlink(path, target)
        return real_read(model_dir, files)

    monkeypatch.setattr(modelpack_pack.SourceTimes, "read", swap_then_read)


def test_a_file_swapped_for_a_symlink_after_collection_is_refused(tmp_path, monkeypatch):
    """Between collect_files (the symlink check) and the read: the name now leads outside, so it is refused."""
    source, secret = full_model(tmp_path / "src"), _secret(tmp_path)
    _swap_once_collected(monkeypatch, source / "config.json", secret)
    layout = tmp_path / "layout"
    with pytest.raises(errors.InvalidModelError, match="changed after it was checked"):
        pack_modelpack(source, layout)
    assert all(blob.read_bytes() != secret.read_bytes() for blob in (layout / "blobs" / "sha256").iterdir())


@pytest.mark.parametrize("linked", [True, False], ids=["hard-linked", "copied"])
def test_a_file_swapped_after_it_was_opened_is_packed_as_it_was(tmp_path, monkeypatch, linked):
    """Between the open and the link (or copy) into the layout: both work from the descriptor, so the layout gets
    the original bytes, never the symlink's target."""
    source, secret = full_model(tmp_path / "src"), _secret(tmp_path)
    shard = source / "model-00001-of-00002.safetensors"
    swapped: list[bytes] = []
    real_link = layout_module.link_fd

    def swap_then_link(fd, shown, target):
        if Path(shown).name == shard.name:
            swapped.append(_swap_for_symlink(shard, secret))
            if not linked:
                raise OSError(errno.EXDEV, "pretend another file system")
        return real_link(fd, shown, target)

    monkeypatch.setattr(layout_module, "link_fd", swap_then_link)
    layout = tmp_path / "layout"
    pack_modelpack(source, layout)
    blobs = {blob.read_bytes() for blob in (layout / "blobs" / "sha256").iterdir()}
    assert swapped and swapped[0] in blobs and secret.read_bytes() not in blobs


def test_push_never_uploads_the_target_of_a_file_swapped_while_packing(registry, tmp_path, cache_dir, monkeypatch):
    """End to end through the registry: the swap between validation and packing fails the push in one error and
    nothing of the secret, nor any manifest, reaches the registry."""
    source, secret = full_model(tmp_path / "src"), _secret(tmp_path)
    _swap_once_collected(monkeypatch, source / "tokenizer.json", secret)
    with pytest.raises(errors.InvalidModelError, match=r"tokenizer.json is now a symlink to .*outside the model"):
        push(source, f"{registry.host}/acme/swapped:v1", cache_dir=cache_dir, insecure=True)
    assert manifest_puts(registry) == [] and uploads(registry) == []
    assert tmp_leftovers(cache_dir) == []


@pytest.mark.parametrize(("mode", "in_cache"), [(0o755, True), (0o2775, False), (0o3775, True)])
def test_push_builds_its_layout_in_the_cache_only_where_no_one_else_can_swap_it(tmp_path, cache_dir, mode, in_cache):
    """crane pushes whatever the layout directory holds: in a cache shared by a group (2775) a member could swap
    ours for theirs, so the layout goes to the system temp dir (sticky) or beside the model instead."""
    source = write_model(tmp_path / "src", shards=1)
    store = Store(cache_dir)
    (store.root / "tmp").chmod(mode)
    scratch = _scratch_dir(source, store)
    try:
        assert scratch.is_relative_to(store.root) is in_cache
    finally:
        scratch.rmdir()
