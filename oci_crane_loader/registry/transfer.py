"""Large blobs as parallel byte ranges over HTTP, resumable, hashed while they arrive (DESIGN.md "Bytes of large
blobs"): object stores cap each connection, and `crane blob` pulls one stream that a dropped connection restarts.

crane stays the registry client. This module GETs one blob with the credentials crane hands over (`crane auth
token` for bearer-token registries, `crane auth get` for basic auth), follows the registry's redirect to its
storage host without the registry's Authorization header, and writes ranges into one preallocated partial file
(tmp/<hex>.partial, under the blob's lock; a state file beside it records how far each range got), which
survives a failed attempt and a killed process: the next attempt resumes from the bytes on disk. Every byte is
hashed before the file is handed back, so a wrong resumed byte costs a retry, never a bad blob.

Whatever this path cannot do (the registry ignores Range, an unknown auth scheme, no httpx) raises Unsupported
before any byte is written, and the caller uses `crane blob`; what `crane blob` wrote before it broke is kept
the same way (``keep_prefix``), so a registry that serves blobs itself is continued with a Range request too.
Errors map to the same typed errors as crane's (failures.py).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from .. import errors
from ..oci import Descriptor
from ..reference import Reference, is_loopback
from . import failures
from .access import RegistryRoutes, origin
from .crane import Crane, redact

if TYPE_CHECKING:
    import httpx

    from ..cache.partial import PartialPaths

log = logging.getLogger(__name__)

MIN_PART = 1 << 20  # no range smaller than this (OCI_CRANE_RANGE_THRESHOLD keeps small blobs off this path)
CHUNK = 1 << 20  # the hashing thread's reads are up to 4 of these
WRITE_EVERY = 256 << 10  # a range writes (and tells the hasher and progress) once this much arrived, not per
# 64 KiB chunk httpx hands over: fewer syscalls, lock round trips and hasher wake-ups at hundreds of MB/s
STATE_EVERY = 0.5  # seconds between saves of the state file
MAX_REDIRECTS = 5
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.docker.distribution.manifest.list.v2+json")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class Unsupported(Exception):
    """The HTTP path cannot fetch this blob; `crane blob` can."""


@dataclass
class Part:
    start: int
    end: int  # inclusive
    done: int = 0  # bytes written from start on (never more than pwrite has returned)

    @property
    def remaining(self) -> int:
        return self.end - self.start + 1 - self.done


def fetch_blob(crane: Crane, routes: RegistryRoutes, reference: Reference, descriptor: Descriptor,
               partial: PartialPaths, destination: Path, *, parts: int, progress: Callable[[int], None],
               cancel: threading.Event | None = None,
               http: tuple[str, str, tuple[tuple[str, str], ...]] | None = None) -> str:
    """Download ``descriptor``'s blob into ``destination`` by way of ``partial`` (the cache's paths for it: kept on
    failure, for resuming); returns its sha256 digest, checked against the descriptor (IntegrityError and the
    partial deleted if not). ``crane`` carries the connection policy (``crane.access``) and hands over
    credentials; ``routes`` is what this fetch has learnt of the registry's storage host."""
    crane.access.require_network(f"the download of {reference.with_digest(descriptor.digest)}")
    _await_probe(routes, reference.registry, cancel)
    try:
        return _fetch(crane, routes, reference, descriptor, partial, destination, parts, progress, cancel, http)
    finally:
        routes.probe_done(reference.registry)  # whatever happened before the first response: the others may go on


