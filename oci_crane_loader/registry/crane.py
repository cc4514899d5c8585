"""The only module that starts crane: locate it, check its version, run it, turn its stderr into typed errors.

crane prints results on stdout and ``Error: <msg>`` on stderr with exit 1 on any failure. stdout is kept as
bytes: a manifest's digest is over its exact bytes. Secrets never reach argv; crane reads them from the docker
config keychain itself, and anything that looks like a credential is redacted from errors and logs.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import functools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .. import errors
from ..platforms import host_platform
from . import failures
from .access import RegistryAccess, registry_access
from .executable import executable_platform
from .keychain import CredentialSource, crane_environment, find_credentials

log = logging.getLogger(__name__)

MINIMUM_VERSION = (0, 21, 8)  # v0.21.6 hangs on multi-layer pulls
# where bin/install-crane puts it, and where wheels ship it
BUNDLED_BINARY = Path(__file__).parent.parent / "_bin" / "crane"


def install_hint() -> str:
    return errors.CraneMissingError.default_fix


@functools.cache
def _version_of(binary: str) -> str:
    try:
        proc = subprocess.run([binary, "version"], capture_output=True, timeout=30, env=_environment(), check=False)
    except OSError as exc:
        built_for = executable_platform(binary)
        mismatch = f": built for {built_for}, this host is {host_platform()}" if built_for != host_platform() else ""
        raise errors.CraneMissingError(f"crane at {binary} cannot be started ({exc.strerror}{mismatch})") from exc
    except subprocess.TimeoutExpired as exc:
        raise errors.CraneMissingError(f"crane at {binary} did not answer `crane version`") from exc
    if proc.returncode != 0:
        raise errors.CraneMissingError(f"crane at {binary} failed `crane version` (exit {proc.returncode})")
    return proc.stdout.decode(errors="replace").strip()


def parse_version(text: str) -> tuple[int, int, int] | None:
    """`0.21.9`, `v0.21.9` or a commit SHA (container builds): the latter gives None, which we accept."""
    match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


@dataclass(frozen=True)
class CraneBinary:
    """The crane this process runs: where, found how, its version and build platform, and what was passed over."""

    path: str
    source: str  # "OCI_CRANE_BINARY", "bundled" or "PATH"
    version: str
    platform: str | None  # GOOS/GOARCH from the file's header; None for a script wrapping crane
    skipped: tuple[str, ...] = ()  # one line per candidate that could not run here


def _candidates() -> list[tuple[str, str]]:
    """OCI_CRANE_BINARY alone when set (an explicit choice is never second-guessed); else bundled, then PATH."""
    override = os.environ.get("OCI_CRANE_BINARY")
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise errors.CraneMissingError(f"OCI_CRANE_BINARY={override} is not an executable file")
        return [(override, "OCI_CRANE_BINARY")]
    found: list[tuple[str, str]] = []
    if BUNDLED_BINARY.is_file() and os.access(BUNDLED_BINARY, os.X_OK):
        found.append((str(BUNDLED_BINARY), "bundled"))
    on_path = shutil.which("crane")
    if on_path and not any(os.path.samefile(on_path, path) for path, _ in found):
        found.append((on_path, "PATH"))
    if not found:
        raise errors.CraneMissingError("crane was not found (OCI_CRANE_BINARY, the bundled copy, PATH)")
    return found


def check_version(binary: str) -> str:
    """``crane version`` of ``binary`` (run once per binary); refused if older than MINIMUM_VERSION."""
    text = _version_of(binary)
    version = parse_version(text)
    if version is not None and version < MINIMUM_VERSION:
        shown = ".".join(map(str, version))
        raise errors.CraneTooOldError(f"crane {shown} at {binary} is too old (need >= 0.21.8; 0.21.6 hangs)")
    return text


def choose_crane() -> CraneBinary:
    """The first candidate that runs here and is recent enough. A bundled or PATH crane that cannot run on this
    host (a wheel for another platform, say) is passed over with a one-line warning naming the one used instead.
    Decided once per lookup setting: every crane call asks."""
    key = (os.environ.get("OCI_CRANE_BINARY"), os.environ.get("PATH"), str(BUNDLED_BINARY))
    if key not in _chosen:
        _chosen[key] = _choose()
    return _chosen[key]


def _choose() -> CraneBinary:
    candidates = _candidates()
    skipped: list[str] = []
    failures: list[errors.CraneMissingError] = []
    for path, source in candidates:
        try:
            version = check_version(path)
        except errors.CraneMissingError as exc:
            if len(candidates) == 1:
                raise
            skipped.append(f"{SOURCE_NAMES[source]} is unusable: {exc.cause}")
            failures.append(exc)
            continue
        chosen = CraneBinary(path, source, version, executable_platform(path), tuple(skipped))
        if skipped and chosen.path not in _warned:
            _warned.add(chosen.path)
            log.warning("%s; using crane %s from %s at %s", "; ".join(skipped), version, SOURCE_NAMES[source], path)
        return chosen
    # Nothing runs: the last failure says why (a too-old PATH crane after an unrunnable bundled one, say).
    last = failures[-1]
    raise type(last)(f"{'; '.join(skipped)}; no other crane to use", last.fix)


SOURCE_NAMES = {"OCI_CRANE_BINARY": "OCI_CRANE_BINARY", "bundled": "the bundled copy", "PATH": "PATH"}
_warned: set[str] = set()
_chosen: dict[tuple[str | None, str | None, str], CraneBinary] = {}


def find_crane() -> str:
    """The path of the crane to run (see choose_crane); its version is checked once per binary."""
    return choose_crane().path


def _environment() -> dict[str, str]:
    # Inherit the user's environment (proxies, SSL_CERT_FILE, DOCKER_CONFIG, credential helpers' own settings).
    env = dict(os.environ)
    env["NO_COLOR"] = "1"
    return env


# --- error classification ------------------------------------------------------------------------------------

_SECRET_PATTERNS = [
    # A failing credential helper's own output, which crane quotes: `out: \`tester:s3cr3t\``.
    (re.compile(r"(out: `)[^`]+(`)"), r"\1***\2"),
    (re.compile(r"(?i)(https?://)[^/\s:@]+:[^/\s@]+@"), r"\1***@"),  # user:password@host
    (re.compile(r"(?i)(https?://[^\s?\"']+)\?[^\s\"']*"), r"\1?***"),  # presigned URL query strings
    # "Authorization: Bearer <token>": the scheme word is not the secret, the token after it is.
    # Not after '/', '.', '-' or a letter: `probe/secret:v1` names a repository, it holds no secret.
    (re.compile(r"(?i)(?<![\w/.-])(authorization|bearer|basic|token|password|secret)([\"'=: ]+)"
                r"(?:(?:bearer|basic)\s+)?[^\s\"',;]+"), r"\1\2***"),
]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove ``secrets`` (the credentials actually configured, see configured_secrets) wherever they appear,
    then whatever looks like a credential."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= 3:  # a one- or two-letter "secret" would blank out ordinary text
            text = text.replace(secret, "***")
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def configured_secrets(argv: Sequence[str], env: dict[str, str] | None = None) -> list[str]:
    """The credentials crane would send to the registries named in ``argv``, as `crane auth get` reads them from
    the credentials file (auths, credsStore, credHelpers) in ``env``: asked only when an error is about to be
    shown."""
    from ..reference import parse_reference

    found: list[str] = []
    registries = set()
    for arg in argv[1:]:
        with contextlib.suppress(errors.InvalidReferenceError):
            if "/" in arg and not os.path.exists(arg):
                registries.add(parse_reference(arg).registry)
    for registry in sorted(registries):
        try:
            proc = subprocess.run([argv[0], "auth", "get", "--", registry], capture_output=True, timeout=10,
                                  env=env or _environment(), check=False)
            answer = json.loads(proc.stdout) if proc.returncode == 0 else {}
        except Exception:  # best effort: the keyword patterns still apply
            continue
        secret, user = str(answer.get("Secret") or ""), str(answer.get("Username") or "")
        if secret:
            basic = base64.b64encode(f"{user}:{secret}".encode()).decode()
            found += [secret, basic, quote(secret, safe="")]
    return found


def classify(command: Sequence[str], returncode: int, stderr: str, secrets: Iterable[str] = (),
             credentials: CredentialSource | None = None) -> errors.CraneError:
    """Map crane's stderr to one typed error whose cause quotes crane's own (redacted) message; the fix of a
    credentials error names ``credentials``, the file crane read."""
    secrets = list(secrets)
    clean = redact(stderr.strip(), secrets)
    lines = [line for line in clean.splitlines() if line.strip()]
    message = next((line[len("Error: "):] for line in reversed(lines) if line.startswith("Error: ")),
                   lines[-1] if lines else f"crane exited with status {returncode}")
    failure = failures.from_stderr(clean)
    if failure is not None:
        # With the file crane read known, no secret configured there for these registries means none was sent.
        sent = bool(secrets) or credentials is None
        fix = _credentials_fix(failure.error, credentials, sent=sent) if credentials is not None else None
        what = failure.what if sent or failure.error is not errors.UnauthorizedError else _NONE_SENT
        return failure.error(f"{what}: {message}", fix, command=list(command), returncode=returncode,
                             stderr=clean)
    return errors.CraneError(f"crane failed: {message}", command=list(command), returncode=returncode, stderr=clean)


_NONE_SENT = "the registry asks for credentials, and no credentials were sent"


def _credentials_fix(error: type[errors.CraneError], source: CredentialSource, *, sent: bool = True) -> str | None:
    if error is errors.CredentialHelperError and source.path is not None:
        return f"fix or remove the credential helper named in {source.path} (credHelpers / credsStore)"
    if error is not errors.UnauthorizedError:
        return None
    if source.path is None:
        return (f"log in with `oci-crane login REGISTRY -u USER --password-stdin` (or `docker login REGISTRY`): "
                f"crane found {source.describe()}")
    if source.redirect or source.origin in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR"):
        held = "" if sent else ", which holds none for this registry"
        return (f"check this registry's credentials in {source.describe()}{held}: `oci-crane login --authfile "
                f"{source.path} REGISTRY -u USER --password-stdin` (or `podman login --authfile {source.path} "
                "REGISTRY`) renews them")
    if sent:
        return (f"log in with `oci-crane login REGISTRY -u USER --password-stdin` (or `docker login REGISTRY`); "
                f"crane read {source.describe()}")
    fix = (f"log in with `oci-crane login REGISTRY -u USER --password-stdin` (or `docker login REGISTRY`): crane "
           f"read {source.describe()}, which holds none for this registry")
    shadowed = [line.split(" (", 1)[0] for line in source.ignored if "(REGISTRY_AUTH_FILE)" in line]
    if shadowed:  # podman users: an empty ~/.docker/config.json (as `logout` leaves it) hides their file
        fix += (f"; REGISTRY_AUTH_FILE ({shadowed[0]}) is ignored while that file exists: pass --authfile "
                f"{shadowed[0]}, or remove {source.path} if it holds nothing")
    return fix


# --- running --------------------------------------------------------------------------------------------------

class Crane:
    """Runs crane under one RegistryAccess: with ``offline`` set every call raises OfflineError before crane
    starts."""

    def __init__(self, access: RegistryAccess | None = None, *, writes_authfile: bool = False,
                 **policy: Any) -> None:
        """``access``: the connection policy (options.py builds it once per command); without it, ``policy``
        (insecure=, offline=, timeout=, ...) builds one as ``registry_access`` does."""
        # How to reach the registry, turned into crane's flags (_argv) and environment (environment) there only.
        self.access = access if access is not None else registry_access(**policy)
        self.writes_authfile = writes_authfile  # `crane auth login|logout` rewrite it (keychain.crane_environment)

    # The policy's fields, read where crane's flags and environment are made.
    insecure = property(lambda self: self.access.insecure)
    plain_http = property(lambda self: self.access.plain_http)
    ca_file = property(lambda self: self.access.ca_file)
    authfile = property(lambda self: self.access.authfile)
    offline = property(lambda self: self.access.offline)
    timeout = property(lambda self: self.access.timeout)
    # crane blob has no read timeout: a stalled stream hangs forever, so we watch the file grow instead.
    stall_timeout = property(lambda self: self.access.stall_timeout)

    def _argv(self, command: str, *positionals: str, platform: str | None = None,
              options: Sequence[str] = ()) -> list[str]:
        """``crane COMMAND [options] -- POSITIONALS``: after ``--`` a reference or path that begins with ``-``
        (untrusted input: a web form, VLLM_MODEL) is an argument, never one of crane's options. A COMMAND of two
        words (``auth login``) is crane's command and subcommand."""
        self.access.require_network(f"`crane {command}`")
        argv = [find_crane(), *command.split(), *options]
        if self.insecure or self.plain_http:
            argv.append("--insecure")
        if platform:
            argv += ["--platform", platform]
        return [*argv, "--", *positionals]

    def credentials(self) -> CredentialSource:
        """The credentials file crane reads for this Crane (looked up at each command: files come and go)."""
        return find_credentials(self.authfile)

    @contextlib.contextmanager
    def environment(self) -> Iterator[dict[str, str]]:
        """crane's environment for one command: the user's, plus the credentials file and CA this Crane names."""
        with crane_environment(self.credentials(), self.ca_file, _environment(), writes=self.writes_authfile) as env:
            yield env

    def _failure(self, argv: list[str], returncode: int, stderr: str, env: dict[str, str]) -> errors.CraneError:
        return classify(argv, returncode, stderr, configured_secrets(argv, env), self.credentials())

    def run(self, command: str, *positionals: str, stdin: bytes | None = None, platform: str | None = None,
            options: Sequence[str] = ()) -> bytes:
        """Run one crane command to completion and return its stdout as bytes. ``options`` (e.g. ``--index``) go
        before the ``--`` that ends them; ``positionals`` after it; ``platform`` (os/arch) adds --platform."""
        argv = self._argv(command, *positionals, platform=platform, options=options)
        log.debug("running %s", " ".join(argv))
        with self.environment() as env:
            try:
                proc: subprocess.CompletedProcess[bytes] = subprocess.run(
                    argv, input=stdin, capture_output=True, timeout=self.timeout, env=env,
                    check=False, **_die_with_us())
            except subprocess.TimeoutExpired as exc:
                raise errors.CraneTimeoutError(f"`crane {command}` got no answer within {self.timeout:.0f}s",
                                               command=argv) from exc
            except FileNotFoundError as exc:
                raise errors.CraneMissingError(f"crane at {argv[0]} disappeared", command=argv) from exc
            if proc.returncode != 0:
                raise self._failure(argv, proc.returncode, proc.stderr.decode(errors="replace"), env)
        return proc.stdout

    def manifest(self, reference: str) -> bytes:
        # Without --platform crane prints an index as an index: we choose the child ourselves.
        return self.run("manifest", reference)

    def digest(self, reference: str) -> str:
        return self.run("digest", reference).decode().strip()

    def push(self, layout: Path, reference: str, progress: Callable[[int], None] | None = None, *,
             size: int | None = None) -> str:
        """Push an OCI image layout to ``reference``; the pinned reference crane prints.

        crane reports no byte counts, but it reads each blob of the layout once, as it uploads it: on Linux how
        far it is through them (_UploadMeter) goes to ``progress``, and the push is stopped only when that stalls
        (OCI_CRANE_STALL_TIMEOUT) before ``size`` bytes were read, since a multi-GB upload outlasts any fixed
        OCI_CRANE_TIMEOUT (after that, the registry may take its time to check the last blob). Elsewhere (macOS),
        no counts: a plain run under OCI_CRANE_TIMEOUT."""
        if progress is None or not _UploadMeter.available():
            return self.run("push", str(layout), reference).decode().strip()
        argv = self._argv("push", str(layout), reference)
        log.debug("running %s", " ".join(argv))
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, self.environment() as env:
            try:
                proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, **_die_with_us())
            except FileNotFoundError as exc:
                raise errors.CraneMissingError(f"crane at {argv[0]} disappeared", command=argv) from exc
            meter = _UploadMeter(proc.pid, layout)
            try:
                self._watch(proc, meter, progress, f"push to {reference}", argv, stall_until=size,
                            working=meter.working)
            finally:
                if proc.poll() is None:
                    _stop(proc)
            if proc.returncode != 0:
                err.seek(0)
                raise self._failure(argv, proc.returncode, err.read().decode(errors="replace"), env)
            out.seek(0)
            return out.read().decode().strip()

    def auth_token(self, repository: str) -> str:
        """A pull token for ``registry/repository`` from a bearer-token registry: `crane auth token` does the
        exchange with the keychain's credentials and prints {"token": ...}. For the ranged download
        (transfer.py) only: the token is never logged, shown or put on a command line."""
        answer = json.loads(self.run("auth token", repository))
        token = answer.get("token") or answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise errors.CraneError(f"`crane auth token` printed no token for {repository}")
        return token

    def auth_basic(self, registry: str) -> tuple[str, str] | None:
        """The keychain's username and secret for a basic-auth ``registry`` (`crane auth get`, which reads the
        docker config and its credential helpers); None when none is configured."""
        try:
            answer = json.loads(self.run("auth get", registry))
        except errors.CraneError as exc:
            if type(exc) is errors.CraneError and not exc.stderr.strip():  # exit 1: "credentials not found"
                return None
            raise
        return str(answer.get("Username") or ""), str(answer.get("Secret") or "")

    def blob(self, pinned: str, destination: Path, progress: Callable[[int], None] | None = None, *,
             size: int | None = None, cancel: threading.Event | None = None) -> None:
        """Stream ``repo@sha256:...`` into ``destination`` (a temp file), stopping crane if the stream stalls,
        ``cancel`` is set (CancelledError) or, given the descriptor's ``size``, the file grows past it (crane reads
        an endless body until its digest check)."""
        argv = self._argv("blob", pinned)
        log.debug("running %s", " ".join(argv))
        with open(destination, "wb") as out, tempfile.TemporaryFile() as err, self.environment() as env:
            try:
                proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, **_die_with_us())
            except FileNotFoundError as exc:
                raise errors.CraneMissingError(f"crane at {argv[0]} disappeared", command=argv) from exc
            if size is not None:
                # The limit binds every file crane writes, its stderr file too: leave room for an error message.
                _limit_file_size(proc.pid, max(size + 1, STDERR_ROOM))
            try:
                fd = out.fileno()
                self._watch(proc, lambda: os.fstat(fd).st_size, progress, f"download of {pinned}", argv,
                            size, cancel)
            finally:
                if proc.poll() is None:
                    _stop(proc)
            if size is not None and os.fstat(out.fileno()).st_size > size:
                raise _oversized(f"download of {pinned}", size, argv)
            if proc.returncode != 0:
                err.seek(0)
                raise self._failure(argv, proc.returncode, err.read().decode(errors="replace"), env)

    def _watch(self, proc: subprocess.Popen[bytes], measure: Callable[[], int | None],
               progress: Callable[[int], None] | None, what: str, argv: list[str], limit: int | None = None,
               cancel: threading.Event | None = None, stall_until: int | None = None,
               working: Callable[[], bool] | None = None) -> None:
        """Wait for crane, reporting the growth of ``measure()`` (bytes written, or read) to ``progress``; stop it
        when they stall (while fewer than ``stall_until`` have moved, if given) and, given ``working``, crane is
        idle too; when ``cancel`` is set; or past ``limit``."""
        size, last_growth = 0, time.monotonic()
        while True:
            if cancel is not None and cancel.is_set():
                _stop(proc)
                raise errors.CancelledError(f"{what} was cancelled", command=argv)
            try:
                proc.wait(timeout=0.2)
                finished = True
            except subprocess.TimeoutExpired:
                finished = False
            current = measure()  # None: not known now (a reaped process has no /proc entry)
            if current is not None and current != size:
                if progress:
                    progress(current - size)
                size, last_growth = current, time.monotonic()
            if finished:
                return
            if working is not None and working():  # preparing (no bytes yet), not stalled
                last_growth = time.monotonic()
            if limit is not None and size > limit:
                _stop(proc)
                raise _oversized(what, limit, argv)
            if (time.monotonic() - last_growth > self.stall_timeout
                    and (stall_until is None or size < stall_until)):
                _stop(proc)
                idle = ", and crane sat idle, waiting on the registry" if working is not None else ""
                raise errors.CraneTimeoutError(
                    f"{what} stalled: no bytes for {self.stall_timeout:.0f}s after {size} bytes{idle}",
                    command=argv)


