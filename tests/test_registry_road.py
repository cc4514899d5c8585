"""One road to the registry (registry/access.py): every request, by crane or by the ranged HTTP path, passes one
gate and one connection policy. Offline means no request on any path, counted at a redirecting registry; and a
credential goes to the registry's own origin only, never in cleartext to a storage URL on the same host."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from support.commands import run_cli
from support.distribution import make_certificates
from support.models import push_model, write_model
from support.storage_proxy import StorageProxy

from oci_crane_loader import errors
from oci_crane_loader.cache.store import Store
from oci_crane_loader.fetching import fetch, prepare
from oci_crane_loader.oci import Descriptor
from oci_crane_loader.options import fetch_options
from oci_crane_loader.reference import parse_reference
from oci_crane_loader.registry import failures, transfer
from oci_crane_loader.registry.access import RegistryAccess, RegistryRoutes, origin, registry_access
from oci_crane_loader.registry.crane import Crane
from oci_crane_loader.settings import settings

RANGED = {"OCI_CRANE_RANGE_THRESHOLD": "256"}  # a small model's weights take the ranged path


@pytest.fixture
def ranged(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in RANGED.items():
        monkeypatch.setenv(name, value)
    settings.cache_clear()
    yield
    settings.cache_clear()


def _weight_blob(store: Store, model_dir: Path) -> Path:
    """The cache blob the model directory's largest file links to."""
    weights = max((path for path in model_dir.iterdir() if path.suffix == ".safetensors"),
                  key=lambda path: path.stat().st_size)
    inode = weights.stat().st_ino
    return next(blob.path for blob in store.blobs() if blob.path.stat().st_ino == inode)


def test_offline_makes_no_request_on_any_path_behind_a_redirecting_registry(registry, tmp_path, cache_dir, ranged):
    """The reproduction of issue 17: a weight blob gone from the cache, then `fetch --offline` (and
    OCI_CRANE_OFFLINE=1, the Python API, the vLLM prepare and prefetch): refused, and not one request reaches the
    registry or its storage host."""
    source = write_model(tmp_path / "src", shards=2)
    push_model(source, f"{registry.host}/acme/road:v1", tmp_path)
    with StorageProxy(registry.host) as proxy:
        reference = f"{proxy.address}/acme/road:v1"
        first = fetch(fetch_options(cache_dir=cache_dir), reference)
        assert proxy.requests, "the weights did not take the ranged path: the test would prove nothing"
        blob = _weight_blob(Store(cache_dir), first.path)
        with blob.open("r+b") as damaged:  # as a power loss or a disk error leaves it; prune --damaged then
            damaged.truncate(10)           # removes the blob and the model directory that links it
        pruned = run_cli("cache", "prune", "--damaged", "--cache-dir", str(cache_dir))
        assert pruned.returncode == 0 and not blob.exists() and not first.path.exists(), pruned.stderr
        asked = (len(proxy.front_requests), len(proxy.requests))

        done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--offline")
        assert done.returncode != 0 and "offline" in done.stderr, done.stderr
        env = {**os.environ, "OCI_CRANE_OFFLINE": "1", **RANGED}
        done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), env=env)
        assert done.returncode != 0 and "offline" in done.stderr, done.stderr
        with pytest.raises(errors.OfflineError):
            fetch(fetch_options(cache_dir=cache_dir, offline=True), reference)
        # The vLLM path: resolve and the config directory from the cache, then the weights (as the prefetch
        # thread and the loader ask for them).
        puller, resolved, plan, _ = prepare(fetch_options(cache_dir=cache_dir, offline=True), reference)
        with pytest.raises(errors.OfflineError):
            puller.ensure_blobs(resolved.reference, plan.weight_layers)
        assert (len(proxy.front_requests), len(proxy.requests)) == asked
        assert not blob.exists()
        # Online again, the same fetch takes the ranged path it was kept from: the gate, not a broken road.
        fetch(fetch_options(cache_dir=cache_dir), reference)
        assert len(proxy.requests) > asked[1] and blob.exists()


def test_offline_gate_holds_for_each_road_alone(registry, tmp_path, cache_dir):
    """The gate itself, on each road: crane, a ranged blob download, and the early probe."""
    access = RegistryAccess(offline=True)
    crane = Crane(access)
    with pytest.raises(errors.OfflineError, match="crane manifest"):
        crane.manifest(f"{registry.host}/acme/none:v1")
    descriptor = Descriptor(mediaType="application/octet-stream", digest="sha256:" + "a" * 64, size=1 << 20)
    with pytest.raises(errors.OfflineError, match="download of"):
        transfer.fetch_blob(crane, RegistryRoutes(), parse_reference(f"{registry.host}/acme/none:v1"), descriptor,
                            Store(tmp_path / "cache").partial_paths(descriptor.digest), tmp_path / "out", parts=2,
                            progress=lambda _: None)
    routes = RegistryRoutes()
    transfer.probe_early(crane, routes, parse_reference(f"{registry.host}/acme/none:v1"), descriptor)
    assert routes.claim_probe(registry.host) is None  # no probe was started: the first asker is still to come
    assert registry.blob_downloads() == []
    assert not (tmp_path / "partial").exists() and not (tmp_path / "out").exists()


def test_what_one_fetch_learns_of_a_registry_stays_with_it(registry, tmp_path, cache_dir, ranged):
    """A registry that serves blobs itself is remembered by the fetch that saw it, not by the process: a second
    fetch (another policy, another answer) asks again."""
    source = write_model(tmp_path / "src")
    push_model(source, f"{registry.host}/acme/self:v1", tmp_path)
    with StorageProxy(registry.host, redirect_blobs=False) as proxy:
        reference = f"{proxy.address}/acme/self:v1"
        fetch(fetch_options(cache_dir=cache_dir), reference)
        # Ranged GETs: the first ranged download asks, finds the registry answering itself, and every later
        # blob of that fetch goes to crane blob without asking.
        asked = [request for request in proxy.front_requests if request[2] is not None]
        fetch(fetch_options(cache_dir=tmp_path / "other-cache"), reference)
        again = [request for request in proxy.front_requests if request[2] is not None]
    assert len(asked) == 1 and len(again) == 2


