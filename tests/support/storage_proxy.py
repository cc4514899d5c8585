"""A registry whose blobs live on a "CDN": a loopback proxy in front of a real registry, for tests and benches.

The front port forwards every registry request as is (auth headers included), except a blob GET: once the
registry has answered it 200 (so its auth still decides; its yes is remembered per credentials and blob), the
proxy answers 307 to a second port, the storage host, with a one-time path that names the blob. The storage host
``Range: bytes=a-b`` gets 206 (unless ``honour_range=False``: then always 200 and the whole blob), each TCP
connection is capped at ``rate_per_connection`` bytes/s (a token bucket per connection: over any span of T
seconds it sends at most ``BURST + rate * T`` bytes), and ``cut_at_fraction`` drops the connection(s) of a digest
once that fraction of it has been sent (once per digest) to simulate a dropped stream.

A real CDN spends none of the client's CPU; on a small machine this one shares it. So over plain HTTP it sends
with ``os.sendfile`` straight from its copy of the blob, in ``SLICE``-sized steps paced by the cap, which costs
little per byte; TLS and ``corrupt_blobs`` take the copying loop (``CHUNK``-sized reads and writes).
``proxy.responses`` records each body it sent: (bytes, monotonic time of the first byte's turn, of the last
byte's send), the proxy's own accounting that tests check the cap against.

The storage host keeps a copy of each blob it redirected (fetched from the registry on the first GET, in a
temporary directory of its own), so the first GET of a blob costs one extra loopback read; benches that time
through the proxy pull once to warm it.

    with serve_registry() as registry, StorageProxy(registry.host, rate_per_connection=50e6) as proxy:
        Crane().copy(..., f"{proxy.address}/model:v1")
        ...; proxy.bytes_served; proxy.requests  # [(method, path, range, had_authorization), ...]

With ``certificate=(cert_pem, key_pem)`` both ports serve TLS (the Debian registry's test cert fits: its SANs
are 127.0.0.1 and localhost); ``upstream_ca`` is the CA to trust when the upstream is https.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

BLOB_GET = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>sha256:[a-f0-9]{64})$")
RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
CHUNK = 64 * 1024  # the copying loop's step (TLS, corrupt_blobs)
SLICE = 512 * 1024  # the sendfile path's step: large enough to cost little CPU, small enough to pace smoothly
BURST = SLICE  # the token bucket's depth: what a connection may send at once after idling
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class StorageProxy:
    def __init__(self, upstream: str, *, rate_per_connection: float | None = None, redirect_blobs: bool = True,
                 honour_range: bool = True, cut_at_fraction: float | None = None,
                 corrupt_blobs: bool = False, certificate: tuple[Path, Path] | None = None,
                 upstream_ca: Path | None = None, bearer_token: str | None = None,
                 serves_blobs: bool = False) -> None:
        scheme, _, host = upstream.rpartition("://")
        self.upstream_host = host
        self.upstream_tls = (scheme or ("https" if upstream_ca else "http")) == "https"
        self.upstream_context = ssl.create_default_context(cafile=str(upstream_ca)) if upstream_ca else None
        self.rate_per_connection = rate_per_connection
        self.redirect_blobs = redirect_blobs
        self.honour_range = honour_range
        self.cut_at_fraction = cut_at_fraction
        self.corrupt_blobs = corrupt_blobs  # the storage host flips one byte in the middle of every blob
        # A registry that serves blobs itself (no redirect), through the same counted, pausable, cuttable sender
        # as the storage host: Range honoured (unless honour_range=False), cut_at_fraction and the rate cap apply.
        self.serves_blobs = serves_blobs
        self.certificate = certificate
        # A token registry (as ghcr.io or Docker Hub for public pulls): /v2/ wants "Bearer <token>", /token hands
        # it out to anyone; the upstream then sees no Authorization header.
        self.bearer_token = bearer_token
        self.bytes_served = 0
        self.requests: list[tuple[str, str, str | None, bool]] = []  # what the storage host was asked
        self.front_requests: list[tuple[str, str, str | None, bool]] = []
        self.responses: list[tuple[int, float, float]] = []  # storage bodies: (bytes, began, ended), for the cap
        self._lock = threading.Lock()
        self._tickets: dict[str, tuple[str, str]] = {}  # one-time path -> (name, digest)
        self._sent: dict[str, int] = {}  # digest -> body bytes sent so far, for the cut
        self._cut_done: set[str] = set()
        self._in_flight: dict[int, str] = {}  # response id -> digest
        self._doomed: set[int] = set()  # in-flight responses the cut drops
        self._fills: dict[str, threading.Lock] = {}
        # (Authorization header, name, digest) the registry allowed: asked again, the front redirects at once, as
        # a CDN-fronted registry answers from its metadata. (crane registry serve reads a blob through to answer
        # even a HEAD, 0.2 s per 256 MiB of CPU: per range request, it would measure the test registry.)
        self._allowed: set[tuple[str | None, str, str]] = set()
        self._blobs: Path | None = None
        self._servers: list[ThreadingHTTPServer] = []
        self.address = ""
        self.storage_address = ""

    @property
    def scheme(self) -> str:
        return "https" if self.certificate else "http"

    def __enter__(self) -> StorageProxy:
        self._blobs = Path(tempfile.mkdtemp(prefix="storage-proxy-"))
        try:
            storage = self._serve(_StorageHandler)
            self.storage_address = f"127.0.0.1:{storage.server_address[1]}"
            front = self._serve(_FrontHandler)
            self.address = f"127.0.0.1:{front.server_address[1]}"
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()
        if self._blobs is not None:
            shutil.rmtree(self._blobs, ignore_errors=True)
            self._blobs = None

    def _serve(self, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
        server = _Server(("127.0.0.1", 0), handler, self)
        if self.certificate is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(self.certificate[0]), str(self.certificate[1]))
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self._servers.append(server)
        threading.Thread(target=server.serve_forever, name=f"storage-proxy-{handler.__name__}",
                         daemon=True).start()
        return server

    def upstream(self) -> http.client.HTTPConnection:
        host, _, port = self.upstream_host.rpartition(":")
        if self.upstream_tls:
            return http.client.HTTPSConnection(host, int(port), timeout=60, context=self.upstream_context)
        return http.client.HTTPConnection(host, int(port), timeout=60)

    def issue_ticket(self, name: str, digest: str) -> str:
        ticket = secrets.token_urlsafe(12)
        with self._lock:
            self._tickets[ticket] = (name, digest)
        return ticket

    def allow(self, authorization: str | None, name: str, digest: str) -> None:
        with self._lock:
            self._allowed.add((authorization, name, digest))

    def allowed(self, authorization: str | None, name: str, digest: str) -> bool:
        """Whether the registry said yes to this blob for these credentials before (and the blob is held)."""
        with self._lock:
            return (authorization, name, digest) in self._allowed

    def ticket(self, ticket: str) -> tuple[str, str] | None:
        with self._lock:
            return self._tickets.get(ticket)

    def blob_file(self, digest: str) -> Path:
        assert self._blobs is not None
        return self._blobs / digest.replace(":", "-")

    def fill_lock(self, digest: str) -> threading.Lock:
        with self._lock:
            return self._fills.setdefault(digest, threading.Lock())

    def sent_of(self, digest: str) -> int:
        """Body bytes of ``digest`` sent so far, by the storage host or (serves_blobs) the registry itself."""
        with self._lock:
            return self._sent.get(digest, 0)

    def response_started(self, response: int, digest: str) -> None:
        with self._lock:
            self._in_flight[response] = digest

    def count(self, response: int, sent: int, size: int) -> bool:
        """Record ``sent`` body bytes; False when this response must drop now (the cut drops every response
        of the digest in flight when the digest's bytes sent reach the fraction; later ones are served)."""
        with self._lock:
            digest = self._in_flight[response]
            self.bytes_served += sent
            self._sent[digest] = self._sent.get(digest, 0) + sent
            if (self.cut_at_fraction is not None and digest not in self._cut_done
                    and self._sent[digest] >= self.cut_at_fraction * size):
                self._cut_done.add(digest)
                self._doomed |= {other for other, name in self._in_flight.items() if name == digest}
            return response not in self._doomed

    def response_done(self, response: int, sent: int, began: float) -> None:
        with self._lock:
            self._in_flight.pop(response, None)
            self._doomed.discard(response)
            self.responses.append((sent, began, time.monotonic()))


class _Pace:
    """One connection's cap: a token bucket BURST bytes deep, refilled at ``rate`` bytes/s. ``take`` sleeps off
    any debt, so over any span of T seconds the connection sends at most BURST + rate * T bytes."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = float(BURST)
        self.stamp = time.monotonic()

    def take(self, count: int) -> None:
        now = time.monotonic()
        self.tokens = min(float(BURST), self.tokens + (now - self.stamp) * self.rate) - count
        self.stamp = now
        if self.tokens < 0:
            time.sleep(-self.tokens / self.rate)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 proxy: StorageProxy) -> None:
        self.proxy = proxy
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read the counters instead
        pass

    def body(self) -> bytes | None:
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return _read_chunked(self.rfile)
        return self.rfile.read(length) if length else None

    def relay(self, response: http.client.HTTPResponse, body: bytes | None = None) -> None:
        payload = response.read() if body is None else body
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    pace: _Pace | None = None  # this connection's cap (one handler per connection: keep-alive requests share it)

    def serve_blob(self, digest: str) -> None:
        """The blob from the proxy's copy: 206 for a Range (unless honour_range is off), else 200."""
        proxy = self.server.proxy
        path = proxy.blob_file(digest)
        size = path.stat().st_size
        start, end = 0, size - 1
        requested = RANGE.match(self.headers.get("Range", "")) if proxy.honour_range else None
        if requested:
            start = int(requested[1])
            end = min(int(requested[2]), size - 1) if requested[2] else size - 1
            if start >= size or start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes" if proxy.honour_range else "none")
        self.end_headers()
        self.send_bytes(path, digest, start, end, size)

    def send_bytes(self, path: Path, digest: str, start: int, end: int, size: int) -> None:
        proxy = self.server.proxy
        if proxy.rate_per_connection and self.pace is None:
            self.pace = _Pace(proxy.rate_per_connection)
        began = time.monotonic()
        sent = 0
        response = id(self)
        proxy.response_started(response, digest)
        cheap = not proxy.corrupt_blobs and not isinstance(self.connection, ssl.SSLSocket)
        try:
            with path.open("rb") as blob:
                position = start
                while position <= end:
                    length = min(SLICE if cheap else CHUNK, end - position + 1)
                    if self.pace is not None:
                        self.pace.take(length)
                    # Counted before it is written, so a client that has read everything sees it counted.
                    keep_going = proxy.count(response, length, size)
                    if cheap:
                        self.send_file(blob, position, length)
                    else:
                        chunk = bytearray(os.pread(blob.fileno(), length, position))
                        if proxy.corrupt_blobs and position <= size // 2 < position + len(chunk):
                            chunk[size // 2 - position] ^= 0xFF
                        self.wfile.write(chunk)
                    position += length
                    sent += length
                    if not keep_going:
                        self.drop()
                        return
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True
        finally:
            proxy.response_done(response, sent, began)

    def send_file(self, blob: BinaryIO, offset: int, length: int) -> None:
        """``length`` bytes of ``blob`` from ``offset`` to the socket, by the kernel (no copy through Python)."""
        while length > 0:
            done = os.sendfile(self.connection.fileno(), blob.fileno(), offset, length)
            if done == 0:
                raise BrokenPipeError("the blob file ended early")
            offset += done
            length -= done

    def drop(self) -> None:
        """End the response mid-body, like a dropped stream: the client sees fewer bytes than promised."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _FrontHandler(_Handler):
    def send_json(self, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def forward(self) -> None:
        proxy = self.server.proxy
        body = self.body()
        proxy.front_requests.append((self.command, self.path, self.headers.get("Range"),
                                     "Authorization" in self.headers))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if proxy.bearer_token is not None:
            if self.path.startswith("/token"):
                self.send_json({"token": proxy.bearer_token, "expires_in": 300})
                return
            if self.headers.get("Authorization") != f"Bearer {proxy.bearer_token}":
                self.send_response(401)
                self.send_header("WWW-Authenticate",
                                 f'Bearer realm="{proxy.scheme}://{proxy.address}/token",service="storage-proxy"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            headers.pop("Authorization", None)
        blob = BLOB_GET.match(self.path.split("?")[0]) if self.command == "GET" else None
        intercept = proxy.redirect_blobs or proxy.serves_blobs  # the proxy's copy answers, not the registry
        if blob is not None and intercept:
            headers.pop("Range", None)  # the storage host answers the range; the registry only says yes or no
        redirect = blob is not None and intercept
        if redirect and blob is not None and proxy.allowed(self.headers.get("Authorization"), blob["name"],
                                                           blob["digest"]):
            self.answer(blob["name"], blob["digest"])
            return
        connection = proxy.upstream()
        try:
            # A blob the storage host holds already costs the registry a HEAD (its auth still decides), not a GET.
            held = redirect and blob is not None and proxy.blob_file(blob["digest"]).exists()
            connection.request("HEAD" if held else self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            if blob is None or not redirect or response.status != 200:
                self.relay(response, b"" if held else None)
                return
            digest = blob["digest"]
            with proxy.fill_lock(digest):
                target = proxy.blob_file(digest)
                if not target.exists():
                    partial = target.with_suffix(".part")
                    with partial.open("wb") as out:
                        shutil.copyfileobj(response, out, CHUNK)
                    partial.rename(target)
        finally:
            connection.close()
        proxy.allow(self.headers.get("Authorization"), blob["name"], digest)
        self.answer(blob["name"], digest)

    def answer(self, name: str, digest: str) -> None:
        """A blob GET the registry allowed: the bytes themselves (serves_blobs), else a redirect to storage."""
        if self.server.proxy.serves_blobs:
            self.server.proxy.requests.append((self.command, self.path, self.headers.get("Range"),
                                               "Authorization" in self.headers))
            self.serve_blob(digest)
        else:
            self.redirect(name, digest)

    def redirect(self, name: str, digest: str) -> None:
        proxy = self.server.proxy
        ticket = proxy.issue_ticket(name, digest)
        self.send_response(307)
        self.send_header("Location", f"{proxy.scheme}://{proxy.storage_address}/storage/{ticket}/{digest}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = forward


def _read_chunked(stream: Any) -> bytes:
    data = bytearray()
    while True:
        size = int(stream.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            stream.readline()
            return bytes(data)
        data += stream.read(size)
        stream.readline()


class _StorageHandler(_Handler):
    def do_GET(self) -> None:
        proxy = self.server.proxy
        proxy.requests.append((self.command, self.path, self.headers.get("Range"),
                               "Authorization" in self.headers))
        parts = self.path.split("/")
        found = proxy.ticket(parts[2]) if len(parts) == 4 and parts[1] == "storage" else None
        if found is None:
            self.send_error(403, "unknown or expired storage URL")
            return
        self.serve_blob(found[1])
