"""OCI_CRANE_* settings read once with one clear error, option ranges, and a fitting fix for each file error."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from support.commands import REPO_ROOT, run_cli, unshare_mount
from support.models import push_model, write_model

from oci_crane_loader import errors
from oci_crane_loader.options import from_extra_config
from oci_crane_loader.pull import open_puller
from oci_crane_loader.settings import Settings, settings

UNREACHABLE = "127.0.0.1:9/acme/tiny:v1"  # never contacted: every case fails before the network


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    settings.cache_clear()
    yield
    settings.cache_clear()


@pytest.mark.parametrize(("name", "value"), [
    ("OCI_CRANE_TIMEOUT", "abc"), ("OCI_CRANE_LOCK_TIMEOUT", "x"), ("OCI_CRANE_STALL_TIMEOUT", "nan"),
    ("OCI_CRANE_STALL_TIMEOUT", "inf"), ("OCI_CRANE_TIMEOUT", "0"), ("OCI_CRANE_TIMEOUT", "-5"),
    ("OCI_CRANE_OFFLINE", "maybe"), ("OCI_CRANE_NO_FSYNC", "2"), ("OCI_CRANE_MAX_UNPACK_RATIO", "lots"),
    ("OCI_CRANE_MAX_UNPACK_BYTES", "-5G"),
])
def test_a_bad_setting_is_one_line_naming_the_variable(cache_dir, name, value):
    done = run_cli("fetch", UNREACHABLE, "--cache-dir", str(cache_dir), "-q", env={name: value})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"error: {name}={value!r} is ") and f"-- fix: set {name} to" in lines[0]


def test_settings_parse_every_variable():
    parsed = Settings.from_environment({
        "OCI_CRANE_TIMEOUT": "7.5", "OCI_CRANE_STALL_TIMEOUT": " 3 ", "OCI_CRANE_LOCK_TIMEOUT": "1e3",
        "OCI_CRANE_OFFLINE": "Yes", "OCI_CRANE_NO_FSYNC": "on", "OCI_CRANE_LOADER_CACHE": "/srv/cache"})
    assert parsed == Settings(7.5, 3.0, 1000.0, True, True, Path("/srv/cache"))
    assert Settings.from_environment({"OCI_CRANE_OFFLINE": "0", "OCI_CRANE_TIMEOUT": ""}) == Settings()


def test_the_package_imports_with_bad_settings():
    env = {**os.environ, "OCI_CRANE_TIMEOUT": "abc", "OCI_CRANE_LOCK_TIMEOUT": "x"}
    done = subprocess.run([sys.executable, "-c", "import oci_crane_loader.cli, oci_crane_loader.loader, "
                           "oci_crane_loader.cache.store"], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                          check=False)
    assert done.returncode == 0, done.stderr


def test_the_loader_honours_oci_crane_offline(monkeypatch, fresh_settings, cache_dir):
    monkeypatch.setenv("OCI_CRANE_OFFLINE", "1")
    monkeypatch.setenv("OCI_CRANE_BINARY", "/nonexistent/crane")  # proves crane is never started
    puller = open_puller(from_extra_config(None, cache_dir))
    assert puller.crane.offline is True
    with pytest.raises(errors.OfflineError, match="is not in the cache"):
        puller.prepare(UNREACHABLE)


def test_the_vllm_plugin_rewrites_engine_args_through_one_puller(registry, tmp_path, cache_dir):
    """resolve_engine_args needs no vLLM: `model` becomes the config directory, `download_dir` the cache root,
    and a second call (vLLM builds its config more than once) changes nothing."""
    from types import SimpleNamespace

    from oci_crane_loader.vllm_plugin import resolve_engine_args

    source = write_model(tmp_path / "src", shards=2)
    reference = f"{registry.host}/acme/tiny:v1"
    pinned = push_model(source, reference, tmp_path)
    args = SimpleNamespace(model=reference, model_weights=None, tokenizer=None, served_model_name=None,
                           download_dir=str(cache_dir), model_loader_extra_config={"jobs": 2})
    resolve_engine_args(args)
    assert Path(args.model).parent.parent == cache_dir.resolve() / "configs"
    assert (Path(args.model) / "config.json").read_bytes() == (source / "config.json").read_bytes()
    assert args.model_weights == pinned and args.download_dir == str(cache_dir.resolve())
    before = dict(vars(args))
    resolve_engine_args(args)
    assert vars(args) == before


# --- option ranges ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("jobs", ["0", "65", "100000", "four"])
def test_jobs_out_of_range_is_a_usage_error(cache_dir, jobs):
    done = run_cli("fetch", UNREACHABLE, "--cache-dir", str(cache_dir), "--jobs", jobs)
    assert done.returncode == 2, done.stderr
    assert "--jobs" in done.stderr and "1 to 64" in done.stderr
    assert not cache_dir.exists()  # refused before anything was created


def test_loader_jobs_are_capped_too():
    with pytest.raises(errors.UsageError, match="from 1 to 64"):
        from_extra_config({"jobs": 100000}, None)
    assert from_extra_config({"jobs": 64}, None).jobs == 64


@pytest.mark.parametrize(("subpath", "refusal"), [
    ("../etc", "--subpath: path '../etc' escapes the model directory"),
    ("models/../../x", "--subpath: path 'models/../../x' escapes the model directory"),
    ("a\\b", "--subpath: unsafe path 'a\\\\b' (absolute, empty or with backslashes)"),
    ("/", "--subpath: unsafe path '' (absolute, empty or with backslashes)"),
    ("/..", "--subpath: path '..' escapes the model directory"),
])
def test_an_unsafe_subpath_is_a_usage_error_before_anything(cache_dir, subpath, refusal):
    done = run_cli("fetch", UNREACHABLE, "--cache-dir", str(cache_dir), "--subpath", subpath)
    assert done.returncode == 2, done.stderr
    assert refusal in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not cache_dir.exists()  # refused before the cache was created, let alone the network


def test_the_loader_says_which_extra_config_key_is_wrong():
    with pytest.raises(errors.UsageError, match=r"model_loader_extra_config\['subpath'\]: path '\.\./x' escapes"):
        from_extra_config({"subpath": "../x"}, None)
    assert from_extra_config({"subpath": "/models/b/"}, "").subpath == "models/b"


def test_a_subpath_no_file_lies_under_is_refused_before_the_weights_download(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src", shards=2)
    reference = f"{registry.host}/acme/tiny:v1"
    push_model(source, reference, tmp_path)
    done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "-q", "--subpath", "models/tiny")
    assert done.returncode == 1
    assert "--subpath 'models/tiny' is not a directory in the artifact" in done.stderr
    weights = {"sha256:" + hashlib.sha256(shard.read_bytes()).hexdigest() for shard in source.glob("*.safetensors")}
    assert not weights & set(registry.blob_downloads())  # only the config blob was read, to plan


def test_a_subpath_absent_from_the_config_archive_is_refused_before_the_weights_download(registry, tmp_path,
                                                                                          cache_dir):
    """A ModelPack config archive plus a raw weight file: once the small archive is in the cache, its names are
    known too, so a --subpath under which nothing lies stops the fetch before the weights download."""
    import gzip

    from test_hostile_artifacts import modelpack_with_archive, tar_of

    reference = f"{registry.host}/acme/packed:v1"
    config_tar = gzip.compress(tar_of([("./config/", None), ("./config/config.json", b'{"architectures": []}')]))
    modelpack_with_archive(tmp_path, reference, config_tar)
    weights = "sha256:" + hashlib.sha256((tmp_path / "src" / "model.safetensors").read_bytes()).hexdigest()
    done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "-q", "--subpath", "/models/")
    assert done.returncode == 1 and "--subpath 'models' is not a directory in the artifact" in done.stderr, done.stderr
    assert weights not in registry.blob_downloads()
    named = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "-q", "--subpath", "config/")
    assert "not a directory in the artifact" not in named.stderr  # listed in the archive: it gets as far as unpacking
    assert weights in registry.blob_downloads()


def test_inspect_refuses_subpath_instead_of_ignoring_it(cache_dir):
    done = run_cli("inspect", UNREACHABLE, "--cache-dir", str(cache_dir), "--subpath", "models/b")
    assert done.returncode == 2 and "unrecognized arguments: --subpath" in done.stderr, done.stderr


@pytest.mark.parametrize("command", [["fetch", UNREACHABLE], ["cache", "ls"], ["cache", "prune"], ["doctor"]])
def test_an_empty_cache_dir_is_a_usage_error(tmp_path, command):
    home = tmp_path / "home"  # the default cache would go here
    done = run_cli(*command, "--cache-dir", "", env={"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")})
    assert done.returncode == 2, done.stderr
    assert "--cache-dir is empty" in done.stderr
    assert not home.exists()


# --- file errors: each errno its own fix -----------------------------------------------------------------------

def test_a_name_too_long_says_so(tmp_path):
    done = run_cli("cache", "ls", "--cache-dir", str(tmp_path / ("x" * 300)))
    assert done.returncode == 1
    assert "File name too long" in done.stderr and "fix: use a shorter --cache-dir path" in done.stderr


def test_a_file_in_the_way_says_so(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("not a directory")
    done = run_cli("cache", "ls", "--cache-dir", str(blocker))
    assert done.returncode == 1
    assert "free space" not in done.stderr and "is in the way" in done.stderr, done.stderr


def _fetch_into_a_small_tmpfs(reference: str, cache_dir: Path, size: str) -> subprocess.CompletedProcess[str]:
    """`fetch` with the cache on a tmpfs of ``size`` mounted in a private mount namespace."""
    unshare = unshare_mount()
    cache_dir.mkdir()
    script = f'mount -t tmpfs -o size={size} tmpfs "$1" && shift && exec "$@"'
    return subprocess.run([*unshare, "sh", "-c", script, "sh", str(cache_dir), sys.executable, "-m",
                           "oci_crane_loader", "fetch", reference, "--cache-dir", str(cache_dir), "-q"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300, check=False)


def test_a_full_disk_during_a_download_names_the_cache_and_free_space(registry, tmp_path, cache_dir):
    """The free-space check before downloading counts bytes; a disk fills by blocks. 120 shards of a few hundred
    bytes pass the check on a 256 KiB tmpfs, then fill it a 4 KiB page each, mid-download."""
    source = write_model(tmp_path / "src", shards=120)
    push_model(source, f"{registry.host}/acme/big:v1", tmp_path)
    done = _fetch_into_a_small_tmpfs(f"{registry.host}/acme/big:v1", cache_dir, "256k")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0], done.stderr
    assert f"fix: free disk space on the disk of {cache_dir.resolve()}" in lines[0]


def test_a_disk_too_small_for_the_model_is_refused_before_downloading(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src", shards=1)
    save_file({"big": np.zeros(1 << 18, dtype=np.float32)}, str(source / "model.safetensors"))  # 1 MiB
    push_model(source, f"{registry.host}/acme/big:v1", tmp_path)
    done = _fetch_into_a_small_tmpfs(f"{registry.host}/acme/big:v1", cache_dir, "512k")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "the model needs 1.0 MiB in the cache" in lines[0], done.stderr
    assert f"fix: free disk space on the disk of {cache_dir.resolve()}" in lines[0]
    weights = "sha256:" + hashlib.sha256((source / "model.safetensors").read_bytes()).hexdigest()
    assert weights not in registry.blob_downloads()  # only the config was read, to plan


LEFTOVERS_THEN_FETCH = """
import contextlib, hashlib, json, subprocess, sys
from pathlib import Path
from oci_crane_loader.cache.store import Store
cache, reference, partials = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
store = Store(cache)
with contextlib.ExitStack() as running:
    for partial in partials:  # what an interrupted (or running) ranged download leaves, as transfer.py writes it
        paths, size, written = store.partial_paths(partial["digest"]), partial["size"], partial["written"]
        path = paths.data
        with open(path, "wb") as handle:
            handle.truncate(size)  # preallocated, sparse
            handle.write(Path(partial["source"]).read_bytes()[:written] if written else b"")
        if written:
            parts = [[0, written - 1, written], [written, size - 1, 0]]
            paths.state.write_text(json.dumps({"digest": partial["digest"], "parts": parts}))
        if partial["running"]:  # a download in another process holds the blob's lock
            running.enter_context(store.try_blob_lock(partial["digest"], create=True))
    done = subprocess.run([sys.executable, "-m", "oci_crane_loader", "fetch", reference, "--cache-dir", cache, "-q",
                           "--json"], stdout=subprocess.PIPE, text=True)
