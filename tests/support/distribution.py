"""Run a real CNCF distribution registry (Debian's ``docker-registry``) for one test.

The registry listens on 127.0.0.1 only, serves TLS with a throwaway CA and
requires htpasswd (bcrypt) basic auth, so clients are exercised the way they
are against a real private registry.  Install it with ``bin/install-test-deps``.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
BIND_ATTEMPTS = 3


@dataclass(frozen=True)
class DistributionRegistry:
    host: str  # "127.0.0.1:PORT"
    username: str
    password: str
    ca_file: Path | None  # PEM of the CA that signed the server cert; None when tls=False
    docker_config: Path  # directory holding config.json with an auths entry for host
    log: Callable[[], str]  # everything the registry logged so far
    root: Path  # its working directory: config.yml, and storage/ (what a proxy has stored)


def binary_path() -> str | None:
    """The docker-registry binary, or None when it is not installed."""
    found = shutil.which("docker-registry")
    if found:
        return found
    return "/usr/bin/docker-registry" if os.access("/usr/bin/docker-registry", os.X_OK) else None


@contextmanager
def distribution_registry(
    workdir: Path,
    *,
    username: str = "tester",
    password: str | None = None,
    tls: bool = True,
    auth: bool = True,
    proxy_remote: str | None = None,
) -> Iterator[DistributionRegistry]:
    """``proxy_remote`` (a URL, e.g. ``http://127.0.0.1:PORT``) runs it in proxy mode: a read-only pull-through
    cache of that registry, as fleets run it in front of Docker Hub (docs/mirrors.md)."""
    binary = binary_path()
    if binary is None:
        raise RuntimeError("Debian's docker-registry is not installed: run bin/install-test-deps")
    if password is None:
        password = secrets.token_urlsafe(16)

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ca_file = make_certificates(workdir / "tls") if tls else None
    htpasswd = workdir / "htpasswd"
    if auth:
        htpasswd.write_text(_bcrypt_htpasswd(username, password))

    def launch(port: int) -> tuple[subprocess.Popen[bytes], Callable[[], str]]:
        config = workdir / "config.yml"
        config.write_text(_registry_config(workdir, port, tls=tls, htpasswd=htpasswd if auth else None,
                                           proxy_remote=proxy_remote))
        proc, log = _spawn(binary, config)
        return proc, log

    port, proc, log = start_on_a_free_port("docker-registry", launch,
                                           lambda proc, log, port: wait_for_v2(proc, log, port, ca_file))
    host = f"127.0.0.1:{port}"
    try:
        docker_config = workdir / "docker-config"
        docker_config.mkdir(exist_ok=True)
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        (docker_config / "config.json").write_text(json.dumps({"auths": {host: {"auth": token}}}, indent=2))
        yield DistributionRegistry(
            host=host,
            username=username,
            password=password,
            ca_file=ca_file,
            docker_config=docker_config,
            log=log,
            root=workdir,
        )
    finally:
        stop(proc)


class BindFailed(Exception):
    """The port was taken between probing and binding."""


def start_on_a_free_port(
    name: str,
    launch: Callable[[int], tuple[subprocess.Popen[bytes], Callable[[], str]]],
    wait_until_up: Callable[[subprocess.Popen[bytes], Callable[[], str], int], None],
) -> tuple[int, subprocess.Popen[bytes], Callable[[], str]]:
    """``launch`` a server on a free port and wait until it answers; a port taken between probing and binding
    (``wait_until_up`` raises BindFailed) is retried on a new one. Returns the port, the process and its log."""
    for attempt in range(1, BIND_ATTEMPTS + 1):
        port = _free_port()
        proc, log = launch(port)
        try:
            wait_until_up(proc, log, port)
        except BindFailed:
            stop(proc)
            if attempt == BIND_ATTEMPTS:
                raise RuntimeError(f"{name} could not bind a port:\n{log()}") from None
            continue
        except BaseException:
            stop(proc)
            raise
        return port, proc, log
    raise AssertionError("unreachable")


def _run(*args: str, input: str | None = None) -> str:
    result = subprocess.run(args, input=input, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


def make_certificates(directory: Path) -> Path:
    """Self-signed CA plus a server cert for 127.0.0.1/localhost; returns the CA PEM."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_pem = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "server.ext"
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _run(
        "openssl", "req", "-x509", *ec, "-days", "2",
        "-subj", "/CN=oci-crane-loader test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", str(ca_key), "-out", str(ca_pem),
    )  # fmt: skip
    _run("openssl", "req", "-new", *ec, "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(csr))
    # Go ignores the CN, so the SANs are what make 127.0.0.1 and localhost valid.
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _run(
        "openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_pem), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert),
    )  # fmt: skip
    return ca_pem


def _bcrypt_htpasswd(username: str, password: str) -> str:
    # distribution only accepts bcrypt entries.
    if shutil.which("htpasswd") is None:
        raise RuntimeError("htpasswd (apache2-utils) is not installed: run bin/install-test-deps")
    return _run("htpasswd", "-Bbn", username, password)


def _registry_config(workdir: Path, port: int, *, tls: bool, htpasswd: Path | None,
                     proxy_remote: str | None = None) -> str:
    config: dict = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text"},
        "storage": {
            "filesystem": {"rootdirectory": str(workdir / "storage")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
    }
    if tls:
        config["http"]["tls"] = {
            "certificate": str(workdir / "tls" / "server.pem"),
            "key": str(workdir / "tls" / "server.key"),
        }
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": "oci-crane-loader-tests", "path": str(htpasswd)}}
    if proxy_remote is not None:
        config["proxy"] = {"remoteurl": proxy_remote}
    # No notifications, redis or health sections: absent means disabled.
    # JSON is valid YAML, so no YAML library is needed.
    return json.dumps(config, indent=2)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(binary: str, config: Path) -> tuple[subprocess.Popen[bytes], Callable[[], str]]:
    # REGISTRY_* variables override config.yml, so keep the caller's out.
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    return spawn_logged([binary, "serve", str(config)], env=env)


def spawn_logged(argv: list[str], env: dict[str, str] | None = None
                 ) -> tuple[subprocess.Popen[bytes], Callable[[], str]]:
    """Start a server whose stdout and stderr are drained into memory; returns it and a function giving what it
    logged so far."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env)
    chunks: list[str] = []
    lock = threading.Lock()

    def drain() -> None:
        # Reading continuously keeps the server from blocking on a full pipe.
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                with lock:
                    chunks.append(line.decode(errors="replace"))

    threading.Thread(target=drain, name=f"{Path(argv[0]).name}-log", daemon=True).start()

    def log() -> str:
        with lock:
            return "".join(chunks)

    return proc, log


def wait_for_v2(proc: subprocess.Popen[bytes], log: Callable[[], str], port: int, ca_file: Path | None = None,
                name: str = "docker-registry") -> None:
    """Until the server on ``port`` answers GET /v2/ with 200 or 401 (https when ``ca_file`` is given)."""
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    deadline = time.monotonic() + START_TIMEOUT_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            time.sleep(0.1)  # let the drain thread catch the last lines
            if "address already in use" in log().lower():
                raise BindFailed()
            raise RuntimeError(f"{name} exited with {proc.returncode} before serving:\n{log()}")
        if context is not None:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", port, timeout=2, context=context
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/v2/")
            status = conn.getresponse().status
            if status in (200, 401):
                return
            last_error = RuntimeError(f"GET /v2/ answered {status}")
        except (OSError, http.client.HTTPException) as exc:
            last_error = exc
        finally:
            conn.close()
        time.sleep(0.1)
    raise RuntimeError(
        f"{name} did not answer {'https' if ca_file else 'http'}://127.0.0.1:{port}/v2/ within {START_TIMEOUT_S:.0f}s "
        f"(last error: {last_error!r}):\n{log()}"
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (nginx's master stops its workers with it), SIGKILL if it is still there after STOP_TIMEOUT_S."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
