"""A slow registry: a TCP proxy on 127.0.0.1 in front of a real one, its answers trickling at a fixed rate, so
that a download lasts long enough for a person (or tmux) to see its progress bars."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

CHUNK = 16 << 10


@contextlib.contextmanager
def throttled(upstream: str, rate: int, *, requests_too: bool = False) -> Iterator[str]:
    """Proxy to ``upstream`` (host:port); each connection's answers (with ``requests_too`` its requests as well,
    for uploads) flow at ``rate`` bytes per second. Yields ``127.0.0.1:PORT``; every socket and thread is closed
    on exit."""
    host, _, port = upstream.rpartition(":")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)  # a blocked accept() is not woken by close(): poll for the stop instead
    stop = threading.Event()
    opened: list[socket.socket] = [listener]

    def pump(source: socket.socket, target: socket.socket, limit: int | None) -> None:
        started, sent = time.monotonic(), 0
        with contextlib.suppress(OSError):
            while not stop.is_set() and (data := source.recv(CHUNK)):
                target.sendall(data)
                sent += len(data)
                if limit is not None:  # sleep until the bytes sent so far are due
                    time.sleep(max(0.0, sent / limit - (time.monotonic() - started)))
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            server = socket.create_connection((host, int(port)))
            opened.extend((client, server))
            threading.Thread(target=pump, args=(client, server, rate if requests_too else None), daemon=True).start()
            threading.Thread(target=pump, args=(server, client, rate), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        for each in opened:
            with contextlib.suppress(OSError):
                each.close()
        thread.join(timeout=5)
