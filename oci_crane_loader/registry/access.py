"""How this process may reach registries: one value, built where a command's options are parsed, handed to both
roads to a registry (crane, in crane.py, and the ranged HTTP downloads, in transfer.py).

Every request either road makes first passes ``RegistryAccess.require_network``: with ``offline`` set nothing
leaves the machine, whichever path asks (a manifest, a token, a probe, a byte range). What the HTTP road learns
about a registry while it works (whether it redirects blobs to a storage host) lives in a ``RegistryRoutes``
owned by one fetch, keyed by registry origin, so that one fetch's answers, or its permission to ask, never carry
into another's.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .. import errors
from ..reference import may_fall_back_to_http
from ..settings import Settings, settings

if TYPE_CHECKING:  # ssl is imported when a TLS context is made: most fetches never make one
    import ssl

DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class RegistryAccess:
    """The connection policy of one command. Build it with ``registry_access`` (options.py does), which checks
    the combination; the fields are final."""

    offline: bool = False  # never the network: --offline or OCI_CRANE_OFFLINE=1
    insecure: bool = False  # skip TLS verification, allow http (crane --insecure)
    plain_http: bool = False  # the registry speaks http (crane has no such flag: --insecure is the nearest)
    ca_file: Path | None = None  # a private CA to trust besides the system's
    authfile: Path | None = None  # the credentials file; None: the one crane finds (keychain.py)
    timeout: float = Settings.timeout  # one request or crane command
    stall_timeout: float = Settings.stall_timeout  # a download with no byte for this long is stopped
    retries: int = Settings.retries  # new tries of a blob download whose stream broke
    # A tag the registry cannot be reached for is served from the cache's last fetch of it (sourcing.py).
    outage_fallback: bool = True
    # containerd's hosts roots for mirrors (OCI_CRANE_HOSTS_DIR); () is the default, /etc/containerd/certs.d
    hosts_dirs: tuple[Path, ...] = ()

    def require_network(self, what: str) -> None:
        """The one gate every registry request passes: OfflineError under --offline, naming what was refused."""
        if self.offline:
            raise errors.OfflineError(f"offline mode forbids {what}: the model is not fully cached")

    def online(self) -> RegistryAccess:
        """The same policy with the network allowed (login and push, which have no offline mode)."""
        return replace(self, offline=False)

    def schemes(self, host: str) -> list[str]:
        """The schemes to try for ``host``, in order: http alone for --plain-http; https then http where crane
        (ggcr's pkg/name) falls back (--insecure, loopback, private addresses); else https only."""
        if self.plain_http:
            return ["http"]
        return ["https", "http"] if may_fall_back_to_http(host, self.insecure) else ["https"]

    def tls_verify(self) -> ssl.SSLContext | bool:
        """TLS for the HTTP road, as crane verifies: nothing for --insecure, the system store plus ``ca_file``,
        which honours SSL_CERT_FILE / SSL_CERT_DIR."""
        if self.insecure:
            return False
        return _context(str(self.ca_file) if self.ca_file else None, os.environ.get("SSL_CERT_FILE"),
                        os.environ.get("SSL_CERT_DIR"))


def registry_access(*, offline: bool = False, insecure: bool = False, plain_http: bool = False,
                    ca_file: str | Path | None = None, authfile: str | Path | None = None,
                    timeout: float | None = None, stall_timeout: float | None = None, retries: int | None = None,
                    environment: Settings | None = None) -> RegistryAccess:
    """The policy from a command's options, checked once; what an option leaves out comes from ``environment``
    (the OCI_CRANE_* settings; read now when not given): OCI_CRANE_OFFLINE, _TIMEOUT, _STALL_TIMEOUT, _RETRIES,
    _NO_OUTAGE_FALLBACK, _HOSTS_DIR."""
    environment = environment if environment is not None else settings()
    return RegistryAccess(
        offline=offline or environment.offline, insecure=insecure, plain_http=plain_http,
        ca_file=check_connection(insecure=insecure, plain_http=plain_http, ca_file=ca_file),
        authfile=check_authfile(authfile), timeout=timeout or environment.timeout,
        stall_timeout=stall_timeout or environment.stall_timeout,
        retries=environment.retries if retries is None else retries,
        outage_fallback=not environment.no_outage_fallback, hosts_dirs=environment.hosts_dirs)


def check_connection(*, insecure: bool, plain_http: bool, ca_file: str | Path | None) -> Path | None:
    """Refuse what crane cannot honour; ``ca_file`` as a checked Path. crane has one switch, --insecure, which
    both allows plain http and skips TLS verification: --plain-http is passed as it, so a CA to verify with
    means nothing beside either; and on macOS Go verifies with the system keychain only, never a file."""
    if ca_file is None or str(ca_file) == "":
        return None
    if insecure or plain_http:
        flag = "--insecure" if insecure else "--plain-http"
        raise errors.UsageError(f"--ca-file and {flag} contradict each other: {flag} makes crane skip TLS "
                                "verification, so the CA would never be checked",
                                "keep --ca-file for a registry with a private CA, or drop it for a plain-http one")
    path = Path(ca_file).expanduser()
    if sys.platform == "darwin":
        raise errors.UsageError(
            "--ca-file cannot be honoured on macOS: crane (Go) verifies TLS with the system keychain only",
            f"trust the CA in the keychain: sudo security add-trusted-cert -d -r trustRoot -k "
            f"/Library/Keychains/System.keychain {path}")
    if not path.is_file():
        raise errors.UsageError(f"--ca-file {path} is not a file", "name the PEM file of the registry's CA")
    return path.absolute()


def check_authfile(authfile: str | Path | None) -> Path | None:
    if authfile is None or str(authfile) == "":
        return None
    path = Path(authfile).expanduser()
    if not path.is_file():
        raise errors.UsageError(f"--authfile {path} is not a file",
                                "name an auth.json as podman login writes it, or a docker config.json")
    return path.absolute()


@functools.cache
def _context(ca_file: str | None, *_environment: str | None) -> ssl.SSLContext:
    """Loading the trust store takes a good part of a second: once per setting (the environment is in the key).
    --ca-file adds to the system store, as it does for crane (SSL_CERT_DIR): storage hosts keep their public CAs."""
    import ssl

    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of ``url``, the default port filled in: credentials go to exactly one origin."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(scheme, 0)


@dataclass
class RegistryRoutes:
    """What one fetch learnt about how registries serve blobs (keyed by origin), shared by its downloads:
    whether an origin answers blob GETs itself (then one crane stream beats byte ranges), and whether the first
    ranged GET to it has answered that yet (later downloads wait for it rather than each asking); and whether it
    ignores Range requests (then a broken download starts again from zero, and nothing is kept to continue)."""

    serves_blobs_itself: set[str] = field(default_factory=set)
    ignores_range: set[str] = field(default_factory=set)  # answered a Range request with the whole blob
    _probed: dict[str, threading.Event] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def claim_probe(self, registry: str) -> threading.Event | None:
        """None for the first asker about ``registry`` (it asks, then calls ``probe_done``); the event to wait on
        for the others."""
        with self._lock:
            event = self._probed.get(registry)
            if event is None:
                self._probed[registry] = threading.Event()
            return event

    def probe_done(self, registry: str) -> None:
        with self._lock:
            self._probed.setdefault(registry, threading.Event()).set()
