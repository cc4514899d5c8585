"""Hostile artifacts: whiteouts that name no file, decompression bombs, paths the filesystem cannot take, a model
without config.json. Each is refused with one OciCraneError, and nothing outside the model directory is touched."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest
from support.cache import model_dirs, scratch
from support.commands import run_cli
from support.models import push_layout, tree_bytes, write_model

from oci_crane_loader import errors
from oci_crane_loader.cache.store import Store
from oci_crane_loader.formats import Action, LayerPlan, Plan, dmr, modelpack, recognise
from oci_crane_loader.layout import LayoutWriter, canonical_json
from oci_crane_loader.materialize import RATIO_FLOOR, extract_tar, materialize
from oci_crane_loader.oci import Descriptor, Manifest, sha256_digest
from oci_crane_loader.settings import UnpackLimits, settings

MP = "application/vnd.cncf.model."


def tar_of(entries: list[tuple[str, bytes | None]]) -> bytes:
    """A tar of files (bytes) and directories (None), in order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zeros_tar_gz(size: int, name: str = "zeros.bin") -> bytes:
    """A gzip tar holding ``size`` zero bytes without ever holding them in memory at once."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as packed, tarfile.open(fileobj=packed, mode="w|") as tar:
        info = tarfile.TarInfo(name)
        info.size = size

        class Zeros:
            left = size

            def read(self, count: int = -1) -> bytes:
                count = self.left if count < 0 else min(count, self.left)
                self.left -= count
                return bytes(count)

        tar.addfile(info, Zeros())  # type: ignore[arg-type]
    return buffer.getvalue()


@pytest.fixture
def cache_tmp(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A cache-like tmp/ with a model work directory and, beside it, another fetch's partial download."""
    tmp = tmp_path / "cache" / "tmp"
    work = tmp / "model-work"
    work.mkdir(parents=True)
    partial = tmp / "0123abcd.99.partial.incomplete"
    partial.write_bytes(b"another fetch's bytes")
    return tmp, work, partial


def archive(tmp_path: Path, data: bytes, name: str = "layer.tar") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- 1. whiteouts ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("whiteout", [".wh...", ".wh..", ".wh.", "models/.wh..", "models/.wh..."])
def test_whiteout_that_names_no_file_is_refused_and_deletes_nothing(tmp_path, cache_tmp, whiteout):
    _, work, partial = cache_tmp
    lower = archive(tmp_path, tar_of([("models", None), ("models/config.json", b"{}")]), "lower.tar")
    upper = archive(tmp_path, tar_of([(whiteout, b"")]), "upper.tar")
    extract_tar(lower, work, "layer 0", overlay=True)
    with pytest.raises(errors.InvalidModelError, match="names no file"):
        extract_tar(upper, work, "layer 1", overlay=True)
    assert partial.read_bytes() == b"another fetch's bytes"
    assert tree_bytes(work) == {"models/config.json": b"{}"}


def test_whiteouts_and_opaque_directories_still_hide_lower_files(tmp_path, cache_tmp):
    _, work, _ = cache_tmp
    lower = archive(tmp_path, tar_of([("m/a", b"a"), ("m/b", b"b"), ("m/d/x", b"x"), ("m/d/y", b"y")]), "1.tar")
    upper = archive(tmp_path, tar_of([("m/.wh.a", b""), ("m/d/z", b"z"), ("m/d/.wh..wh..opq", b"")]), "2.tar")
    extract_tar(lower, work, "layer 0", overlay=True)
    extract_tar(upper, work, "layer 1", overlay=True)
    assert tree_bytes(work) == {"m/b": b"b", "m/d/z": b"z"}


# --- 2. decompression bombs -----------------------------------------------------------------------------------
def test_bomb_is_stopped_by_the_ratio_cap_soon_after_the_floor(tmp_path, cache_tmp):
    _, work, _ = cache_tmp
    bomb = archive(tmp_path, zeros_tar_gz(RATIO_FLOOR + (8 << 20)), "bomb.tar.gz")
    assert bomb.stat().st_size * 200 < RATIO_FLOOR  # compressed far more than 200x
    with pytest.raises(errors.InvalidModelError, match="OCI_CRANE_MAX_UNPACK_RATIO") as info:
        extract_tar(bomb, work, "layer 0")
    assert "decompression bomb" in info.value.cause
    assert (work / "zeros.bin").stat().st_size <= RATIO_FLOOR + (1 << 20)  # stopped within one chunk


@pytest.fixture
def environment(monkeypatch):
    """Set OCI_CRANE_* variables as a process starting with them would see them (settings are read once)."""
    def set_variable(name: str, value: str | None) -> None:
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, value)
        settings.cache_clear()

    yield set_variable
    settings.cache_clear()