if done.returncode == 0:
    result = json.loads(done.stdout)
    print(json.dumps({name: hashlib.sha256((Path(result["path"]) / name).read_bytes()).hexdigest()
                      for name in result["files"]}))
sys.exit(done.returncode)
"""


def _fetch_with_leftovers(reference: str, cache_dir: Path, size: str,
                          partials: list[dict[str, object]]) -> subprocess.CompletedProcess[str]:
    """`fetch` into a tmpfs of ``size`` (a private mount namespace) that already holds ``partials``; ranges from
    64 KiB on. On success stdout is the sha256 of each file of the model directory (the tmpfs goes with it)."""
    unshare = unshare_mount()
    cache_dir.mkdir()
    script = f'mount -t tmpfs -o size={size} tmpfs "$1" && shift && exec "$@"'
    return subprocess.run([*unshare, "sh", "-c", script, "sh", str(cache_dir), sys.executable, "-c",
                           LEFTOVERS_THEN_FETCH, str(cache_dir), reference, json.dumps(partials)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300, check=False,
                          env={**os.environ, "OCI_CRANE_RANGE_THRESHOLD": "64k"})


@pytest.fixture
def one_mebibyte_model(registry, tmp_path):
    """A model whose weights are one 1 MiB blob of random bytes, and that blob's digest."""
    source = write_model(tmp_path / "src", shards=1)
    weights = np.random.default_rng(7).integers(0, 256, 1 << 20, dtype=np.uint8)
    save_file({"big": weights}, str(source / "model.safetensors"))
    reference = f"{registry.host}/acme/big:v1"
    push_model(source, reference, tmp_path)
    return reference, source, "sha256:" + hashlib.sha256((source / "model.safetensors").read_bytes()).hexdigest()


