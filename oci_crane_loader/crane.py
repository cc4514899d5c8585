"""The only module that starts crane: locate it, check its version, run it, turn its stderr into typed errors.

crane prints results on stdout and ``Error: <msg>`` on stderr with exit 1 on any failure. stdout is kept as
bytes: a manifest's digest is over its exact bytes. Secrets never reach argv; crane reads them from the docker
config keychain itself, and anything that looks like a credential is redacted from errors and logs.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import errors

log = logging.getLogger(__name__)

PINNED_VERSION = "v0.21.9"
MINIMUM_VERSION = (0, 21, 8)  # v0.21.6 hangs on multi-layer pulls
BUNDLED_BINARY = Path(__file__).parent / "_bin" / "crane"  # where bin/install-crane puts it, and where wheels ship it

DEFAULT_TIMEOUT = float(os.environ.get("OCI_CRANE_TIMEOUT", "120"))
# crane blob has no read timeout: a stalled stream hangs forever, so we watch the file grow instead.
DEFAULT_STALL_TIMEOUT = float(os.environ.get("OCI_CRANE_STALL_TIMEOUT", "60"))


def install_hint() -> str:
    return errors.CraneMissingError.default_fix


@functools.cache
def _version_of(binary: str) -> str:
    try:
        proc = subprocess.run([binary, "version"], capture_output=True, timeout=30, env=_environment(), check=False)
    except OSError as exc:
        raise errors.CraneMissingError(f"crane at {binary} cannot be started ({exc.strerror})") from exc
    except subprocess.TimeoutExpired as exc:
        raise errors.CraneMissingError(f"crane at {binary} did not answer `crane version`") from exc
    if proc.returncode != 0:
        raise errors.CraneMissingError(f"crane at {binary} failed `crane version` (exit {proc.returncode})")
    return proc.stdout.decode(errors="replace").strip()


def parse_version(text: str) -> tuple[int, int, int] | None:
    """`0.21.9`, `v0.21.9` or a commit SHA (container builds): the latter gives None, which we accept."""
    match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def locate_crane() -> tuple[str, str]:
    """Where crane is and which lookup step found it (OCI_CRANE_BINARY, bundled or PATH), without running it."""
    override = os.environ.get("OCI_CRANE_BINARY")
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise errors.CraneMissingError(f"OCI_CRANE_BINARY={override} is not an executable file")
        return override, "OCI_CRANE_BINARY"
    if BUNDLED_BINARY.is_file() and os.access(BUNDLED_BINARY, os.X_OK):
        return str(BUNDLED_BINARY), "bundled"
    found = shutil.which("crane")
    if not found:
        raise errors.CraneMissingError("crane was not found (OCI_CRANE_BINARY, the bundled copy, PATH)")
    return found, "PATH"


def check_version(binary: str) -> str:
    """``crane version`` of ``binary`` (run once per binary); refused if older than MINIMUM_VERSION."""
    text = _version_of(binary)
    version = parse_version(text)
    if version is not None and version < MINIMUM_VERSION:
        shown = ".".join(map(str, version))
        raise errors.CraneTooOldError(f"crane {shown} at {binary} is too old (need >= 0.21.8; 0.21.6 hangs)")
    return text


def find_crane() -> str:
    """OCI_CRANE_BINARY, then the bundled / bin/-installed copy, then PATH; version checked once per binary."""
    candidate, _source = locate_crane()
    check_version(candidate)
    return candidate


def _environment() -> dict[str, str]:
    # Inherit the user's environment (proxies, SSL_CERT_FILE, DOCKER_CONFIG, credential helpers' own settings).
    env = dict(os.environ)
    env["NO_COLOR"] = "1"
    return env


# --- error classification ------------------------------------------------------------------------------------

_SECRET_PATTERNS = [
    (re.compile(r"(?i)(https?://)[^/\s:@]+:[^/\s@]+@"), r"\1***@"),  # user:password@host
    (re.compile(r"(?i)(https?://[^\s?\"']+)\?[^\s\"']*"), r"\1?***"),  # presigned URL query strings
    # "Authorization: Bearer <token>": the scheme word is not the secret, the token after it is.
    (re.compile(r"(?i)\b(authorization|bearer|basic|token|password|secret)([\"'=: ]+)(?:(?:bearer|basic)\s+)?"
                r"[^\s\"',;]+"), r"\1\2***"),
]


def redact(text: str) -> str:
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str]
    error: type[errors.CraneError]
    what: str


# Order matters: a credential-helper failure also mentions the registry, a TLS failure may end in EOF.
_RULES = [
    _Rule(re.compile(r"error getting credentials|credential helper|docker-credential-"), errors.CredentialHelperError,
          "the docker credential helper failed"),
    _Rule(re.compile(r"x509:|tls:|certificate|server gave HTTP response to HTTPS client"), errors.TLSError,
          "TLS handshake with the registry failed"),
    _Rule(re.compile(r"UNAUTHORIZED|DENIED|authentication required|401 Unauthorized|403 Forbidden"),
          errors.UnauthorizedError, "the registry refused our credentials"),
    _Rule(re.compile(r"TOOMANYREQUESTS|429 Too Many Requests"), errors.RateLimitedError,
          "the registry is rate limiting us"),
    _Rule(re.compile(r"MANIFEST_UNKNOWN|NAME_UNKNOWN|BLOB_UNKNOWN|404 Not Found|not found"), errors.NotFoundError,
          "not found in the registry"),
    _Rule(re.compile(r"error verifying|does not match|digest mismatch|unexpected digest"),
          errors.CraneIntegrityError, "downloaded bytes do not match their digest"),
    _Rule(re.compile(r"connection refused|no such host|i/o timeout|network is unreachable|connection reset|"
                     r"unexpected EOF|context deadline exceeded|server misbehaving|no route to host|EOF$"),
          errors.NetworkError, "cannot reach the registry"),
]


def classify(command: Sequence[str], returncode: int, stderr: str) -> errors.CraneError:
    """Map crane's stderr to one typed error whose cause quotes crane's own (redacted) message."""
    clean = redact(stderr.strip())
    lines = [line for line in clean.splitlines() if line.strip()]
    message = next((line[len("Error: "):] for line in reversed(lines) if line.startswith("Error: ")),
                   lines[-1] if lines else f"crane exited with status {returncode}")
    for rule in _RULES:
        if rule.pattern.search(clean):
            return rule.error(f"{rule.what}: {message}", command=list(command), returncode=returncode, stderr=clean)
    return errors.CraneError(f"crane failed: {message}", command=list(command), returncode=returncode, stderr=clean)


# --- running --------------------------------------------------------------------------------------------------

class Crane:
    """Runs crane. ``offline=True`` is the one switch that forbids the network: every call raises OfflineError."""

    def __init__(self, *, insecure: bool = False, platform: str | None = None, offline: bool = False,
                 timeout: float = DEFAULT_TIMEOUT, stall_timeout: float = DEFAULT_STALL_TIMEOUT) -> None:
        self.insecure = insecure
        self.platform = platform
        self.offline = offline
        self.timeout = timeout
        self.stall_timeout = stall_timeout

    def _argv(self, command: str, *positionals: str, platform: bool = False, options: Sequence[str] = ()) -> list[str]:
        """``crane COMMAND [options] -- POSITIONALS``: after ``--`` a reference or path that begins with ``-``
        (untrusted input: a web form, VLLM_MODEL) is an argument, never one of crane's options."""
        if self.offline:
            raise errors.OfflineError(f"offline mode forbids `crane {command}`: the model is not fully cached")
        argv = [find_crane(), command, *options]
        if self.insecure:
            argv.append("--insecure")
        if platform and self.platform:
            argv += ["--platform", self.platform]
        return [*argv, "--", *positionals]

    def run(self, command: str, *positionals: str, stdin: bytes | None = None, platform: bool = False,
            options: Sequence[str] = ()) -> bytes:
        """Run one crane command to completion and return its stdout as bytes. ``options`` (e.g. ``--index``) go
        before the ``--`` that ends them; ``positionals`` after it."""
        argv = self._argv(command, *positionals, platform=platform, options=options)
        log.debug("running %s", " ".join(argv))
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=self.timeout, env=_environment(),
                                  check=False)
        except subprocess.TimeoutExpired as exc:
            raise errors.CraneTimeoutError(f"`crane {command}` got no answer within {self.timeout:.0f}s",
                                           command=argv) from exc
        except FileNotFoundError as exc:
            raise errors.CraneMissingError(f"crane at {argv[0]} disappeared", command=argv) from exc
        if proc.returncode != 0:
            raise classify(argv, proc.returncode, proc.stderr.decode(errors="replace"))
        return proc.stdout

    def manifest(self, reference: str) -> bytes:
        # Without --platform crane prints an index as an index: we choose the child ourselves.
        return self.run("manifest", reference)

    def digest(self, reference: str) -> str:
        return self.run("digest", reference).decode().strip()

    def push(self, layout: Path, reference: str) -> str:
        return self.run("push", str(layout), reference).decode().strip()

    def blob(self, pinned: str, destination: Path, progress: Callable[[int], None] | None = None) -> None:
        """Stream ``repo@sha256:...`` into ``destination`` (a temp file), killing crane if the stream stalls."""
        argv = self._argv("blob", pinned)
        log.debug("running %s", " ".join(argv))
        with open(destination, "wb") as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(argv, stdout=out, stderr=err, env=_environment())
            except FileNotFoundError as exc:
                raise errors.CraneMissingError(f"crane at {argv[0]} disappeared", command=argv) from exc
            try:
                self._watch(proc, out.fileno(), progress, pinned, argv)
            finally:
                if proc.poll() is None:
                    _stop(proc)
            if proc.returncode != 0:
                err.seek(0)
                raise classify(argv, proc.returncode, err.read().decode(errors="replace"))

    def _watch(self, proc: subprocess.Popen[bytes], fd: int, progress: Callable[[int], None] | None,
               pinned: str, argv: list[str]) -> None:
        size, last_growth = 0, time.monotonic()
        while True:
            try:
                proc.wait(timeout=0.2)
                finished = True
            except subprocess.TimeoutExpired:
                finished = False
            current = os.fstat(fd).st_size
            if current != size:
                if progress:
                    progress(current - size)
                size, last_growth = current, time.monotonic()
            if finished:
                return
            if time.monotonic() - last_growth > self.stall_timeout:
                _stop(proc)
                raise errors.CraneTimeoutError(
                    f"download of {pinned} stalled: no bytes for {self.stall_timeout:.0f}s after {size} bytes",
                    command=argv)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT lets crane cancel cleanly; kill if it does not exit soon."""
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except ProcessLookupError:
        pass


# --- a registry on loopback (demo and tests) ------------------------------------------------------------------

@dataclass
class LocalRegistry:
    """A running `crane registry serve`. ``log()`` returns every request line it has logged so far."""

    host: str
    process: subprocess.Popen[bytes]
    lines: list[str]

    def log(self) -> str:
        return "\n".join(self.lines)

    def blob_downloads(self) -> list[str]:
        """The digest of every blob GET so far, in order (pushes only HEAD blobs, so they do not count)."""
        return re.findall(r"\bGET /v2/\S+/blobs/(sha256:[a-f0-9]{64})", "\n".join(self.lines))


@contextlib.contextmanager
def serve_registry(disk: Path | None = None, startup_timeout: float = 30) -> Iterator[LocalRegistry]:
    """Start `crane registry serve` on 127.0.0.1 (a free port), drain its log, and always stop it."""
    argv = [find_crane(), "registry", "serve", "--address", "127.0.0.1:0"]
    if disk is not None:
        disk.mkdir(parents=True, exist_ok=True)  # the registry fails uploads, not start-up, when it is missing
        argv += ["--disk", str(disk)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_environment())
    lines: list[str] = []
    port: queue.Queue[str] = queue.Queue()

    def drain() -> None:  # an undrained stderr pipe would block the registry once it fills
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            match = re.search(r"serving on port (\d+)", line)
            if match:
                port.put(match[1])

    threading.Thread(target=drain, name="crane-registry-log", daemon=True).start()
    try:
        try:
            number = port.get(timeout=startup_timeout)
        except queue.Empty:
            raise errors.CraneError("`crane registry serve` did not start: " + "; ".join(lines[-5:]),
                                    "check that crane works: crane version", command=argv) from None
        yield LocalRegistry(f"127.0.0.1:{number}", process, lines)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
