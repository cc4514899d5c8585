"""The cache's disk: a fitting fix for each file error (name too long, a file in the way, read-only), and free space
checked before downloading (a full or too small disk, partial downloads resumed or running elsewhere)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from support.commands import REPO_ROOT, run_cli, unshare_mount
from support.models import push_model, write_model


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