def test_a_resumed_download_needs_only_its_missing_bytes(one_mebibyte_model, cache_dir, registry):
    """1.5 MiB of disk holds a partial download with 896 KiB of the 1 MiB shard: the resume needs the rest only.
    A sparse leftover of a download nobody runs (4 MiB long, nothing written) takes no room and is no obstacle."""
    reference, source, shard = one_mebibyte_model
    shard_file = source / "model.safetensors"
    resumable = {"digest": shard, "size": shard_file.stat().st_size, "written": 896 << 10, "source": str(shard_file),
                 "running": False}
    stale = {"digest": "sha256:" + hashlib.sha256(b"another model").hexdigest(), "size": 4 << 20, "written": 0,
             "source": None, "running": False}
    done = _fetch_with_leftovers(reference, cache_dir, "1536k", [resumable, stale])
    assert done.returncode == 0, done.stderr
    expected = {str(p.relative_to(source)): hashlib.sha256(p.read_bytes()).hexdigest() for p in source.rglob("*")
                if p.is_file()}
    assert json.loads(done.stdout) == expected


def test_a_download_running_elsewhere_counts_what_it_still_writes(one_mebibyte_model, cache_dir, registry):
    """1.5 MiB holds the 1 MiB model, but not beside another process's ranged download of 1 MiB that has written
    nothing yet into its preallocated file: refused before any weight is downloaded, rather than a full disk."""
    reference, _, shard = one_mebibyte_model
    running = {"digest": "sha256:" + hashlib.sha256(b"another model").hexdigest(), "size": 1 << 20, "written": 0,
               "source": None, "running": True}
    done = _fetch_with_leftovers(reference, cache_dir, "1536k", [running])
    assert done.returncode == 1, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "downloads running in other processes still write 1.0 MiB" in lines[0], done.stderr
    assert shard not in registry.blob_downloads()