def _fetch(crane: Crane, routes: RegistryRoutes, reference: Reference, descriptor: Descriptor, partial: PartialPaths,
           destination: Path, parts: int, progress: Callable[[int], None], cancel: threading.Event | None,
           http: tuple[str, str, tuple[tuple[str, str], ...]] | None) -> str:
    if reference.registry in routes.serves_blobs_itself and not partial.data.exists() and http is None:
        raise Unsupported(f"{reference.registry} serves blobs itself, where one crane stream is faster")
    try:
        httpx = quiet_httpx()
    except ImportError as exc:
        raise Unsupported("httpx is not installed") from exc
    session = _Session(crane, reference, httpx, http)
    try:
        download = _Download(session, routes, descriptor, partial, parts, progress, cancel)
        try:
            return download.run(destination)
        except errors.IntegrityError:
            if not download.resumed:
                raise
            # Bytes an earlier attempt left were wrong (a power loss under the partial file): once more, from zero.
            log.warning("the resumed download of %s did not verify; downloading it again", descriptor.digest)
            progress(-download.counted)
            return _Download(session, routes, descriptor, partial, parts, progress, cancel).run(destination)
    finally:
        session.close()


def probe_early(crane: Crane, routes: RegistryRoutes, reference: Reference, small: Descriptor) -> None:
    """Find out in a background thread, before any large blob starts, whether the registry hands blob GETs to a
    storage host, by asking for the first byte of ``small`` (the smallest layer). The large downloads from this
    registry wait for the answer (_await_probe), so none of them has to ask with a large blob: a registry that
    reads a whole blob before it answers (`crane registry serve` does) costs no more than a round trip, and the
    HTTP client loads while the small layers download. Registries redirect all blobs alike (ECR, GHCR, Docker Hub,
    a distribution registry on S3); one that served only small blobs itself would just get `crane blob` for all.
    A probe that fails (auth, TLS, a refused range) decides nothing: each large download finds out itself.
    Offline, nothing is asked."""
    if crane.access.offline or reference.registry in routes.serves_blobs_itself:
        return
    if routes.claim_probe(reference.registry) is not None:
        return

    def ask() -> None:
        try:
            session = _Session(crane, reference, quiet_httpx())
            try:
                response = session.open(small.digest, 0, 0)
                if session.at_registry(str(response.url)):
                    routes.serves_blobs_itself.add(reference.registry)
                response.close()
            finally:
                session.close()
        except Exception as exc:  # best effort: undecided, each large download finds out for itself
            log.debug("probing %s for a storage host failed: %s", reference.registry, exc)
        finally:
            routes.probe_done(reference.registry)

    threading.Thread(target=ask, name="oci-crane-probe", daemon=True).start()


def get_manifest(crane: Crane, reference: Reference, tag_or_digest: str,
                 http: tuple[str, str, tuple[tuple[str, str], ...]], limit: int) -> bytes:
    """A manifest from an endpoint only the HTTP road reaches (a mirror that needs containerd's ``ns``, headers,
    or another API root); the caller checks it against its digest."""
    crane.access.require_network(f"GET the manifest of {reference.repository_name}:{tag_or_digest}")
    session = _Session(crane, reference, quiet_httpx(), http)
    try:
        return session.manifest(tag_or_digest, limit)
    finally:
        session.close()


def get_referrers(crane: Crane, reference: Reference, digest: str, limit: int) -> bytes:
    """The OCI 1.1 referrers index of ``digest`` (GET /v2/<repo>/referrers/<digest>; crane has no command for
    it), read up to ``limit`` bytes; NotFoundError where the registry has no referrers API."""
    crane.access.require_network(f"GET the referrers of {reference.with_digest(digest)}")
    session = _Session(crane, reference, quiet_httpx())
    try:
        return session.document(f"referrers/{digest}", limit, f"the referrers of {reference.with_digest(digest)}")
    finally:
        session.close()


def quiet_httpx() -> Any:
    """httpx, imported when a ranged download or a probe needs it, its loggers quieted: they log every URL (a
    presigned one's signature too) and headers."""
    import httpx

    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return httpx


def _await_probe(routes: RegistryRoutes, registry: str, cancel: threading.Event | None) -> None:
    """The first download from ``registry`` in this fetch returns at once (it probes: _Download.run sets the
    event); later ones wait until it has."""
    probed = routes.claim_probe(registry)
    if probed is None:
        return
    while not probed.wait(0.1):
        if cancel is not None and cancel.is_set():
            raise errors.CancelledError(f"download from {registry} was cancelled")