def test_origins_compare_scheme_host_and_port():
    assert origin("https://Registry.example:443/v2/") == origin("https://registry.example/v2/x")
    assert origin("https://registry.example/v2/") != origin("http://registry.example/v2/")
    assert origin("http://127.0.0.1:5000/a") != origin("http://127.0.0.1:5001/a")
    assert origin("http://localhost/a") != origin("http://127.0.0.1/a")


def test_one_table_types_http_answers_as_crane_stderr():
    """The same failure, whichever road saw it: a 404 and crane's MANIFEST_UNKNOWN are one class, one wording."""
    pairs = [(404, "MANIFEST_UNKNOWN: manifest unknown"), (401, "UNAUTHORIZED: authentication required"),
             (429, "TOOMANYREQUESTS: slow down")]
    for status, stderr in pairs:
        by_status = failures.from_status(status, from_registry=True)
        assert failures.from_stderr(stderr) is by_status
    assert failures.status_error(404, "https://r/v2/x").cause.startswith(failures.NOT_FOUND.what)
    # A storage host refusing its presigned URL is not our credentials: a network error, retried through the
    # registry, which hands out a fresh URL.
    refused = failures.status_error(403, "https://storage/x", from_registry=False)
    assert type(refused) is errors.NetworkError and "storage URL" in refused.cause
    assert isinstance(failures.status_error(416, "https://r/v2/x"), errors.IntegrityError)


def test_the_policy_is_checked_once_and_carried(tmp_path, monkeypatch):
    with monkeypatch.context() as environment:
        environment.setenv("OCI_CRANE_OFFLINE", "1")
        environment.setenv("OCI_CRANE_TIMEOUT", "7")
        settings.cache_clear()
        try:
            options = fetch_options(cache_dir=tmp_path, retries=3)
        finally:
            settings.cache_clear()
    assert options.access == RegistryAccess(offline=True, timeout=7.0, retries=3,
                                            stall_timeout=options.access.stall_timeout)
    assert Crane(options.access).access is options.access
    with pytest.raises(errors.UsageError, match="contradict"):
        registry_access(insecure=True, ca_file=tmp_path, environment=options.settings)


# --- credentials stay at the registry's origin ------------------------------------------------------------------

BLOB = os.urandom(3 << 20)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
USER, PASSWORD = "alice", "s3cr3t-password"


class _SniffingServer(ThreadingHTTPServer):
    """TLS and plain HTTP on one port (it looks at the first byte): a registry on https://HOST:PORT whose storage
    URL is http://HOST:PORT, which compares equal to the registry by host and port alone."""

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _DowngradingRegistry)
        self.context = context
        self.storage_requests: list[tuple[bool, str | None]] = []  # (over TLS, Authorization header)

    def get_request(self) -> tuple[socket.socket, object]:
        sock, address = self.socket.accept()
        if sock.recv(1, socket.MSG_PEEK) == b"\x16":  # a TLS ClientHello
            sock = self.context.wrap_socket(sock, server_side=True)
        return sock, address


class _DowngradingRegistry(BaseHTTPRequestHandler):
    server: _SniffingServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        tls = isinstance(self.connection, ssl.SSLSocket)
        host = f"127.0.0.1:{self.server.server_address[1]}"
        if self.path.startswith("/storage/"):
            self.server.storage_requests.append((tls, self.headers.get("Authorization")))
            match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
            first, last = (int(match[1]), int(match[2])) if match else (0, len(BLOB) - 1)
            body = BLOB[first:last + 1]
            self.send_response(206 if match else 200)
            if match:
                self.send_header("Content-Range", f"bytes {first}-{last}/{len(BLOB)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if not tls or self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="registry"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(307)  # the storage URL: same host and port, plain http
        self.send_header("Location", f"http://{host}/storage/{DIGEST}")
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def downgrading_registry(tmp_path: Path) -> Iterator[tuple[_SniffingServer, Path]]:
    ca = make_certificates(tmp_path / "tls")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tmp_path / "tls" / "server.pem"), str(tmp_path / "tls" / "server.key"))
    server = _SniffingServer(context)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, ca
    finally:
        server.shutdown()
        server.server_close()


def test_a_password_never_follows_a_redirect_to_plain_http_on_the_same_host(downgrading_registry, tmp_path):
    server, ca = downgrading_registry
    host = f"127.0.0.1:{server.server_address[1]}"
    authfile = tmp_path / "config.json"
    authfile.write_text(json.dumps({"auths": {host: {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode())
                                                     .decode()}}}))
    crane = Crane(registry_access(ca_file=ca, authfile=authfile))
    descriptor = Descriptor(mediaType="application/octet-stream", digest=DIGEST, size=len(BLOB))
    destination = tmp_path / "blob"
    digest = transfer.fetch_blob(crane, RegistryRoutes(), parse_reference(f"{host}/acme/model:v1"), descriptor,
                                 Store(tmp_path / "cache").partial_paths(DIGEST), destination, parts=3,
                                 progress=lambda _: None)
    assert digest == DIGEST and destination.read_bytes() == BLOB
    assert server.storage_requests and all(not tls for tls, _ in server.storage_requests)
    assert [authorization for _, authorization in server.storage_requests] == [None] * len(server.storage_requests)