def test_absolute_and_entry_caps_come_from_the_environment(tmp_path, cache_tmp, environment):
    _, work, _ = cache_tmp
    plain = archive(tmp_path, tar_of([("big.bin", bytes(3 << 20))]), "big.tar")  # ratio 1: only the byte cap
    environment("OCI_CRANE_MAX_UNPACK_BYTES", "2M")
    with pytest.raises(errors.InvalidModelError, match="OCI_CRANE_MAX_UNPACK_BYTES"):
        extract_tar(plain, work, "layer 0")
    environment("OCI_CRANE_MAX_UNPACK_BYTES", None)
    many = archive(tmp_path, tar_of([(f"f{number}", b"x") for number in range(20)]), "many.tar")
    environment("OCI_CRANE_MAX_UNPACK_ENTRIES", "10")
    with pytest.raises(errors.InvalidModelError, match="over 10 entries"):
        extract_tar(many, tmp_path / "cache" / "tmp", "layer 0", into="other")
    assert UnpackLimits.from_environment() == UnpackLimits(entries=10) == settings().unpack


def test_hard_link_copies_count_as_unpacked_bytes(tmp_path, cache_tmp, environment):
    _, work, _ = cache_tmp
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("one.bin")
        info.size = 1 << 20
        tar.addfile(info, io.BytesIO(bytes(1 << 20)))
        for number in range(8):
            link = tarfile.TarInfo(f"copy{number}.bin")
            link.type, link.linkname = tarfile.LNKTYPE, "one.bin"
            tar.addfile(link)
    environment("OCI_CRANE_MAX_UNPACK_BYTES", "4M")
    with pytest.raises(errors.InvalidModelError, match="OCI_CRANE_MAX_UNPACK_BYTES"):
        extract_tar(archive(tmp_path, buffer.getvalue()), work, "layer 0")


@pytest.mark.parametrize(("name", "value"), [("OCI_CRANE_MAX_UNPACK_RATIO", "lots"),
                                             ("OCI_CRANE_MAX_UNPACK_BYTES", "-5G"),
                                             ("OCI_CRANE_MAX_UNPACK_ENTRIES", "1.5"),
                                             ("OCI_CRANE_MAX_UNPACK_RATIO", "nan")])
def test_bad_limit_values_are_one_clear_error(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(errors.SettingsError, match=name) as info:
        UnpackLimits.from_environment()
    assert "positive number" in info.value.cause and "unset it" in info.value.fix


def modelpack_with_archive(tmp_path: Path, reference: str, config_tar: bytes, *, weights: bool = True) -> None:
    """A ModelPack artifact: a tar+gzip config layer plus (optionally) a raw weight file."""
    source = write_model(tmp_path / "src", shards=1)
    layout = LayoutWriter(tmp_path / "layout")
    layers = [layout.add_bytes(MP + "weight.config.v1.tar+gzip", config_tar)]
    if weights:
        layers.append(layout.add_file(MP + "weight.v1.raw", source / "model.safetensors",
                                      {modelpack.FILEPATH: "model.safetensors"}))
    config = layout.add_bytes(modelpack.CONFIG, canonical_json({"config": {"format": "safetensors"}}))
    layout.add_manifest(config, layers, artifact_type=modelpack.ARTIFACT_TYPE)
    push_layout(layout.root, reference)


def test_fetch_and_inspect_stop_a_bomb_and_leave_no_partial_files(registry, tmp_path, cache_dir):
    reference = f"{registry.host}/hostile/bomb:v1"
    modelpack_with_archive(tmp_path, reference, zeros_tar_gz(8 << 20, "config.json"))
    env = {"OCI_CRANE_MAX_UNPACK_BYTES": "4M"}  # 8 MiB is under the ratio cap's floor: a lowered byte cap
    for command in ("fetch", "inspect"):
        done = run_cli(command, reference, "--cache-dir", str(cache_dir), *(["-q"] if command == "fetch" else []),
                       env=env)
        assert done.returncode == 1, done.stdout
        assert done.stderr.startswith("error: ") and "OCI_CRANE_MAX_UNPACK_BYTES" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert scratch(cache_dir) == []
        assert model_dirs(cache_dir) == []


# --- 5. names the filesystem cannot take ----------------------------------------------------------------------
def test_tar_entry_thousands_of_directories_deep_is_one_error(tmp_path, cache_tmp):
    _, work, _ = cache_tmp
    deep = "/".join(["d"] * 1500) + "/config.json"
    with pytest.raises(errors.InvalidModelError, match="directories deep"):
        extract_tar(archive(tmp_path, tar_of([(deep, b"{}")])), work, "layer 0")


@pytest.mark.parametrize("entries", [
    [("a", b"file"), ("a/b", b"file under a file")],  # a file where a directory must be
    [("x" * 300, b"name too long")],
])
def test_entries_the_filesystem_refuses_are_invalid_model_errors(tmp_path, cache_tmp, entries):
    _, work, _ = cache_tmp
    with pytest.raises(errors.InvalidModelError):
        extract_tar(archive(tmp_path, tar_of(entries)), work, "layer 0")


def _descriptor(media_type: str, data: bytes, **annotations: str) -> dict[str, object]:
    return {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data), "annotations": annotations}


