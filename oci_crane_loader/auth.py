"""`oci-crane login`, `logout` and `ls`: the crane commands users need, without knowing where crane lives.

Credentials go to crane on stdin (`crane auth login --password-stdin`), never on a command line; crane writes them
where every crane (and docker) reads them: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, or the
credential helper that file names.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from . import errors
from .crane import Crane
from .reference import parse_reference


def docker_config_path() -> Path:
    """The file crane reads and `login` writes (crane's pkg/authn DefaultKeychain, first choice)."""
    directory = os.environ.get("DOCKER_CONFIG")
    return Path(directory) / "config.json" if directory else Path.home() / ".docker" / "config.json"


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
    if "/" in host or not ("." in host or ":" in host or host == "localhost"):
        raise errors.UsageError(f"{text!r} is not a registry host",
                                "name the registry alone, e.g. ghcr.io, docker.io or localhost:5000")
    return parse_reference(f"{host}/probe").registry


def login(registry: str, username: str, password: str, *, insecure: bool = False) -> Path:
    """Store credentials for ``registry`` where crane reads them; returns the docker config file in use."""
    host = _registry(registry)
    if not username:
        raise errors.UsageError("the user name is empty", "pass -u USER (for a token, the name the registry expects)")
    Crane(insecure=insecure).run("auth login", host, options=["-u", username, "--password-stdin"],
                                 stdin=password.encode())
    return docker_config_path()


def logout(registry: str) -> Path:
    Crane().run("auth logout", _registry(registry))
    return docker_config_path()


def list_tags(repository: str, *, insecure: bool = False) -> list[str]:
    reference = parse_reference(repository)
    if reference.tag not in (None, "latest") or reference.digest:
        raise errors.UsageError(f"{repository} names a tag or digest, not a repository",
                                f"list the repository itself: oci-crane ls {reference.repository_name}")
    output = Crane(insecure=insecure).run("ls", reference.repository_name)
    return [line for line in output.decode().splitlines() if line.strip()]