def keep_prefix(written: Path, partial: PartialPaths, descriptor: Descriptor) -> int:
    """Keep what one stream (`crane blob`, which writes a blob from its first byte on) wrote before it broke or
    was stopped, as a partial download that the next attempt continues with one Range request from the last
    byte on disk, whichever registry serves it. Returns the bytes kept; 0 when there was nothing worth keeping
    (then nothing is kept). The bytes are hashed with the rest before the blob is handed out, as any resumed
    bytes are."""
    try:
        size = written.lstat().st_size
    except FileNotFoundError:
        return 0
    if not 0 < size < descriptor.size:
        return 0
    if not partial.adopt(written, descriptor.size):  # preallocated (sparse), as a ranged download's partial file
        return 0
    partial.save_state({"digest": descriptor.digest, "parts": [[0, descriptor.size - 1, size]]})
    return size


# --- HTTP: scheme, TLS, credentials, redirects ------------------------------------------------------------------

class _Session:
    """One registry repository over HTTP, under the Crane's connection policy: its scheme, and its Authorization
    header (asked of crane once, on the first 401), sent to the registry's own origin only."""

    def __init__(self, crane: Crane, reference: Reference, httpx_module: Any,
                 http: tuple[str, str, tuple[tuple[str, str], ...]] | None = None) -> None:
        """``http``: for a mirror only this road reaches (sources.Source.http): its API root URL, the query every
        request carries (containerd's ``?ns=``) and the headers its configuration adds (to it alone)."""
        self.crane = crane
        self.access = crane.access
        self.reference = reference
        self.httpx = httpx_module
        self.host = "index.docker.io" if reference.registry == "docker.io" else reference.registry
        self.api_root: str | None = http[0] if http else None
        self.query: str = http[1] if http else ""
        self.extra_headers: tuple[tuple[str, str], ...] = http[2] if http else ()
        # Go's proxy rules never proxy loopback; HTTP(S)_PROXY / NO_PROXY otherwise apply as they do for crane.
        timeout = httpx_module.Timeout(self.access.timeout, read=self.access.stall_timeout)
        self.client: httpx.Client = httpx_module.Client(
            verify=self.access.tls_verify(), trust_env=not is_loopback(self.host), follow_redirects=False,
            timeout=timeout, limits=httpx_module.Limits(max_connections=64, max_keepalive_connections=16))
        self.schemes = self.access.schemes(self.host) if self.api_root is None else [urlsplit(self.api_root).scheme]
        self.authorization: str | None = None
        self._lock = threading.Lock()
        self._secrets: list[str] = [value for _, value in self.extra_headers]

    def close(self) -> None:
        self.client.close()

    def blob_url(self) -> str:
        return self._repository_url() + "/blobs/"

    def _repository_url(self) -> str:
        if self.api_root is not None:
            return f"{self.api_root}/{self.reference.repository}"
        return f"{self.schemes[0]}://{self.host}/v2/{self.reference.repository}"

    def at_registry(self, url: str) -> bool:
        """Whether ``url`` is the registry's own origin (scheme, host and port, as the registry is spoken to now):
        the only place credentials go. A redirect to another host, another port, or from https to http on the
        same host is not: a token never leaves the registry, and never travels in cleartext unless the registry
        itself speaks plain http."""
        return origin(url) == origin(self.blob_url())

    def open(self, digest: str, first: int, last: int) -> httpx.Response:
        """GET bytes first..last of the blob, following redirects; the Authorization header goes to the registry's
        origin only, never to a storage host. Returns the open, streaming response (200 or 206: the caller closes
        it); any other answer raises the typed error crane's path would (registry/failures.py)."""
        # Ranges of the stored bytes: no content coding.
        return self._follow(self.blob_url() + digest + self.query,
                            {"Range": f"bytes={first}-{last}", "Accept-Encoding": "identity"})

    def manifest(self, tag_or_digest: str, limit: int) -> bytes:
        """The manifest (or index) document for ``tag_or_digest``, read up to ``limit`` bytes (more: refused)."""
        return self.document(f"manifests/{tag_or_digest}", limit, f"the manifest of {self.reference}")

    def document(self, path: str, limit: int, what: str) -> bytes:
        """A JSON document of the repository's API (``manifests/...``, ``referrers/...``), up to ``limit`` bytes."""
        response = self._follow(f"{self._repository_url()}/{path}{self.query}", {"Accept": ", ".join(MANIFEST_TYPES)})
        try:
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > limit:
                    raise errors.InvalidDocumentError(f"{what} is over {limit} bytes",
                                                      "check the reference: the registry or mirror is broken or "
                                                      "hostile")
            return bytes(data)
        except self.httpx.HTTPError as exc:
            raise self.network_error(exc, str(response.url)) from None
        finally:
            response.close()

    def _follow(self, url: str, base_headers: dict[str, str]) -> httpx.Response:
        for _hop in range(MAX_REDIRECTS + 2):
            headers = dict(base_headers)
            to_registry = self.at_registry(url)
            if to_registry:
                headers.update(self.extra_headers)
                if self.authorization:
                    headers["Authorization"] = self.authorization
            response, url = self._request(url, headers)
            to_registry = self.at_registry(url)  # the scheme may have fallen back to http (loopback, private)
            if response.status_code in (301, 302, 303, 307, 308) and "location" in response.headers:
                response.close()
                url = urljoin(url, response.headers["location"])
                continue
            if response.status_code == 401 and to_registry and "Authorization" not in headers:
                challenge = response.headers.get("www-authenticate", "")
                response.close()
                self._authorize(challenge)
                continue
            if response.status_code in (200, 206):
                return response
            response.close()
            raise failures.status_error(response.status_code, shown_url(url), from_registry=to_registry,
                                        retry_after=response.headers.get("retry-after"))
        raise errors.NetworkError(f"more than {MAX_REDIRECTS} redirects for {shown_url(url)}")

    def _request(self, url: str, headers: dict[str, str]) -> tuple[httpx.Response, str]:
        while True:
            self.access.require_network(f"GET {shown_url(url)}")  # every request, redirects included
            try:
                return self.client.send(self.client.build_request("GET", url, headers=headers), stream=True), url
            except self.httpx.ConnectError as exc:
                # crane's fallback: a loopback or private registry that does not speak TLS is asked over http
                if url.startswith("https:") and len(self.schemes) > 1 and self.at_registry(url):
                    with self._lock:
                        if self.schemes[0] == "https":
                            self.schemes.pop(0)
                    url = "http" + url[len("https"):]
                    headers.pop("Authorization", None)  # asked again for the http origin, on its 401
                    continue
                raise self.network_error(exc, url) from None
            except self.httpx.HTTPError as exc:
                raise self.network_error(exc, url) from None

    def _authorize(self, challenge: str) -> None:
        with self._lock:
            if self.authorization is not None:
                raise errors.UnauthorizedError(f"the registry refused our credentials for {self.reference}")
            scheme = challenge.split(" ", 1)[0].lower()
            if scheme == "bearer":
                token = self.crane.auth_token(self.reference.repository_name)
                self._secrets.append(token)
                self.authorization = f"Bearer {token}"
            elif scheme == "basic":
                found = self.crane.auth_basic(self.host)
                if found is None:
                    raise errors.UnauthorizedError(f"{self.host} asks for a login and none is configured "
                                                   f"(pulling {self.reference})")
                encoded = base64.b64encode(f"{found[0]}:{found[1]}".encode()).decode()
                self._secrets += [found[1], encoded]
                self.authorization = f"Basic {encoded}"
            else:
                raise Unsupported(f"unknown auth challenge {scheme!r}")

    def network_error(self, exc: BaseException, url: str) -> errors.CraneError:
        text = redact(f"{type(exc).__name__}: {exc}", self._secrets)
        if isinstance(exc, self.httpx.TimeoutException):
            return errors.CraneTimeoutError(f"download from {shown_url(url)} stalled or timed out ({text})")
        if re.search(r"CERTIFICATE|SSL|TLS|certificate", text):
            return failures.TLS.error(f"TLS handshake with {shown_url(url)} failed: {text}")
        return failures.NETWORK.error(f"download from {shown_url(url)} failed: {text}")