@pytest.mark.parametrize("config_type,layer_type,key", [
    (modelpack.CONFIG, MP + "weight.v1.raw", modelpack.FILEPATH),
    (dmr.CONFIG_V02, dmr.SAFETENSORS, dmr.FILEPATH),
    ("application/vnd.kitops.modelkit.config.v1+json", "application/vnd.kitops.modelkit.model.v1.raw",
     modelpack.FILEPATH),
])
def test_filepath_with_a_lone_surrogate_is_refused_when_planned(config_type, layer_type, key):
    layer = _descriptor(layer_type, b"weights", **{key: "model\ud800.safetensors"})
    manifest = Manifest.model_validate({"schemaVersion": 2, "config": _descriptor(config_type, b"{}"),
                                        "layers": [layer]})
    with pytest.raises(errors.InvalidModelError, match="not valid UTF-8"):
        recognise(manifest, b"{}")


def test_fetch_of_a_surrogate_filepath_is_one_line(registry, tmp_path, cache_dir):
    """The manifest's JSON escapes the surrogate (json.dumps does); before, os.link raised UnicodeEncodeError."""
    source = write_model(tmp_path / "src", shards=1)
    layout = LayoutWriter(tmp_path / "layout")
    layers = [layout.add_file(MP + "weight.config.v1.raw", source / "config.json", {modelpack.FILEPATH: "config.json"}),
              layout.add_file(MP + "weight.v1.raw", source / "model.safetensors",
                              {modelpack.FILEPATH: "model\udcff.safetensors"})]
    config = layout.add_bytes(modelpack.CONFIG, b"{}")
    layout.add_manifest(config, layers, artifact_type=modelpack.ARTIFACT_TYPE)
    reference = f"{registry.host}/hostile/surrogate:v1"
    push_layout(layout.root, reference)
    done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "-q")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "not valid UTF-8" in done.stderr and len(done.stderr.strip().splitlines()) == 1


# --- 6. no config.json ----------------------------------------------------------------------------------------
def test_artifact_whose_config_layer_is_skipped_is_refused_naming_the_media_types(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src", shards=1)
    layout = LayoutWriter(tmp_path / "layout")
    layers = [layout.add_file("application/vnd.example.hf-config.v1+json", source / "config.json",
                              {modelpack.FILEPATH: "config.json"}),
              layout.add_file(MP + "weight.v1.raw", source / "model.safetensors",
                              {modelpack.FILEPATH: "model.safetensors"})]
    layout.add_manifest(layout.add_bytes(modelpack.CONFIG, b"{}"), layers, artifact_type=modelpack.ARTIFACT_TYPE)
    reference = f"{registry.host}/hostile/half:v1"
    push_layout(layout.root, reference)
    done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "-q")
    assert done.returncode == 1, done.stdout
    assert "no config.json" in done.stderr and "application/vnd.example.hf-config.v1+json" in done.stderr
    assert MP + "weight.v1.raw" in done.stderr
    assert model_dirs(cache_dir) == []
    listed = run_cli("inspect", reference, "--cache-dir", str(cache_dir), "--json")  # inspect still lists it
    assert listed.returncode == 0, listed.stderr
    info = json.loads(listed.stdout)
    assert info["skipped"][0]["media_type"] == "application/vnd.example.hf-config.v1+json"
    assert info["config"] == {"media_type": modelpack.CONFIG, "digest": sha256_digest(b"{}"), "size": 2}


def test_config_only_materialisation_needs_config_json_too(tmp_path):
    store = Store(tmp_path / "cache")
    data = b"not a model"
    descriptor = Descriptor.model_validate({"mediaType": "application/octet-stream", "digest": sha256_digest(data),
                                            "size": len(data)})
    store.write_blob(descriptor, lambda temp: temp.write_bytes(data))
    plan = Plan("oras", [LayerPlan(descriptor, Action.FILE, "README.md")])
    with pytest.raises(errors.InvalidModelError, match=r"no config\.json"):
        materialize(store, plan, sha256_digest(b"manifest"), weights=False)
    assert list(store.scratch_entries()) == []