def test_a_read_only_file_system_says_so(tmp_path):
    unshare = unshare_mount()
    mount = tmp_path / "ro"
    mount.mkdir()
    script = 'mount -t tmpfs -o ro tmpfs "$1" && shift && exec "$@"'
    done = subprocess.run([*unshare, "sh", "-c", script, "sh", str(mount), sys.executable, "-m", "oci_crane_loader",
                           "cache", "ls", "--cache-dir", str(mount / "cache")], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=300, check=False)
    assert done.returncode == 1
    assert "Read-only file system" in done.stderr and "is on a read-only file system" in done.stderr, done.stderr


def test_the_loader_takes_the_registry_options_and_retries(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here: Go reads it")
    options = from_extra_config({"authfile": str(ca), "ca_file": str(ca), "plain_http": False, "retries": 0}, None)
    assert (options.authfile, options.ca_file, options.retries) == (ca, ca, 0)
    with pytest.raises(errors.UsageError, match=r"model_loader_extra_config\['retries'\]"):
        from_extra_config({"retries": 21}, None)
    with pytest.raises(errors.UsageError, match=r"model_loader_extra_config\['ca_file'\] and "
                                                r"model_loader_extra_config\['insecure'\] contradict"):
        from_extra_config({"ca_file": str(ca), "insecure": True}, None)
    with pytest.raises(errors.UsageError, match=r"model_loader_extra_config\['authfile'\] .* is not a file"):
        from_extra_config({"authfile": str(tmp_path / "none.json")}, None)
    with pytest.raises(errors.UsageError, match=r"model_loader_extra_config\['retries'\] True is not a number"):
        from_extra_config({"retries": True}, None)
