"""`oci-crane login`, `logout` and `ls`: the crane commands users need, without knowing where crane lives.

Credentials go to crane on stdin (`crane auth login --password-stdin`), never on a command line; crane writes them
where every crane (and docker) reads them: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, or the
credential helper that file names. With ``authfile`` (--authfile, as podman's) into that file instead, which crane
rewrites through a private DOCKER_CONFIG (keychain.crane_environment).
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

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


def login(registry: str, username: str, password: str, *, insecure: bool = False,
          authfile: str | Path | None = None) -> Path:
    """Store credentials for ``registry`` where crane reads them, or in ``authfile`` (made, 0600, if missing);
    returns the file in use."""
    host = _registry(registry)
    if not username:
        raise errors.UsageError("the user name is empty", "pass -u USER (for a token, the name the registry expects)")
    made = None if authfile is None else _new_authfile(authfile)
    try:
        _crane(authfile, insecure=insecure).run("auth login", host, options=["-u", username, "--password-stdin"],
                                                stdin=password.encode())
    except BaseException:
        if made is not None:  # nothing left behind by a login that failed
            made.unlink(missing_ok=True)
        raise
    return Path(authfile).expanduser().absolute() if authfile is not None else docker_config_path()


def logout(registry: str, *, authfile: str | Path | None = None) -> Path:
    host = _registry(registry)
    _crane(authfile).run("auth logout", host)
    return Path(authfile).expanduser().absolute() if authfile is not None else docker_config_path()


def _crane(authfile: str | Path | None, *, insecure: bool = False) -> Crane:
    """crane for login/logout: with ``authfile`` crane rewrites that file (check_authfile: it must be a file)."""
    return Crane(insecure=insecure, authfile=authfile, writes_authfile=authfile is not None)


def _new_authfile(authfile: str | Path) -> Path | None:
    """An empty credentials file (0600, its directory 0700 if missing, as podman makes them) where none is yet, for
    crane to fill; returns it, or None when the file exists."""
    path = Path(authfile).expanduser().absolute()
    if path.is_dir():
        raise errors.UsageError(f"--authfile {path} is a directory",
                                "name the credentials file itself, e.g. ~/.config/containers/auth.json")
    if path.exists():
        return None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write("{}\n")
    return path


def list_tags(repository: str, *, insecure: bool = False, authfile: str | Path | None = None) -> list[str]:
    reference = parse_reference(repository)
    if reference.tag not in (None, "latest") or reference.digest:
        raise errors.UsageError(f"{repository} names a tag or digest, not a repository",
                                f"list the repository itself: oci-crane ls {reference.repository_name}")
    output = Crane(insecure=insecure, authfile=authfile).run("ls", reference.repository_name)
    return [line for line in output.decode().splitlines() if line.strip()]
