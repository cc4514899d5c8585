"""Which credentials file crane reads, found in crane's own order, and the one redirection we add.

crane v0.21.9 (go-containerregistry pkg/authn DefaultKeychain) reads ONE file:
  1. a docker config: ``$DOCKER_CONFIG/config.json`` when DOCKER_CONFIG is set, else ``~/.docker/config.json``
     (chosen when either file exists; with DOCKER_CONFIG set but its file missing, no credentials at all);
     its ``credsStore`` / ``credHelpers`` name docker-credential-* helpers that crane runs;
  2. else ``$REGISTRY_AUTH_FILE`` (podman, skopeo);
  3. else ``$XDG_RUNTIME_DIR/containers/auth.json`` (podman login's default on Linux);
  4. else none: anonymous.
We add what podman users have and crane never reads: ``--authfile PATH`` (skopeo's option, first of all) and
``${XDG_CONFIG_HOME:-~/.config}/containers/auth.json`` (podman's default on macOS, its fallback on Linux; last).
crane gets those through ``DOCKER_CONFIG`` pointing at a private 0700 directory whose ``config.json`` is a symlink to
the file (no secret is copied), removed when the crane command ends (see ``crane_environment``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

AUTHFILE = "--authfile"
HOME_DOCKER_CONFIG = "~/.docker/config.json"  # docker's (and crane's) credentials file when DOCKER_CONFIG is unset


@dataclass(frozen=True)
class CredentialSource:
    """The file crane reads credentials from (``path`` None: none, anonymous) and the setting that chose it."""

    path: Path | None
    origin: str  # "--authfile", "DOCKER_CONFIG", HOME_DOCKER_CONFIG, "REGISTRY_AUTH_FILE", ...
    redirect: bool = False  # crane would not read it by itself: handed over through a private DOCKER_CONFIG
    ignored: tuple[str, ...] = ()  # credentials files that exist but are not read, each with why

    def describe(self) -> str:
        if self.path is None:
            return "no credentials file (anonymous)"
        missing = "" if self.path.is_file() else ", which does not exist: no credentials"
        return f"{self.path} (from {self.origin}{missing})"


def docker_config_path(env: Mapping[str, str] | None = None) -> Path:
    """The docker config crane reads first and `crane auth login` writes (pkg/authn DefaultKeychain):
    ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    env = os.environ if env is None else env
    directory = env.get("DOCKER_CONFIG")
    return Path(directory) / "config.json" if directory else _home_docker_config(env)


def _home_docker_config(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or Path.home()) / HOME_DOCKER_CONFIG.removeprefix("~/")


def find_credentials(authfile: str | Path | None = None, env: Mapping[str, str] | None = None) -> CredentialSource:
    """The credentials file in use for ``authfile`` (None: from the environment, in crane's order above)."""
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home())
    docker_dir = env.get("DOCKER_CONFIG", "")
    home_config = _home_docker_config(env)
    docker_config = docker_config_path(env)
    origin = "DOCKER_CONFIG" if docker_dir else HOME_DOCKER_CONFIG
    found_docker = home_config.is_file() or docker_config.is_file()
    candidates = [(docker_config if found_docker else None, origin, False)]
    if env.get("REGISTRY_AUTH_FILE"):
        candidates.append((Path(env["REGISTRY_AUTH_FILE"]), "REGISTRY_AUTH_FILE", False))
    if env.get("XDG_RUNTIME_DIR"):
        candidates.append((Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json", "XDG_RUNTIME_DIR", False))
    config_home = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    candidates.append((config_home / "containers" / "auth.json", "podman's ~/.config/containers/auth.json", True))
    existing = [(path, name, redirect) for path, name, redirect in candidates
                if path is not None and (path.is_file() or (name == origin and found_docker))]
    if authfile is not None:
        chosen: tuple[Path | None, str, bool] = (Path(authfile), AUTHFILE, True)
    else:
        chosen = existing[0] if existing else (None, "none found", False)
    if docker_dir and home_config.is_file():  # crane loads DOCKER_CONFIG's file, even a missing one
        existing.insert(1, (home_config, HOME_DOCKER_CONFIG, False))
    ignored = tuple(f"{path} ({name}): not read, {chosen[1]} comes first" for path, name, _ in existing
                    if path != chosen[0] and path is not None and path.is_file())
    return CredentialSource(chosen[0], chosen[1], chosen[2], ignored)


@contextlib.contextmanager
def crane_environment(source: CredentialSource, ca_file: Path | None, env: Mapping[str, str], *,
                      writes: bool = False) -> Iterator[dict[str, str]]:
    """``env`` for one crane command: DOCKER_CONFIG pointing at ``source`` when crane would not find it itself,
    and ``ca_file`` added to the CAs Go trusts (SSL_CERT_DIR: the system bundle, which SSL_CERT_FILE would
    replace, stays trusted, so blob redirects to public storage still verify). Both as symlinks in one private
    directory, removed afterwards. ``writes`` (`crane auth login|logout`): crane saves the file by renaming a temp
    file made beside DOCKER_CONFIG's config.json onto the symlink's target, so the private directory is made
    beside the file's real path, on its file system (a rename cannot cross file systems)."""
    result = dict(env)
    if not ((source.redirect and source.path is not None) or ca_file is not None):
        yield result
        return
    target = source.path.resolve() if writes and source.path is not None else None
    private = Path(tempfile.mkdtemp(prefix=".oci-crane-env.", dir=target.parent if target else None))  # 0700
    try:
        if source.redirect and source.path is not None:
            (private / "docker").mkdir()
            (private / "docker" / "config.json").symlink_to(target or source.path.absolute())
            result["DOCKER_CONFIG"] = str(private / "docker")
        if ca_file is not None:
            (private / "certs").mkdir()
            (private / "certs" / "oci-crane-ca.pem").symlink_to(ca_file.absolute())
            # Go reads every file of every SSL_CERT_DIR entry, after the bundle file; keep the user's or Go's dirs.
            dirs = env.get("SSL_CERT_DIR") or "/etc/ssl/certs:/etc/pki/tls/certs"
            result["SSL_CERT_DIR"] = f"{private / 'certs'}:{dirs}"
        yield result
    finally:
        shutil.rmtree(private, ignore_errors=True)
