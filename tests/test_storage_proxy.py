"""The test proxy that puts a registry's blobs behind a "storage host" (tests/support/storage_proxy.py)."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from oci_crane_loader.registry.crane import Crane
from oci_crane_loader.registry.local_registry import LocalRegistry
from tests.support import storage_proxy
from tests.support.storage_proxy import StorageProxy


def upload_blob(host: str, data: bytes) -> str:
    """Upload ``data`` as a blob of repository proxy/blob (POST then PUT, as the distribution spec says)."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = urllib.request.Request(f"http://{host}/v2/proxy/blob/blobs/uploads/", method="POST", data=b"")
    with urllib.request.urlopen(start, timeout=30) as response:
        location = urllib.parse.urljoin(f"http://{host}/", response.headers["Location"])
    joiner = "&" if "?" in location else "?"
    finish = urllib.request.Request(f"{location}{joiner}digest={digest}", method="PUT", data=data,
                                    headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(finish, timeout=30) as response:
        assert response.status == 201
    return digest


def get(url: str, **headers: str) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read(), dict(response.headers)


@pytest.fixture
def blob(registry: LocalRegistry) -> tuple[str, bytes]:
    data = bytes(range(256)) * 4096  # 1 MiB
    return upload_blob(registry.host, data), data


def test_blob_get_is_redirected_to_storage_and_ranges_are_honoured(registry: LocalRegistry,
                                                                   blob: tuple[str, bytes]) -> None:
    digest, data = blob
    with StorageProxy(registry.host) as proxy:
        assert upload_blob(proxy.address, b"forwarded") in registry.log()  # POST and PUT go through as is
        status, body, _ = get(f"http://{proxy.address}/v2/proxy/blob/blobs/{digest}",
                              Authorization="Bearer secret-token")
        assert (status, body) == (200, data)
        status, body, headers = get(f"http://{proxy.address}/v2/proxy/blob/blobs/{digest}",
                                    Range="bytes=100-199")
        assert (status, body) == (206, data[100:200])
        assert headers["Content-Range"] == f"bytes 100-199/{len(data)}"
        assert proxy.bytes_served == len(data) + 100
        # urllib keeps Authorization across a redirect to another host: the storage host records that it saw it
        assert [r[1].split("/")[1] for r in proxy.requests] == ["storage", "storage"]
        assert [r[3] for r in proxy.requests] == [True, False]
        assert proxy.requests[1][2] == "bytes=100-199"


def test_storage_host_can_ignore_ranges(registry: LocalRegistry, blob: tuple[str, bytes]) -> None:
    digest, data = blob
    with StorageProxy(registry.host, honour_range=False) as proxy:
        status, body, _ = get(f"http://{proxy.address}/v2/proxy/blob/blobs/{digest}", Range="bytes=0-9")
        assert (status, body) == (200, data)


def test_cut_drops_the_first_stream_once(registry: LocalRegistry, blob: tuple[str, bytes]) -> None:
    digest, data = blob
    with StorageProxy(registry.host, cut_at_fraction=0.5) as proxy:
        with pytest.raises(http.client.IncompleteRead) as cut:
            get(f"http://{proxy.address}/v2/proxy/blob/blobs/{digest}")
        assert len(data) // 2 <= len(cut.value.partial) < len(data)
        assert get(f"http://{proxy.address}/v2/proxy/blob/blobs/{digest}")[1] == data


def test_missing_blob_and_corruption(registry: LocalRegistry, blob: tuple[str, bytes]) -> None:
    digest, data = blob
    with StorageProxy(registry.host, corrupt_blobs=True) as proxy:
        with pytest.raises(urllib.error.HTTPError) as missing:
            get(f"http://{proxy.address}/v2/proxy/blob/blobs/sha256:{'0' * 64}")
        assert missing.value.code == 404
        body = get(f"http://{proxy.address}/v2/proxy/blob/blobs/{digest}")[1]
        assert len(body) == len(data) and body != data
    assert proxy.address and not proxy._servers  # stopped on exit


def test_crane_pulls_through_the_proxy(registry: LocalRegistry, blob: tuple[str, bytes], tmp_path: Path) -> None:
    digest, data = blob
    with StorageProxy(registry.host) as proxy:
        out = tmp_path / "blob.out"
        Crane().blob(f"{proxy.address}/proxy/blob@{digest}", out, size=len(data))
        assert out.read_bytes() == data
        assert proxy.bytes_served == len(data)


def test_each_connection_stays_under_its_cap(registry: LocalRegistry) -> None:
    """The test support itself: by the proxy's own accounting, a body of N bytes sent in T seconds over one
    connection is never more than the token bucket allows, BURST + rate * T (an upper bound, so no slow machine
    can fail it); keep-alive requests on that connection draw from the same bucket."""
    data = os.urandom(3 << 20)
    digest = upload_blob(registry.host, data)
    rate = 8e6
    with StorageProxy(registry.host, rate_per_connection=rate) as proxy:
        status, body, _ = get(f"http://{proxy.address}/v2/proxy/blob/blobs/{digest}")  # fills the storage copy
        assert (status, body) == (200, data)
        ticket_url = urllib.parse.urlsplit(proxy.requests[-1][1])
        connection = http.client.HTTPConnection(proxy.storage_address, timeout=30)
        try:  # one connection, two requests: the second may not start with a fresh bucket
            received = []
            for first, last in ((0, len(data) - 1), (1000, len(data) - 1)):
                connection.request("GET", ticket_url.path, headers={"Range": f"bytes={first}-{last}"})
                response = connection.getresponse()
                received.append(response.read())
        finally:
            connection.close()
        responses = list(proxy.responses)
    assert received == [data, data[1000:]]
    assert [sent for sent, _began, _ended in responses] == [len(data), len(data), len(data) - 1000]
    for sent, began, ended in responses:
        assert sent <= storage_proxy.BURST + rate * (ended - began), (sent, ended - began)
    # the two keep-alive bodies together, from the first's start to the second's end: still one bucket's worth
    (first, began, _), (second, _, ended) = responses[1:]
    assert first + second <= storage_proxy.BURST + rate * (ended - began), (first + second, ended - began)


@pytest.mark.parametrize("tls", [False, True], ids=["sendfile", "tls-copying-loop"])
def test_both_send_paths_serve_the_right_bytes(registry: LocalRegistry, tmp_path: Path, tls: bool) -> None:
    """Plain HTTP sends with os.sendfile in SLICE steps, TLS by the copying loop: ranges that start and end
    inside a slice, cross slice boundaries or run to the end come back exact either way."""
    data = os.urandom(storage_proxy.SLICE * 3 + 12345)
    digest = upload_blob(registry.host, data)
    certificate = _certificate(tmp_path) if tls else None
    context = ssl.create_default_context(cafile=str(certificate[0])) if certificate else None
    with StorageProxy(registry.host, certificate=certificate) as proxy:
        url = f"{proxy.scheme}://{proxy.address}/v2/proxy/blob/blobs/{digest}"
        slice_ = storage_proxy.SLICE
        ranges = [(0, len(data) - 1), (7, 99), (slice_ - 5, 2 * slice_ + 5), (len(data) - 3, len(data) - 1)]
        for first, last in ranges:
            request = urllib.request.Request(url, headers={"Range": f"bytes={first}-{last}"})
            with urllib.request.urlopen(request, timeout=30, context=context) as response:
                assert (response.status, response.read()) == (206, data[first:last + 1])
        assert proxy.bytes_served == sum(last + 1 - first for first, last in ranges)


def _certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl; the one a test trusts as its own CA)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (the TLS case needs a certificate)")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key
