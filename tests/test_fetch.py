"""End to end against a real `crane registry serve` on 127.0.0.1: push with crane, fetch through the cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.cache import blob_names, model_dirs, scratch
from support.commands import REPO_ROOT, run_cli
from support.models import push_layout, push_model, tree_bytes, write_model

from oci_crane_loader import errors
from oci_crane_loader.cache.store import Store
from oci_crane_loader.fetching import FetchResult
from oci_crane_loader.fetching import fetch as fetch_model
from oci_crane_loader.formats import dmr
from oci_crane_loader.formats.dmr_pack import pack_dmr
from oci_crane_loader.layout import LayoutWriter
from oci_crane_loader.oci import OCI_MANIFEST
from oci_crane_loader.options import fetch_options
from oci_crane_loader.packing import deterministic_tar
from oci_crane_loader.pull import Puller, open_puller
from oci_crane_loader.registry.crane import Crane
from tests.support.scripted_registry import ScriptedRegistry, digest, serve


def puller(cache_dir: Path, **options: object) -> Puller:
    return open_puller(fetch_options(cache_dir=cache_dir, **options))  # type: ignore[arg-type]


def fetched(cache_dir: Path, reference: str, **options: object) -> FetchResult:
    """A fetch through the fetch service, as the command line and Python's fetch() make it."""
    return fetch_model(fetch_options(cache_dir=cache_dir, **options), reference)  # type: ignore[arg-type]


def leftovers(cache_dir: Path) -> list[str]:
    return [p.name for p in scratch(cache_dir)]


