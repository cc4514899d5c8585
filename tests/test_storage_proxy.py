"""The test proxy that puts a registry's blobs behind a "storage host" (tests/support/storage_proxy.py)."""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from oci_crane_loader.crane import Crane
from oci_crane_loader.local_registry import LocalRegistry
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
