"""`oci-crane login`, `logout` and `ls`: the crane commands users need, without knowing where crane lives.

Credentials go to crane on stdin (`crane auth login --password-stdin`), never on a command line; crane writes them
where every crane (and docker) reads them: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, or the
credential helper that file names. With ``authfile`` (--authfile, as podman's) into that file instead, which crane
rewrites through a private DOCKER_CONFIG (keychain.crane_environment).
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import os
import re
import sys
from pathlib import Path
from typing import Any

from . import errors
from .reference import is_registry_host, parse_reference
from .registry.crane import Crane
from .registry.keychain import docker_config_path


def read_password(password_stdin: bool) -> str:
    """From stdin (trailing newline dropped, as `docker login --password-stdin` does), or asked on a terminal."""
    if password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        raise errors.UsageError("no password: standard input is not a terminal",
                                "pipe the password in and pass --password-stdin")
    if not password:
        raise errors.UsageError("the password is empty", "pipe the password or token in with --password-stdin")
    return password


def _registry(text: str) -> str:
    """A registry host as crane's keychain keys it: `docker.io` and friends become index.docker.io's key."""
    host = text.strip().rstrip("/")
    if "/" in host or not is_registry_host(host):
        raise errors.UsageError(f"{text!r} is not a registry host",
                                "name the registry alone, e.g. ghcr.io, docker.io or localhost:5000")
    return parse_reference(f"{host}/probe").registry


def login(registry: str, username: str, password: str, *, insecure: bool = False, plain_http: bool = False,
          ca_file: str | Path | None = None, authfile: str | Path | None = None) -> Path:
    """Check the credentials against ``registry`` (check_credentials), then store them where crane reads them, or
    in ``authfile`` (made, 0600, if missing); returns the file in use. A refused login writes nothing."""
    host = _registry(registry)
    if not username:
        raise errors.UsageError("the user name is empty", "pass -u USER (for a token, the name the registry expects)")
    if authfile is not None:
        _check_authfile_target(Path(authfile).expanduser().absolute())
    check_credentials(Crane(insecure=insecure, plain_http=plain_http, ca_file=ca_file), host, username, password)
    made = None if authfile is None else _new_authfile(authfile)
    try:  # crane only stores them: `crane auth login` asks nothing of the registry
        _crane(authfile).run("auth login", host, options=["-u", username, "--password-stdin"], stdin=password.encode())
    except BaseException:
        if made is not None:  # nothing left behind by a login that failed
            for path in made:
                with contextlib.suppress(OSError):
                    path.unlink() if path.is_file() else path.rmdir()
        raise
    written = Path(authfile).expanduser().absolute() if authfile is not None else docker_config_path()
    _private(written)
    return written


def _private(path: Path) -> None:
    """The file now holds a password (unless a credential helper keeps it): readable by its owner only, even when
    it existed with wider permissions (crane keeps the mode of the file it replaces)."""
    with contextlib.suppress(OSError):  # a file crane did not write (a helper's), or one we may not change
        target = path.resolve()
        if target.is_file() and target.stat().st_mode & 0o077:
            descriptor = os.open(target, os.O_RDONLY)
            try:
                os.fchmod(descriptor, 0o600)
            finally:
                os.close(descriptor)
            print(f"note: made {target} readable by you only (mode 0600): it holds credentials", file=sys.stderr)


# --- checking the credentials before they are stored ----------------------------------------------------------

def check_credentials(crane: Crane, host: str, username: str, password: str) -> None:
    """``GET /v2/`` with the credentials, as `docker login`, oras and modctl do before storing them: Basic auth
    directly, or for a Bearer challenge the token service asked with them (the distribution token flow). A
    registry that answers /v2/ without any login accepts anything, and so do we. Over https, then http where crane
    falls back to it (--insecure, loopback and private addresses), or http alone (--plain-http); TLS as crane's
    (--insecure, --ca-file, SSL_CERT_FILE)."""
    from .reference import is_loopback
    from .registry.transfer import quiet_httpx, shown_url

    httpx = quiet_httpx()
    access = crane.access.online()  # a login is asked for now, as `crane auth login` is
    schemes = access.schemes(host)
    basic = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    with httpx.Client(verify=access.tls_verify(), trust_env=not is_loopback(host), follow_redirects=True,
                      timeout=access.timeout) as client:
        def get(url: str, **options: Any) -> Any:
            try:
                return client.get(url, **options)
            except httpx.HTTPError as exc:
                raise _unreachable(exc, url, password) from None

        failed: tuple[Exception, str] | None = None  # the https attempt's error, when http is tried next
        for scheme in schemes:
            url = f"{scheme}://{host}/v2/"
            try:
                anonymous = client.get(url)
            except httpx.ConnectError as exc:
                failed = failed or (exc, url)
                if scheme == schemes[-1]:
                    raise _unreachable(*failed, password) from None
                continue
            except httpx.HTTPError as exc:
                raise _unreachable(exc, url, password) from None
            if failed is not None and anonymous.status_code == 400:  # an https server asked in http: TLS failed
                raise _unreachable(*failed, password)
            break
        challenge = anonymous.headers.get("www-authenticate", "")
        if anonymous.status_code == 401 and challenge[:7].lower() == "bearer ":
            params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            if not params.get("realm", "").startswith(("https://", "http://")):
                raise errors.UnauthorizedError(f"{host} asks for a token without saying where to get it "
                                               f"(WWW-Authenticate: {errors.printable(challenge[:200])})",
                                               "check the registry address")
            query = {"account": username, **({"service": params["service"]} if "service" in params else {})}
            answer = get(params["realm"], params=query, headers={"Authorization": basic})
            where = f"its token service {shown_url(params['realm'])}"
        else:
            answer = get(url, headers={"Authorization": basic})
            where = shown_url(url)
    if answer.status_code in (401, 403):
        raise errors.UnauthorizedError(
            f"{host} refused the password or token of {username} ({where} answered {answer.status_code}); nothing "
            "was stored", "check the user name and the password or token (a token needs the user name the registry "
            "expects, and a scope that allows pulls), then run oci-crane login again")
    if answer.status_code >= 300:
        raise errors.NetworkError(f"cannot check the credentials: {where} answered {answer.status_code}; nothing "
                                  "was stored", "check the registry address (the host alone, e.g. ghcr.io)")


def _unreachable(exc: Exception, url: str, password: str) -> errors.CraneError:
    from .registry.crane import redact
    from .registry.transfer import shown_url

    text = redact(f"{type(exc).__name__}: {exc}", [password])
    if re.search(r"CERTIFICATE|SSL|TLS|certificate", text):
        return errors.TLSError(f"TLS handshake with {shown_url(url)} failed ({text}); nothing was stored",
                               "trust the registry's CA with --ca-file /path/ca.pem (or SSL_CERT_FILE); a registry "
                               "that speaks plain http: --plain-http; one you control on a trusted network: "
                               "--insecure")
    return errors.NetworkError(f"cannot reach {shown_url(url)} to check the credentials ({text}); nothing was stored")


def logout(registry: str, *, authfile: str | Path | None = None) -> Path:
    host = _registry(registry)
    _crane(authfile).run("auth logout", host)
    return Path(authfile).expanduser().absolute() if authfile is not None else docker_config_path()


def _crane(authfile: str | Path | None) -> Crane:
    """crane for login/logout: with ``authfile`` crane rewrites that file (check_authfile: it must be a file)."""
    return Crane(authfile=authfile, writes_authfile=authfile is not None)


def _check_authfile_target(path: Path) -> None:
    """Before anything is asked of the registry: an --authfile that cannot become the credentials file."""
    if path.is_dir():
        raise errors.UsageError(f"--authfile {path} is a directory",
                                "name the credentials file itself, e.g. ~/.config/containers/auth.json")
    if path.is_symlink() and not path.exists():
        raise errors.UsageError(f"--authfile {path} is a symbolic link to {os.readlink(path)}, which does not exist",
                                "fix or remove the link, or name the credentials file itself")


def _new_authfile(authfile: str | Path) -> list[Path] | None:
    """An empty credentials file (0600, its missing directories 0700, as podman makes them) where none is yet, for
    crane to fill; returns it and the directories made (deepest first), or None when the file exists."""
    path = Path(authfile).expanduser().absolute()
    _check_authfile_target(path)
    if path.exists():
        return None
    missing = [parent for parent in path.parents if not parent.exists()]
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.write("{}\n")
    except OSError as exc:
        for directory in missing:
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise errors.UsageError(f"cannot create --authfile {path} ({exc.strerror})",
                                "name a file in a directory you can write, e.g. ~/.config/containers/auth.json"
                                ) from exc
    return [path, *missing]


def list_tags(repository: str, *, insecure: bool = False, authfile: str | Path | None = None) -> list[str]:
    reference = parse_reference(repository)
    if reference.tag not in (None, "latest") or reference.digest:
        raise errors.UsageError(f"{repository} names a tag or digest, not a repository",
                                f"list the repository itself: oci-crane ls {reference.repository_name}")
    output = Crane(insecure=insecure, authfile=authfile).run("ls", reference.repository_name)
    return [line for line in output.decode().splitlines() if line.strip()]
