"""A registry that is a script: a stdlib HTTP server on 127.0.0.1 whose handler decides each answer, for
registries that misbehave in ways a real one cannot be made to (stalls, endless bodies, lying descriptors), and
``rate_limited``: 429 (or 503) with Retry-After for the first N requests, then a real registry behind it."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class ScriptedRegistry(BaseHTTPRequestHandler):
    """Subclasses implement do_GET; HEAD answers like GET without the body."""

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def send_document(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Docker-Content-Digest", digest(body))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def send_answer(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        """``status`` with ``body`` and the upstream's ``headers`` (but its framing: ours is Content-Length)."""
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)


@contextlib.contextmanager
def serve(handler: type[ScriptedRegistry], before_stop: threading.Event | None = None) -> Iterator[str]:
    """Serve ``handler`` on a free loopback port; yields ``127.0.0.1:PORT``. ``before_stop`` is set first, to
    release handlers that wait on it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        if before_stop is not None:
            before_stop.set()
        server.shutdown()
        server.server_close()


@dataclass
class Throttle:
    """What ``rate_limited`` did: each request as (method, path, status), in order."""

    requests: list[tuple[str, str, int]] = field(default_factory=list)

    def statuses(self) -> list[int]:
        return [status for _, _, status in self.requests]


def rate_limited(upstream: str, first: int, retry_after: str = "1", status: int = 429, only: str = "",
                 ) -> tuple[type[ScriptedRegistry], Throttle]:
    """A handler that answers the first ``first`` requests ``status`` (429, or 503) with ``Retry-After:
    retry_after`` and a registry error body, then forwards every request to ``upstream`` (host:port, plain http,
    e.g. `crane registry serve`) unchanged. ``only``: refuse only GETs whose path contains it (``/blobs/``),
    counting those alone. Serve it with ``serve(handler)``; the Throttle records what happened."""
    record = Throttle()
    lock = threading.Lock()

    class RateLimited(ScriptedRegistry):
        def do_GET(self) -> None:
            with lock:
                refused = sum(1 for entry in record.requests if entry[2] == status)
                limited = not only or (self.command == "GET" and only in self.path)
                refuse = limited and refused < first
                if refuse:
                    record.requests.append((self.command, self.path, status))
            if refuse:
                body = json.dumps({"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]}).encode()
                self.send_response(status)
                self.send_header("Retry-After", retry_after)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)
                return
            answer_status, body, headers = _forward(upstream, self.command, self.path, dict(self.headers.items()))
            with lock:
                record.requests.append((self.command, self.path, answer_status))
            self.send_answer(answer_status, body, headers)

    return RateLimited, record


def referrers_api(upstream: str) -> tuple[type[ScriptedRegistry], Throttle]:
    """A registry with the OCI 1.1 referrers API in front of one without it (``upstream``, host:port, plain http):
    ``GET /v2/<name>/referrers/<digest>`` answers the index the upstream holds under the tag schema
    (``sha256-<hex>``; an empty index when none), and that tag itself answers 404, so a client can only find the
    referrers through the API. Everything else is forwarded unchanged."""
    record = Throttle()
    lock = threading.Lock()
    index_type = "application/vnd.oci.image.index.v1+json"

    class Referrers(ScriptedRegistry):
        def do_GET(self) -> None:
            name, _, rest = self.path.removeprefix("/v2/").partition("/referrers/")
            if rest.startswith("sha256:"):
                tag = rest.split("?")[0].replace(":", "-")
                status, body, _ = _forward(upstream, "GET", f"/v2/{name}/manifests/{tag}", {"Accept": index_type})
                if status != 200:
                    body = json.dumps({"schemaVersion": 2, "mediaType": index_type, "manifests": []}).encode()
                self._answer(200, body, [("Content-Type", index_type)])
            elif "/manifests/sha256-" in self.path:
                self._answer(404, b'{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "no such tag"}]}',
                             [("Content-Type", "application/json")])
            else:
                status, body, headers = _forward(upstream, self.command, self.path, dict(self.headers.items()))
                self._answer(status, body, headers)

        def _answer(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
            with lock:
                record.requests.append((self.command, self.path, status))
            self.send_answer(status, body, headers)

    return Referrers, record


def _forward(upstream: str, method: str, path: str,
             headers: dict[str, str]) -> tuple[int, bytes, list[tuple[str, str]]]:
    connection = http.client.HTTPConnection(upstream, timeout=30)
    try:
        connection.request(method, path, headers={k: v for k, v in headers.items()
                                                  if k.lower() not in ("host", "connection")})
        answer = connection.getresponse()
        return answer.status, answer.read(), answer.getheaders()
    finally:
        connection.close()