def shown_url(url: str) -> str:
    """A URL fit for an error: no query string (presigned storage URLs carry their signature there)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


# --- the download ---------------------------------------------------------------------------------------------

class _Download:
    """One attempt. The partial file is opened once (by the cache's PartialPaths: never through a symlink, resumed
    only if it is ours); every range thread and the hasher get their own duplicate of that descriptor, so a thread
    that outlives run() never touches a reused descriptor number, and no thread opens the path again."""

    def __init__(self, session: _Session, routes: RegistryRoutes, descriptor: Descriptor, partial: PartialPaths,
                 parts: int,
                 progress: Callable[[int], None], cancel: threading.Event | None) -> None:
        self.session = session
        self.routes = routes
        self.descriptor = descriptor
        self.paths = partial
        self.fd = -1  # the partial file, open for reading and writing (set by _resume or _plan)
        self.progress = progress
        self.cancel = cancel
        self.stop = threading.Event()
        self.moved = threading.Condition()
        self.failures: list[BaseException] = []
        self.counted = 0  # bytes reported to progress, for a caller that starts again
        self.resumed = 0  # bytes on disk from an earlier attempt
        self.parts = self._resume() or self._plan(parts)

    def _plan(self, parts: int) -> list[Part]:
        size = self.descriptor.size
        count = max(1, min(parts, size // MIN_PART))
        step = -(-size // count)
        self.fd = self.paths.create(size)  # preallocated (sparse): every range writes at its own offset
        return [Part(start, min(start + step, size) - 1) for start in range(0, size, step)]

    def _resume(self) -> list[Part] | None:
        """The parts of an earlier attempt on this blob, if its partial file and state agree with the descriptor."""
        state = self.paths.load_state()
        try:
            if state is None or state["digest"] != self.descriptor.digest:
                return None
            parts = [Part(int(a), int(b), int(c)) for a, b, c in state["parts"]]
        except (ValueError, KeyError, TypeError):
            return None
        # Contiguous parts covering the blob, each within its bounds: a gap would leave bytes no range fetches,
        # and the hasher would wait for them for ever.
        if not parts or parts[0].start != 0 or parts[-1].end != self.descriptor.size - 1 or any(
                part.remaining < 0 or part.done < 0 for part in parts) or any(
                later.start != earlier.end + 1 for earlier, later in itertools.pairwise(parts)):
            return None
        fd = self.paths.resume(self.descriptor.size)  # None: not there, not ours, or not the blob's size
        if fd is None:
            return None
        self.fd = fd
        self.resumed = sum(part.done for part in parts)
        log.info("resuming %s from %d of %d bytes on disk", self.descriptor.digest, self.resumed,
                 self.descriptor.size)
        return parts

    def _advance(self, delta: int) -> None:
        with self.moved:
            self.counted += delta
        self.progress(delta)

    def _save_state(self) -> None:
        self.paths.save_state({"digest": self.descriptor.digest,
                               "parts": [[p.start, p.end, p.done] for p in self.parts]})

    def run(self, destination: Path) -> str:
        try:
            return self._run(destination)
        finally:
            os.close(self.fd)

    def _run(self, destination: Path) -> str:
        pending = [part for part in self.parts if part.remaining > 0]
        first = None
        if pending:
            # The first request tells whether ranges work at all, before any other starts or a byte is written.
            start = pending[0].start + pending[0].done
            try:
                first = self.session.open(self.descriptor.digest, start, pending[0].end)
                if first.status_code == 200 and not (start == 0 and pending[0].end == self.descriptor.size - 1):
                    first.close()
                    self.paths.discard()  # what is on disk cannot be continued here: crane starts from zero
                    self.routes.ignores_range.add(self.session.reference.registry)
                    raise Unsupported("the registry ignores Range requests")
                # A mirror only this road reaches (api_root set: containerd's ?ns=, headers) has no crane stream
                # to hand over to: a blob it serves itself is read here.
                if self.session.at_registry(str(first.url)) and not self.resumed and self.session.api_root is None:
                    first.close()
                    self.routes.serves_blobs_itself.add(self.session.reference.registry)
                    raise Unsupported("the registry serves the blob itself, where one crane stream is faster")
            except BaseException:
                if not self.resumed:
                    self.paths.discard()  # nothing to resume: no file left behind
                raise
            finally:
                self.routes.probe_done(self.session.reference.registry)
        self._advance(self.resumed)
        hasher = _Hasher(self)
        workers = [threading.Thread(target=self._worker, args=(part, first if index == 0 else None, os.dup(self.fd)),
                                    name="oci-crane-range", daemon=True) for index, part in enumerate(pending)]
        try:
            for thread in [hasher.thread, *workers]:
                thread.start()
            self._wait(workers)
            if not self.failures:
                hasher.thread.join()
        finally:
            self.stop.set()
            with self.moved:
                self.moved.notify_all()
            for thread in workers:
                thread.join(timeout=5)
            with contextlib.suppress(OSError):
                self._save_state()
        if self.failures:
            raise self.failures[0]
        if hasher.digest != self.descriptor.digest:
            self.paths.discard()
            raise errors.IntegrityError(
                f"blob {self.session.reference.with_digest(self.descriptor.digest)} has digest "
                f"{hasher.digest}")
        os.replace(self.paths.data, destination)
        self.paths.state.unlink(missing_ok=True)
        moved, ours = os.stat(destination, follow_symlinks=False), os.fstat(self.fd)
        if (moved.st_dev, moved.st_ino) != (ours.st_dev, ours.st_ino):  # someone swapped the name meanwhile
            raise errors.CacheError(f"{self.paths.data} was replaced by another file while downloading",
                                    f"make sure only trusted users can write {self.paths.cache_root}; fetch again")
        return hasher.digest

    def _cancelled(self) -> bool:
        if self.cancel is not None and self.cancel.is_set():
            self.failures.append(errors.CancelledError(f"download of {self.descriptor.digest} was cancelled"))
            return True
        return False

    def _wait(self, workers: list[threading.Thread]) -> None:
        """Until every range is in, a range failed or ``cancel`` is set; saves the state file now and then."""
        last_save = time.monotonic()
        while not self._cancelled() and not self.failures:
            alive = [thread for thread in workers if thread.is_alive()]
            if not alive:
                return
            alive[0].join(timeout=0.1)
            if time.monotonic() - last_save > STATE_EVERY:
                with contextlib.suppress(OSError):  # only resuming would suffer; the download goes on
                    self._save_state()
                last_save = time.monotonic()

    def _worker(self, part: Part, opened: httpx.Response | None, fd: int) -> None:
        response = opened
        try:
            with open(fd, "r+b") as out:  # this thread's own duplicate of the partial file's descriptor
                if response is None:
                    response = self.session.open(self.descriptor.digest, part.start + part.done, part.end)
                self._check_range(response, part)
                held: list[bytes] = []  # arrived, not yet written: written before any exit, so a cut loses none
                held_bytes = 0
                try:
                    # iter_raw: the stored bytes as read from the socket (identity was asked for; no decoder)
                    for chunk in response.iter_raw():
                        if self.stop.is_set():
                            return
                        if held_bytes + len(chunk) > part.remaining:
                            raise errors.IntegrityError(
                                f"the registry sent more than the {self.descriptor.size} bytes the descriptor of "
                                f"{self.descriptor.digest} promises; download stopped")
                        held.append(chunk)
                        held_bytes += len(chunk)
                        if held_bytes >= WRITE_EVERY:
                            self._write(out.fileno(), part, held)
                            held_bytes = 0
                finally:
                    if held:  # even when another range failed: they are good bytes the next attempt keeps
                        self._write(out.fileno(), part, held)
                if part.remaining:
                    raise errors.NetworkError(f"the download of {self.descriptor.digest} ended early: "
                                              f"{part.remaining} bytes of a range missing")
        except self.session.httpx.HTTPError as exc:
            self.failures.append(self.session.network_error(exc, self.session.blob_url()))
        except errors.OciCraneError as exc:  # a wrong or short range: a NetworkError, an OSError too, retried
            self.failures.append(exc)
        except OSError as exc:  # a full disk, say: the fix that fits its errno
            self.failures.append(errors.cache_os_error(exc, f"write the download of {self.descriptor.digest}",
                                                       self.paths.cache_root))
        except BaseException as exc:
            self.failures.append(exc)
        finally:
            if response is not None:
                response.close()
            with self.moved:
                self.moved.notify_all()

    def _write(self, fd: int, part: Part, held: list[bytes]) -> None:
        """Write the ``held`` chunks where the part's bytes on disk end (and empty the list); tell the hasher and
        progress."""
        count = sum(map(len, held))
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        written = 0
        while written < count:  # a regular file writes all but on a full disk (then OSError)
            written += os.pwrite(fd, memoryview(data)[written:], part.start + part.done + written)
        with self.moved:
            part.done += count
            self.moved.notify_all()
        self._advance(count)

    def _check_range(self, response: httpx.Response, part: Part) -> None:
        if response.status_code == 200:
            return  # the whole blob, asked for as one range from 0 (run() checked)
        match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", ""))
        if match is None or int(match[1]) != part.start + part.done:
            raise errors.NetworkError(f"the storage host answered a range request for {self.descriptor.digest} "
                                      f"with the wrong range ({response.headers.get('content-range')!r})")
        if match[3] != "*" and int(match[3]) != self.descriptor.size:
            raise errors.IntegrityError(f"blob {self.descriptor.digest} is {match[3]} bytes but its descriptor "
                                        f"says {self.descriptor.size}")


class _Hasher:
    """Hashes the file in order, following the downloaded bytes: while later ranges still arrive, the bytes
    before them are read back from the page cache, so hashing overlaps the download instead of following it."""

    def __init__(self, download: _Download) -> None:
        self.download = download
        self.digest = ""
        self.fd = os.dup(download.fd)  # its own: closed when the thread ends, whenever that is
        self.thread = threading.Thread(target=self._run, name="oci-crane-hash", daemon=True)

    def _available(self, offset: int) -> int:
        """How many bytes from ``offset`` on are on disk."""
        for part in self.download.parts:
            if part.start <= offset <= part.end:
                return part.start + part.done - offset
        return 0

    def _run(self) -> None:
        download = self.download
        sha = hashlib.sha256()
        offset = 0
        try:
            with open(self.fd, "rb") as source:
                while offset < download.descriptor.size and not download.stop.is_set():
                    with download.moved:
                        ready = self._available(offset)
                        if ready <= 0:
                            if download.failures:
                                return
                            download.moved.wait(timeout=0.2)
                            continue
                    while ready > 0:
                        data = os.pread(source.fileno(), min(ready, 4 * CHUNK), offset)
                        if not data:  # someone truncated it under us
                            download.failures.append(errors.IntegrityError(
                                f"{download.paths.data} shrank below {offset + ready} bytes while downloading"))
                            return
                        sha.update(data)
                        offset += len(data)
                        ready -= len(data)
        except OSError as exc:
            download.failures.append(errors.cache_os_error(exc, f"hash the download of {download.descriptor.digest}",
                                                           download.paths.cache_root))
            return
        if offset == download.descriptor.size:
            self.digest = "sha256:" + sha.hexdigest()