@pytest.mark.parametrize("version", ["v0.2", "v0.1"])
def test_fetch_cli_json_matches_source_byte_for_byte(registry, tmp_path, cache_dir, version):
    source = write_model(tmp_path / "src", shards=3)
    pinned = push_model(source, f"{registry.host}/acme/tiny:v1", tmp_path, version=version)
    done = run_cli("fetch", f"oci://{registry.host}/acme/tiny:v1", "--cache-dir", str(cache_dir), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    path = Path(result["path"])
    assert tree_bytes(path) == tree_bytes(source)
    assert result["reference"] == f"{registry.host}/acme/tiny:v1"
    assert result["digest"] == pinned.split("@")[1]
    assert result["format"] == f"dmr-{version}"
    assert sorted(result["files"]) == sorted(tree_bytes(source))
    assert result["bytes"] == sum(len(b) for b in tree_bytes(source).values())
    assert path.is_relative_to(cache_dir.resolve())
    assert leftovers(cache_dir) == []


def test_fetch_prints_only_the_path_and_second_fetch_downloads_no_blob(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src")
    push_model(source, f"{registry.host}/acme/tiny:v1", tmp_path)
    first = run_cli("fetch", f"{registry.host}/acme/tiny:v1", "--cache-dir", str(cache_dir))
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("\n") == 1 and Path(first.stdout.strip()).is_dir()
    blob_requests = len(registry.blob_downloads())
    assert blob_requests == len(tree_bytes(source)) + 1  # config blob + one per file
    second = run_cli("fetch", f"{registry.host}/acme/tiny:v1", "--cache-dir", str(cache_dir), "--quiet")
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert second.stderr == ""
    assert len(registry.blob_downloads()) == blob_requests, registry.log()


def test_model_files_are_hard_links_to_shared_read_only_blobs(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src")
    push_model(source, f"{registry.host}/acme/tiny:v1", tmp_path)
    push_model(source, f"{registry.host}/other/copy:latest", tmp_path, version="v0.1")
    first = fetched(cache_dir, f"{registry.host}/acme/tiny:v1")
    requests_after_first = len(registry.blob_downloads())
    second = fetched(cache_dir, f"{registry.host}/other/copy")
    assert first.path != second.path
    store = Store(cache_dir)
    shard = "model-00001-of-00002.safetensors"
    blob = next(p for p in store.root.joinpath("blobs/sha256").iterdir()
                if p.stat().st_ino == (first.path / shard).stat().st_ino)
    assert (second.path / shard).stat().st_ino == blob.stat().st_ino  # stored once, linked twice
    assert blob.stat().st_nlink == 3
    assert blob.stat().st_mode & 0o222 == 0  # read-only for everyone (root ignores it: see cache verify)
    # Only the second artifact's config and config tar were new: the shards came from the cache.
    assert len(registry.blob_downloads()) - requests_after_first == 2


def test_v01_shards_without_paths_are_named_from_the_index_by_their_tensors(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src", shards=3)
    layout = LayoutWriter(tmp_path / "layout")
    shards = sorted(source.glob("*.safetensors"), reverse=True)  # manifest order must not decide the names
    layers = [layout.add_file(dmr.SAFETENSORS, shard) for shard in shards]
    others = [str(p.relative_to(source)) for p in source.rglob("*") if p.is_file() and p.suffix != ".safetensors"]
    layers.append(layout.add_bytes(dmr.VLLM_CONFIG_TAR, deterministic_tar(source, others)))
    config = layout.add_bytes(dmr.CONFIG_V01, json.dumps({"config": {"format": "safetensors"}}).encode())
    layout.add_manifest(config, layers)
    push_layout(layout.root, f"{registry.host}/acme/unnamed:v1")
    result = fetched(cache_dir, f"{registry.host}/acme/unnamed:v1")
    assert tree_bytes(result.path) == tree_bytes(source)


def test_single_unnamed_shard_becomes_model_safetensors(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src", shards=1)
    push_model(source, f"{registry.host}/acme/one:v1", tmp_path, version="v0.1", annotate_shards=False)
    result = fetched(cache_dir, f"{registry.host}/acme/one:v1")
    assert tree_bytes(result.path) == tree_bytes(source)


def test_offline_uses_the_cache_alone(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src")
    push_model(source, f"{registry.host}/acme/tiny:v1", tmp_path)
    online = run_cli("fetch", f"{registry.host}/acme/tiny:v1", "--cache-dir", str(cache_dir))
    assert online.returncode == 0, online.stderr
    requests = len(registry.lines)
    offline = run_cli("fetch", f"{registry.host}/acme/tiny:v1", "--cache-dir", str(cache_dir), "--offline",
                      env={"OCI_CRANE_BINARY": "/nonexistent/crane"})  # proves crane is never started
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout == online.stdout
    assert len(registry.lines) == requests
    missing = run_cli("fetch", f"{registry.host}/acme/other:v1", "--cache-dir", str(cache_dir), "--offline")
    assert missing.returncode == 1
    assert "not in the cache" in missing.stderr and "without --offline" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_offline_rebuilds_a_deleted_model_dir_from_cached_blobs(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src")
    push_model(source, f"{registry.host}/acme/tiny:v1", tmp_path)
    first = fetched(cache_dir, f"{registry.host}/acme/tiny:v1")
    subprocess.run(["rm", "-rf", str(first.path)], check=True)
    again = fetched(cache_dir, f"{registry.host}/acme/tiny:v1", offline=True)
    assert tree_bytes(again.path) == tree_bytes(source)


def test_cache_dir_from_environment(registry, tmp_path):
    source = write_model(tmp_path / "src")
    push_model(source, f"{registry.host}/acme/tiny:v1", tmp_path)
    env_cache = tmp_path / "env-cache"
    done = run_cli("fetch", f"{registry.host}/acme/tiny:v1", "-q", env={"OCI_CRANE_LOADER_CACHE": str(env_cache)})
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_relative_to(env_cache.resolve())


def test_corrupted_registry_blob_is_an_integrity_error_and_leaves_nothing(cache_dir, crane_binary):
    """The registry answers the weight blob with other bytes of the same size (a real registry refuses to serve a
    blob damaged on its disk, so a scripted one tampers in flight)."""
    weights = b"\x01" * 4096
    tampered = b"\x02" * 4096
    config = json.dumps({"config": {"format": "safetensors"}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": dmr.CONFIG_V02, "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": dmr.SAFETENSORS, "digest": digest(weights), "size": len(weights),
                    "annotations": {dmr.FILEPATH: "model.safetensors"}}],
    }).encode()

    class Tampering(ScriptedRegistry):
        def do_GET(self) -> None:
            if self.path == "/v2/":
                self.send_document(b"{}", "application/json")
            elif "/manifests/" in self.path:
                self.send_document(manifest, OCI_MANIFEST)
            elif self.path.endswith(digest(config)):
                self.send_document(config, "application/octet-stream")
            elif self.path.endswith(digest(weights)):
                self.send_response(200)
                self.send_header("Content-Length", str(len(tampered)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(tampered)
            else:
                self.send_error(404)

    with serve(Tampering) as host:
        done = run_cli("fetch", f"{host}/acme/tiny:v1", "--cache-dir", str(cache_dir), "-q")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: downloaded bytes do not match their digest: "), lines
    assert "fix: the registry served bytes that do not match the manifest" in lines[0]
    assert not Store(cache_dir).blob_path(digest(weights)).exists()
    assert model_dirs(cache_dir) == []
    assert scratch(cache_dir) == []


def test_bad_safetensors_header_is_refused_before_the_directory_exists(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src", shards=1)
    data = bytearray((source / "model.safetensors").read_bytes())
    (source / "model.safetensors").write_bytes(bytes(data[:-8]))  # truncated: offsets point past the end
    push_model(source, f"{registry.host}/acme/broken:v1", tmp_path)
    done = run_cli("fetch", f"{registry.host}/acme/broken:v1", "--cache-dir", str(cache_dir))
    assert done.returncode == 1
    assert "model.safetensors" in done.stderr and "Traceback" not in done.stderr
    assert model_dirs(cache_dir) == []
    assert leftovers(cache_dir) == []


def test_escaping_tar_entry_is_refused_and_nothing_is_written_outside(registry, tmp_path, cache_dir):
    import io
    import tarfile

    source = write_model(tmp_path / "src", shards=1)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        payload = b"owned"
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    layout = LayoutWriter(tmp_path / "layout")
    layers = [layout.add_file(dmr.SAFETENSORS, source / "model.safetensors"),
              layout.add_bytes(dmr.VLLM_CONFIG_TAR, buffer.getvalue())]
    layout.add_manifest(layout.add_bytes(dmr.CONFIG_V01, b"{}"), layers)
    push_layout(layout.root, f"{registry.host}/acme/evil:v1")
    with pytest.raises(errors.InvalidModelError, match="escapes the model directory"):
        fetched(cache_dir, f"{registry.host}/acme/evil:v1")
    assert not list(tmp_path.rglob("escaped.txt"))
    assert leftovers(cache_dir) == []


def test_tar_links_are_not_extracted(registry, tmp_path, cache_dir):
    import io
    import tarfile

    source = write_model(tmp_path / "src", shards=1)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("config.json")
        data = (source / "config.json").read_bytes()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    layout = LayoutWriter(tmp_path / "layout")
    layers = [layout.add_file(dmr.SAFETENSORS, source / "model.safetensors"),
              layout.add_bytes(dmr.VLLM_CONFIG_TAR, buffer.getvalue())]
    layout.add_manifest(layout.add_bytes(dmr.CONFIG_V01, b"{}"), layers)
    push_layout(layout.root, f"{registry.host}/acme/links:v1")
    result = fetched(cache_dir, f"{registry.host}/acme/links:v1")
    assert sorted(result.files) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing-tag", "not found"),
        ("down", "cannot reach the registry"),
        ("bad-ref", "invalid reference"),
        ("plain-image", "no config.json"),  # a container image, but no model in it
        ("gguf", "GGUF"),
    ],
)
def test_errors_are_one_clear_line(registry, tmp_path, cache_dir, case, expected):
    if case == "plain-image":
        (tmp_path / "f.txt").write_text("x")
        subprocess.run(["tar", "cf", str(tmp_path / "f.tar"), "-C", str(tmp_path), "f.txt"], check=True)
        Crane().run("append", options=["--new_layer", str(tmp_path / "f.tar"), "-t", f"{registry.host}/acme/image:v1"])
        reference = f"{registry.host}/acme/image:v1"
    elif case == "gguf":
        layout = LayoutWriter(tmp_path / "layout")
        layers = [layout.add_bytes(dmr.GGUF, b"GGUF\x03\x00\x00\x00")]
        layout.add_manifest(layout.add_bytes(dmr.CONFIG_V01, b'{"config":{"format":"gguf"}}'), layers)
        push_layout(layout.root, f"{registry.host}/ai/smollm:q4")
        reference = f"{registry.host}/ai/smollm:q4"
    else:
        reference = {"missing-tag": f"{registry.host}/acme/nothing:v9", "down": "127.0.0.1:1/acme/tiny:v1",
                     "bad-ref": "Acme/UPPER:v1"}[case]
    done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--quiet")  # no progress lines
    assert done.returncode == 1, done.stdout
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and expected in lines[0] and "fix:" in lines[0]
    debug = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_inspect_lists_files_without_downloading_weights(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src")
    pinned = push_model(source, f"{registry.host}/acme/tiny:v1", tmp_path, version="v0.1")
    done = run_cli("inspect", f"{registry.host}/acme/tiny:v1", "--json", "--cache-dir", str(cache_dir))
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["digest"] == pinned.split("@")[1] and info["format"] == "dmr-v0.1"
    sizes = {entry["path"]: entry["size"] for entry in info["files"]}
    expected = {name: len(data) for name, data in tree_bytes(source).items()}
    assert sizes == expected
    assert not any(p.name.endswith(".safetensors") for p in cache_dir.rglob("*"))
    weights = [e for e in info["files"] if e["media_type"] == dmr.SAFETENSORS]
    cached = set(blob_names(cache_dir))
    assert weights and not any(e["digest"].split(":")[1] in cached for e in weights)
    human = run_cli("inspect", f"{registry.host}/acme/tiny:v1", "--cache-dir", str(cache_dir))
    assert human.returncode == 0 and "dmr-v0.1" in human.stdout and "config.json" in human.stdout


def test_concurrent_fetches_download_each_blob_once(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src", shards=4)
    push_model(source, f"{registry.host}/acme/tiny:v1", tmp_path)
    command = [sys.executable, "-m", "oci_crane_loader", "fetch", f"{registry.host}/acme/tiny:v1",
               "--cache-dir", str(cache_dir), "--jobs", "2", "-q"]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
                 for _ in range(3)]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    assert len({stdout for stdout, _ in outputs}) == 1
    fetched = registry.blob_downloads()
    assert len(fetched) == len(set(fetched)) == len(tree_bytes(source)) + 1, registry.log()
    assert tree_bytes(Path(outputs[0][0].strip())) == tree_bytes(source)


def test_image_index_picks_the_platform(registry, tmp_path, cache_dir):
    models = {arch: write_model(tmp_path / arch, seed=seed) for seed, arch in enumerate(("amd64", "arm64"))}
    layout = tmp_path / "multi-layout"
    for arch, model in models.items():
        pack_dmr(model, layout, platform={"os": "linux", "architecture": arch})
    Crane().run("push", str(layout), f"{registry.host}/acme/multi:latest", options=["--index"])
    for arch, model in models.items():
        result = fetched(cache_dir, f"{registry.host}/acme/multi", platform=f"linux/{arch}")
        assert tree_bytes(result.path) == tree_bytes(model)
        assert result.index_digest is not None and result.index_digest != result.digest
    with pytest.raises(errors.NotFoundError, match="no manifest for platform linux/s390x"):
        fetched(cache_dir, f"{registry.host}/acme/multi", platform="linux/s390x")


def test_a_model_directory_missing_a_file_is_built_again(registry, tmp_path, cache_dir, caplog):
    """A file deleted from a cached model (or config) directory: the full path notices it against the files the
    directory was built with (records/files/), says so in one warning and builds the directory again. A directory
    an older version built (nothing recorded) is checked against a fresh build and kept when whole."""
    source = write_model(tmp_path / "src", shards=1)
    reference = f"{registry.host}/acme/gone:v1"
    push_model(source, reference, tmp_path)
    path = fetched(cache_dir, reference).path
    (path / "model.safetensors").unlink()
    again = fetched(cache_dir, reference)
    assert again.path == path and tree_bytes(path) == tree_bytes(source) and "model.safetensors" in again.files
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"{path} lacks 1 file(s) it was built with (model.safetensors): built again" in warning

    for record in (cache_dir / "records" / "files").iterdir():  # as an older version left the cache
        record.unlink()
    inode = (path / "config.json").stat().st_ino
    assert fetched(cache_dir, reference).path == path and (path / "config.json").stat().st_ino == inode
    (path / "config.json").unlink()
    assert fetched(cache_dir, reference).path == path and tree_bytes(path) == tree_bytes(source)

    _, _, config_dir = puller(cache_dir).prepare(reference)  # vLLM's config directory: the same rule
    (config_dir / "tokenizer_config.json").unlink()
    assert puller(cache_dir).prepare(reference)[2] == config_dir
    assert (config_dir / "tokenizer_config.json").read_bytes() == (source / "tokenizer_config.json").read_bytes()
    assert run_cli("cache", "verify", "--cache-dir", str(cache_dir)).returncode == 0
