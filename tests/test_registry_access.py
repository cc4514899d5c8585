"""Reaching a private registry as registry tools do: every credentials file crane reads (and podman's it does not),
--authfile, --ca-file, --insecure and --plain-http, on Debian's docker-registry with htpasswd and TLS, each shown by
`oci-crane doctor` with its source. Every command runs with a clean environment and an empty HOME."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support.commands import REPO_ROOT
from support.distribution import binary_path, distribution_registry
from support.models import tree_bytes, write_model

pytestmark = pytest.mark.skipif(binary_path() is None,
                                reason="Debian's docker-registry is not installed: run bin/install-test-deps")

LEAKY = ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "SSL_CERT_FILE",
         "SSL_CERT_DIR", "OCI_CRANE_LOADER_CACHE")


class Session:
    """A user's shell: an empty HOME, a private TMPDIR, none of the credentials or CA variables unless given."""

    def __init__(self, root: Path) -> None:
        self.home = root / "home"
        self.tmp = root / "tmp"
        self.cache = root / "cache"
        for directory in (self.home, self.tmp):
            directory.mkdir(parents=True)

    def run(self, *args: str, input: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        import os

        clean = {key: value for key, value in os.environ.items() if key not in LEAKY}
        clean.update(HOME=str(self.home), TMPDIR=str(self.tmp), **env)
        command = [sys.executable, "-m", "oci_crane_loader", *args]
        if args[0] in ("fetch", "inspect"):
            command += ["--cache-dir", str(self.cache)]
        return subprocess.run(command, capture_output=True, text=True, env=clean, cwd=REPO_ROOT, timeout=300,
                              check=False, input=input)

    def doctor(self, *args: str, **env: str) -> dict[str, dict[str, object]]:
        done = self.run("doctor", "--json", "--cache-dir", str(self.cache), *args, **env)
        return {check["name"]: check for check in json.loads(done.stdout)["checks"]}


def auth_json(path: Path, host: str, username: str, password: str) -> Path:
    """A credentials file as `podman login` writes it (0600, auths keyed by host)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    path.chmod(0o600)
    return path


@pytest.fixture
def private(tmp_path, crane_binary):
    with distribution_registry(tmp_path / "distribution") as running:
        yield running


@pytest.fixture
def session(tmp_path):
    return Session(tmp_path / "user")


@pytest.fixture
def model(private, session, tmp_path):
    """A model pushed with --authfile and --ca-file (podman's file, the test CA, no SSL_CERT_FILE)."""
    podman = auth_json(tmp_path / "podman" / "auth.json", private.host, private.username, private.password)
    source = write_model(tmp_path / "src")
    reference = f"{private.host}/team/model:v1"
    done = session.run("push", str(source), reference, "--authfile", str(podman), "--ca-file", str(private.ca_file),
                       "--quiet")
    assert done.returncode == 0, done.stderr
    return reference, source, podman


def test_authfile_and_ca_file_fetch_inspect_without_leaving_files(private, session, model):
    reference, source, podman = model
    ca = str(private.ca_file)
    done = session.run("fetch", reference, "--authfile", str(podman), "--ca-file", ca, "--json")
    assert done.returncode == 0, done.stderr
    assert tree_bytes(Path(json.loads(done.stdout)["path"])) == tree_bytes(source)
    inspected = session.run("inspect", reference, "--authfile", str(podman), "--ca-file", ca, "--json")
    assert inspected.returncode == 0, inspected.stderr
    for output in (done, inspected):
        assert private.password not in output.stdout + output.stderr
    assert list(session.tmp.iterdir()) == []  # the private DOCKER_CONFIG and CA directories are gone
    assert json.loads(podman.read_text())["auths"]  # read through a symlink, never rewritten

    anonymous = session.run("fetch", reference, "--ca-file", ca, "--quiet")
    assert anonymous.returncode == 1
    assert "no credentials were sent" in anonymous.stderr and "crane found no credentials file" in anonymous.stderr
    assert "refused our credentials" not in anonymous.stderr

    missing = session.run("fetch", reference, "--authfile", str(podman) + ".missing", "--quiet")
    assert missing.returncode == 2 and "--authfile" in missing.stderr and "is not a file" in missing.stderr


def test_registry_auth_file_and_what_shadows_it(private, session, model, tmp_path):
    """crane's own order: a docker config comes first; REGISTRY_AUTH_FILE next; doctor says which and why."""
    reference, _, podman = model
    ca = str(private.ca_file)
    env = {"REGISTRY_AUTH_FILE": str(podman)}
    assert session.run("fetch", reference, "--ca-file", ca, "--quiet", **env).returncode == 0
    found = session.doctor(**env)["credentials"]
    assert found["ok"] and f"{podman} (from REGISTRY_AUTH_FILE)" in str(found["detail"])
    assert "1 registry in auths" in str(found["detail"])

    docker = session.home / ".docker" / "config.json"
    docker.parent.mkdir()
    docker.write_text("{}")  # e.g. docker desktop's, without this registry
    shadowed = session.doctor(**env)["credentials"]
    assert f"{docker} (from ~/.docker/config.json)" in str(shadowed["detail"])
    assert f"{podman} (REGISTRY_AUTH_FILE): not read" in str(shadowed["detail"])
    refused = session.run("fetch", reference, "--ca-file", ca, "--quiet", **env)
    assert refused.returncode == 1 and f"crane read {docker} (from ~/.docker/config.json)" in refused.stderr
    assert session.run("fetch", reference, "--ca-file", ca, "--authfile", str(podman), "--quiet",
                       "--cache-dir", str(tmp_path / "other"), **env).returncode == 0


def test_login_and_logout_with_authfile_write_that_file_only(private, session, model, tmp_path):
    """`login --authfile` stores the credentials in the file named (podman's way: a new file 0600 in a new 0700
    directory; an existing one keeps its other registries), which fetch and ls then read with the same option;
    the password goes on stdin only. `logout --authfile` takes them out of it again."""
    reference, source, _ = model
    host, ca = private.host, str(private.ca_file)
    new = tmp_path / "creds" / "team" / "auth.json"
    login = session.run("login", host, "-u", private.username, "--password-stdin", "--authfile", str(new),
                        "--ca-file", ca, "--debug", input=private.password + "\n")
    assert login.returncode == 0, login.stderr
    assert f"logged in to {host} as {private.username} (credentials in {new}" in login.stderr
    assert private.password not in login.stdout + login.stderr  # --debug logs crane's argv: no password in it
    assert list(json.loads(new.read_text())["auths"]) == [host]
    assert (new.stat().st_mode & 0o777, new.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    assert [p.name for p in new.parent.iterdir()] == ["auth.json"]  # crane's private directory is gone
    assert not (session.home / ".docker").exists() and list(session.tmp.iterdir()) == []  # no docker config made

    fetched = session.run("fetch", reference, "--authfile", str(new), "--ca-file", ca, "--json")
    assert fetched.returncode == 0, fetched.stderr
    assert tree_bytes(Path(json.loads(fetched.stdout)["path"])) == tree_bytes(source)
    tags = session.run("ls", reference.rsplit(":", 1)[0], "--authfile", str(new), "--json", SSL_CERT_FILE=ca)
    assert tags.returncode == 0 and json.loads(tags.stdout) == ["v1"], tags.stderr

    shared = auth_json(tmp_path / "shared" / "auth.json", "other.example.com", "someone", "elsewhere")
    assert session.run("login", host, "-u", private.username, "--password-stdin", "--authfile", str(shared),
                       "--ca-file", ca, input=private.password).returncode == 0
    assert set(json.loads(shared.read_text())["auths"]) == {"other.example.com", host}
    logout = session.run("logout", host, "--authfile", str(shared))
    assert logout.returncode == 0 and str(shared) in logout.stderr, logout.stderr
    assert set(json.loads(shared.read_text())["auths"]) == {"other.example.com"}
    refused = session.run("fetch", reference, "--authfile", str(shared), "--ca-file", ca, "--quiet",
                          "--cache-dir", str(tmp_path / "other-cache"))
    assert refused.returncode == 1 and "no credentials were sent" in refused.stderr
    assert f"{shared} (from --authfile), which holds none for this registry" in refused.stderr
    assert f"oci-crane login --authfile {shared} REGISTRY" in refused.stderr  # the fix renews that very file

    missing = session.run("logout", host, "--authfile", str(tmp_path / "none.json"))
    assert missing.returncode == 1 and "is not a file" in missing.stderr
    assert not (tmp_path / "none.json").exists()


@pytest.mark.parametrize("place", ["XDG_RUNTIME_DIR", "XDG_CONFIG_HOME"])
def test_podman_default_files(private, session, model, tmp_path, place):
    """$XDG_RUNTIME_DIR/containers/auth.json crane reads itself; ~/.config/containers/auth.json (podman's default
    on macOS, its fallback on Linux) crane never reads: it is handed over as a private DOCKER_CONFIG."""
    reference = model[0]
    directory = tmp_path / place.lower()
    auth_json(directory / "containers" / "auth.json", private.host, private.username, private.password)
    env = {place: str(directory)}
    done = session.run("fetch", reference, "--ca-file", str(private.ca_file), "--quiet", **env)
    assert done.returncode == 0, done.stderr
    detail = str(session.doctor(**env)["credentials"]["detail"])
    assert str(directory / "containers" / "auth.json") in detail
    assert ("handed to crane as DOCKER_CONFIG" in detail) is (place == "XDG_CONFIG_HOME")
    assert list(session.tmp.iterdir()) == []


def test_tls_choices(private, session, model):
    reference, _, podman = model
    auth = ("--authfile", str(podman), "--quiet")
    untrusted = session.run("fetch", reference, *auth)
    assert untrusted.returncode == 1 and "TLS" in untrusted.stderr and "--ca-file" in untrusted.stderr
    insecure = session.run("fetch", reference, "--insecure", *auth)  # no CA at all: verification skipped
    assert insecure.returncode == 0, insecure.stderr
    both = session.run("fetch", reference, "--insecure", "--ca-file", str(private.ca_file), *auth)
    assert both.returncode == 2 and "contradict" in both.stderr
    plain = session.run("fetch", reference, "--plain-http", "--ca-file", str(private.ca_file), *auth)
    assert plain.returncode == 2 and "contradict" in plain.stderr


def _non_loopback_looking_name() -> str | None:
    """This machine's host name when it resolves to 127.0.0.1: a name crane does not treat as local (it allows
    plain http only for localhost, *.local, 127.0.0.1, ::1 and private 10/172.16/192.168 addresses)."""
    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        return None
    local = name == "localhost" or name.endswith(".local") or "127.0.0.1" in name
    return name if address == "127.0.0.1" and not local else None


@pytest.mark.skipif(_non_loopback_looking_name() is None,
                    reason="the host name does not resolve to 127.0.0.1 (add it to /etc/hosts)")
def test_plain_http_for_a_name_crane_does_not_treat_as_local(session, tmp_path, crane_binary):
    with distribution_registry(tmp_path / "plain", tls=False, auth=False) as plain:
        source = write_model(tmp_path / "src")
        assert session.run("push", str(source), f"{plain.host}/team/model:v1", "--quiet").returncode == 0
        port = plain.host.rpartition(":")[2]
        reference = f"{_non_loopback_looking_name()}:{port}/team/model:v1"
        https = session.run("fetch", reference, "--quiet")
        assert https.returncode == 1 and "--plain-http" in https.stderr  # crane tried https
        done = session.run("fetch", reference, "--plain-http", "--json")
        assert done.returncode == 0, done.stderr
        assert tree_bytes(Path(json.loads(done.stdout)["path"])) == tree_bytes(source)
