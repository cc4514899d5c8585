"""A hostile registry on 127.0.0.1: an endless blob body, a descriptor promising more than the disk holds, a huge
config. Each is stopped early with one error; nothing is read past what the manifest promises."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from support.commands import run_cli

from oci_crane_loader.cache.store import Store
from oci_crane_loader.formats import dmr
from oci_crane_loader.oci import OCI_MANIFEST
from tests.support.scripted_registry import ScriptedRegistry, digest, serve

WEIGHTS = b"\x00" * (1 << 20)  # what the descriptor promises
CONFIG = json.dumps({"config": {"format": "safetensors"}}).encode()
BEFORE_FIX_CAP = 256 << 20  # the endless body ends here, so that a client without a size cap still finishes


def manifest(*, weights_size: int = len(WEIGHTS), config_size: int = len(CONFIG)) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": dmr.CONFIG_V02, "digest": digest(CONFIG), "size": config_size},
        "layers": [{"mediaType": dmr.SAFETENSORS, "digest": digest(WEIGHTS), "size": weights_size,
                    "annotations": {dmr.FILEPATH: "model.safetensors"}}],
    }).encode()


class HostileRegistry(ScriptedRegistry):
    """Serves one manifest (``manifest_body``); the weight blob is an endless chunked stream of zeros."""

    protocol_version = "HTTP/1.1"  # chunked transfer encoding
    manifest_body = manifest()
    requests: list[str] = []
    blob_bytes_sent = 0

    def do_GET(self) -> None:
        type(self).requests.append(f"{self.command} {self.path}")
        body = type(self).manifest_body
        if self.path == "/v2/":
            self.send_document(b"{}", "application/json")
        elif self.path.endswith("/manifests/v1") or self.path.endswith(digest(body)):
            self.send_document(body, OCI_MANIFEST)
        elif self.path.endswith(digest(CONFIG)):
            self.send_document(CONFIG, "application/octet-stream")
        elif self.path.endswith(digest(WEIGHTS)):
            self._endless()
        else:
            self.send_error(404)

    def _endless(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.command != "GET":
            return
        chunk = b"\x00" * (64 << 10)
        framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        try:
            while type(self).blob_bytes_sent < BEFORE_FIX_CAP:
                self.wfile.write(framed)
                type(self).blob_bytes_sent += len(chunk)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client hung up: what we want
            pass
        self.close_connection = True


@pytest.fixture
def hostile_registry() -> Iterator[str]:
    HostileRegistry.manifest_body = manifest()
    HostileRegistry.requests = []
    HostileRegistry.blob_bytes_sent = 0
    with serve(HostileRegistry) as host:
        yield host


def largest_temp_file(store: Store, stop: threading.Event, seen: list[int]) -> None:
    """Sample the cache's tmp/ until ``stop``: the largest file ever seen there."""
    while not stop.is_set():
        for entry in store.scratch_entries():
            if entry.path.name.endswith(".incomplete"):
                with contextlib.suppress(FileNotFoundError):
                    seen.append(entry.path.stat().st_size)
        time.sleep(0.002)


def test_endless_blob_is_cut_at_its_descriptor_size(hostile_registry, cache_dir, crane_binary):
    store = Store(cache_dir)  # tmp/ exists before the fetch starts, for the watcher
    stop, seen = threading.Event(), [0]
    watcher = threading.Thread(target=largest_temp_file, args=(store, stop, seen), daemon=True)
    watcher.start()
    try:
        done = run_cli("fetch", f"{hostile_registry}/acme/endless:v1", "--cache-dir", str(cache_dir), "-q",
                       timeout=120)
    finally:
        stop.set()
        watcher.join()
    assert done.returncode == 1
    assert "more than the 1048576 bytes" in done.stderr and "re-push" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    # Not retried (an integrity error), and stopped long before the 256 MiB the server would send.
    assert sum("/blobs/" + digest(WEIGHTS) in line for line in HostileRegistry.requests) == 1
    # On Linux crane cannot write a byte past the size (+1, to tell "more" from "exactly"); elsewhere the watchdog's
    # poll interval lets a loopback stream run on a little.
    assert max(seen) <= len(WEIGHTS) + (1 if sys.platform.startswith("linux") else 16 << 20)
    assert HostileRegistry.blob_bytes_sent < len(WEIGHTS) + (64 << 20)
    assert list(store.scratch_entries()) == []


def test_descriptor_larger_than_the_free_space_is_refused_before_downloading(hostile_registry, cache_dir,
                                                                             crane_binary):
    HostileRegistry.manifest_body = manifest(weights_size=1 << 62)
    done = run_cli("fetch", f"{hostile_registry}/acme/huge:v1", "--cache-dir", str(cache_dir), "-q")
    assert done.returncode == 1
    assert "the model needs" in done.stderr and "free" in done.stderr and "--cache-dir" in done.stderr, done.stderr
    assert not [line for line in HostileRegistry.requests if digest(WEIGHTS) in line]


@pytest.mark.parametrize("command", ["fetch", "inspect"])
def test_huge_config_is_refused_before_it_is_downloaded(hostile_registry, cache_dir, crane_binary, command):
    HostileRegistry.manifest_body = manifest(config_size=500 << 20)
    done = run_cli(command, f"{hostile_registry}/acme/bigconfig:v1", "--cache-dir", str(cache_dir))
    assert done.returncode == 1
    assert "500.0 MiB, over the 8.0 MiB limit" in done.stderr, done.stderr
    assert not [line for line in HostileRegistry.requests if digest(CONFIG) in line]
