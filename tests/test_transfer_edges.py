"""The ranged HTTP road's smaller edges (issue 23): a storage host answering a range with the wrong start or too
few bytes is a network error (retried), never "cannot write the download" with a cache fix; a partial-download
state file with a gap between its parts is not resumed (the hasher would wait for bytes no range fetches)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading

import pytest
from support.scripted_registry import ScriptedRegistry, serve

from oci_crane_loader import errors
from oci_crane_loader.cache.store import Store
from oci_crane_loader.oci import Descriptor
from oci_crane_loader.reference import parse_reference
from oci_crane_loader.registry import transfer
from oci_crane_loader.registry.access import RegistryAccess, RegistryRoutes
from oci_crane_loader.registry.crane import Crane

BLOB = os.urandom(3 << 20)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
DESCRIPTOR = Descriptor(mediaType="application/octet-stream", digest=DIGEST, size=len(BLOB))


def blob_server(mode: str) -> type[ScriptedRegistry]:
    """A registry serving BLOB itself over plain http: ``shifted`` answers each range from the wrong start,
    ``short`` sends half the range it promised, ``honest`` serves ranges as asked."""

    class Server(ScriptedRegistry):
        protocol_version = "HTTP/1.1"
        ranges: list[str] = []

        def do_GET(self) -> None:
            match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
            first, last = (int(match[1]), int(match[2])) if match else (0, len(BLOB) - 1)
            Server.ranges.append(f"{first}-{last}")
            start = first + 1 if mode == "shifted" else first
            body = BLOB[start:last + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{last}/{len(BLOB)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:len(body) // 2] if mode == "short" else body)
            if mode == "short":
                self.close_connection = True

    return Server


def redirecting_to(storage: str) -> type[ScriptedRegistry]:
    """The registry: every blob GET goes to the storage host (as ECR, GHCR and Docker Hub do)."""

    class Registry(ScriptedRegistry):
        def do_GET(self) -> None:
            self.send_response(307)
            self.send_header("Location", f"http://{storage}/storage/{DIGEST}")
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Registry


def download(storage: str, store: Store, tmp_path) -> str:  # type: ignore[no-untyped-def]
    with serve(redirecting_to(storage)) as host:
        return _download(host, store, tmp_path)


def _download(host: str, store: Store, tmp_path) -> str:  # type: ignore[no-untyped-def]
    return transfer.fetch_blob(Crane(RegistryAccess(timeout=10, stall_timeout=10)), RegistryRoutes(),
                               parse_reference(f"{host}/acme/model:v1"), DESCRIPTOR, store.partial_paths(DIGEST),
                               tmp_path / "blob", parts=2, progress=lambda _: None)


@pytest.mark.parametrize("mode", ["shifted", "short"])
def test_a_wrong_or_short_range_is_a_network_error_not_a_cache_error(tmp_path, mode):
    store = Store(tmp_path / "cache")
    with serve(blob_server(mode)) as host, pytest.raises(errors.NetworkError) as caught:
        download(host, store, tmp_path)
    assert not isinstance(caught.value, errors.CacheError)
    assert "cache" not in (caught.value.fix or "")  # said as what happened, not "fix: <cache>"
    assert not (tmp_path / "blob").exists()


def test_a_state_file_with_a_gap_is_not_resumed_and_nothing_hangs(tmp_path):
    store = Store(tmp_path / "cache")
    paths = store.partial_paths(DIGEST)
    half = len(BLOB) // 2
    with open(paths.data, "wb") as handle:  # the first half on disk, as an earlier attempt left it
        handle.write(BLOB[:half])
        handle.truncate(len(BLOB))
    # A gap: nothing covers bytes half .. half + 99, and the state says the first part is done.
    paths.state.write_text(json.dumps({"digest": DIGEST, "parts": [[0, half - 1, half],
                                                                   [half + 100, len(BLOB) - 1, 0]]}))
    server = blob_server("honest")
    server.ranges = []
    with serve(server) as host:
        result: list[object] = []
        worker = threading.Thread(target=lambda: result.append(download(host, store, tmp_path)), daemon=True)
        worker.start()
        worker.join(timeout=60)
    assert not worker.is_alive(), "the download waited for bytes no range fetches"
    assert result == [DIGEST] and (tmp_path / "blob").read_bytes() == BLOB
    assert any(r.startswith("0-") for r in server.ranges)  # started afresh from byte 0: the state was refused