class _UploadMeter:
    """How far crane is through the files under ``directory`` (an OCI layout it pushes): the offset of each file it
    has open (/proc/PID/fdinfo `pos`, which moves with read, sendfile and splice alike: Go sends files to sockets
    with splice, which the read counters of /proc/PID/io never see), plus the whole size of each it has closed."""

    def __init__(self, pid: int, directory: Path) -> None:
        self.pid = pid
        self.prefix = str(directory.resolve()) + os.sep
        self.open: dict[str, int] = {}  # path -> offset, for the files open at the last look
        self.done: dict[str, int] = {}  # path -> size, for those closed since
        self.cpu_mark = 0.0  # crane's CPU seconds when working() last said yes

    @staticmethod
    def available() -> bool:
        return os.path.isdir("/proc/self/fdinfo")

    def working(self) -> bool:
        """Whether crane used BUSY_CPU seconds of CPU since this last said yes (/proc/PID/stat). Before its first
        upload crane works through the layout's manifest for minutes when it holds thousands of files, reading
        none of them; waiting on a registry that stopped answering, it uses next to no CPU."""
        try:
            with open(f"/proc/{self.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
            cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except (OSError, IndexError, ValueError):
            return False
        if cpu - self.cpu_mark < BUSY_CPU:
            return False
        self.cpu_mark = cpu
        return True

    def __call__(self) -> int | None:
        """Bytes through so far; None once crane is gone (its /proc entry with it)."""
        try:
            descriptors = os.listdir(f"/proc/{self.pid}/fd")
        except OSError:
            return None
        now: dict[str, int] = {}
        for fd in descriptors:
            try:
                path = os.readlink(f"/proc/{self.pid}/fd/{fd}")
                if not path.startswith(self.prefix) or path in self.done:
                    continue
                with open(f"/proc/{self.pid}/fdinfo/{fd}") as info:
                    offset = next(int(line.split()[1]) for line in info if line.startswith("pos:"))
            except (OSError, StopIteration, ValueError, IndexError):  # closed meanwhile
                continue
            now[path] = max(offset, now.get(path, 0))
        for path in self.open.keys() - now.keys():  # closed since the last look: sent whole
            with contextlib.suppress(OSError):
                self.done[path] = os.path.getsize(path)
        self.open = now
        return sum(self.done.values()) + sum(now.values())


BUSY_CPU = 0.5  # CPU seconds that count as work while no byte moves; an idle Go process takes far less a minute


def _oversized(what: str, size: int, argv: list[str]) -> errors.CraneIntegrityError:
    return errors.CraneIntegrityError(
        f"the registry sent more than the {size} bytes its descriptor promises; {what} stopped",
        command=argv)


STDERR_ROOM = 1 << 20  # the least RLIMIT_FSIZE given to crane, so that a tiny blob's error is not cut short


def _limit_file_size(pid: int, limit: int) -> None:
    """Where the OS allows it (Linux), crane cannot write past ``limit`` bytes at all: the watchdog's poll alone
    would let a fast endless stream run on for its interval. No core file when that limit kills it."""
    try:
        import resource

        resource.prlimit(pid, resource.RLIMIT_CORE, (0, 0))
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, limit))
    except (ImportError, AttributeError, OSError, ValueError) as exc:  # no prlimit (macOS), or crane already gone
        log.debug("cannot limit crane's file size (%s); the watchdog still does", exc)


def _die_with_us() -> dict[str, Any]:
    """Popen options that end crane when this process dies, even by SIGKILL, so that no orphan keeps
    downloading into tmp/. Linux: the parent-death signal. Elsewhere only our SIGINT/SIGTERM handling
    (cancel, stop, reap) ends it; after a SIGKILL it runs until its download ends."""
    if not sys.platform.startswith("linux"):
        return {}
    parent = os.getpid()
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: no dlopen/dlsym between fork and exec

    def set_parent_death_signal() -> None:
        # Runs in the child between fork and exec. PR_SET_PDEATHSIG fires when the thread that forked exits:
        # that thread waits for crane (run, blob), so it outlives crane unless the whole process dies.
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # we died before prctl took effect
            os._exit(1)

    return {"preexec_fn": set_parent_death_signal}


_PR_SET_PDEATHSIG = 1


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


def start_crane(*args: str, **popen: Any) -> subprocess.Popen[bytes]:
    """A long-running crane command (``registry serve``), started with the crane and environment every other
    call uses; the caller owns the process and stops it."""
    return subprocess.Popen([find_crane(), *args], env=_environment(), **popen)
