"""A registry that is a script: a stdlib HTTP server on 127.0.0.1 whose handler decides each answer, for
registries that misbehave in ways a real one cannot be made to (stalls, endless bodies, lying descriptors)."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
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
