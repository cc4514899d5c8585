"""A private registry as users run one: Debian's docker-registry (CNCF distribution) with htpasswd and TLS.

Credentials reach crane only through the docker config keychain; they must never show in output or errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.commands import run_cli
from support.distribution import binary_path, distribution_registry
from support.models import push_model, tree_bytes, write_model

pytestmark = pytest.mark.skipif(binary_path() is None,
                                reason="Debian's docker-registry is not installed: run bin/install-test-deps")


@pytest.fixture
def private(tmp_path, crane_binary, monkeypatch):
    with distribution_registry(tmp_path / "distribution") as running:
        monkeypatch.setenv("DOCKER_CONFIG", str(running.docker_config))
        monkeypatch.setenv("SSL_CERT_FILE", str(running.ca_file))
        yield running


def test_fetch_with_keychain_credentials_and_private_ca(private, tmp_path, cache_dir):
    source = write_model(tmp_path / "src")
    push_model(source, f"{private.host}/team/model:v1", tmp_path)
    done = run_cli("fetch", f"{private.host}/team/model:v1", "--cache-dir", str(cache_dir), "--json")
    assert done.returncode == 0, done.stderr
    assert tree_bytes(Path(json.loads(done.stdout)["path"])) == tree_bytes(source)
    assert private.password not in done.stdout + done.stderr


def test_missing_credentials_are_unauthorized_and_no_secret_leaks(private, tmp_path, cache_dir):
    push_model(write_model(tmp_path / "src"), f"{private.host}/team/model:v1", tmp_path)
    anonymous = tmp_path / "anonymous-docker-config"
    anonymous.mkdir()
    (anonymous / "config.json").write_text("{}")
    done = run_cli("fetch", f"{private.host}/team/model:v1", "--cache-dir", str(cache_dir),
                   env={"DOCKER_CONFIG": str(anonymous)})
    assert done.returncode == 1
    assert "no credentials were sent" in done.stderr and "docker login" in done.stderr
    assert "refused our credentials" not in done.stderr  # none were sent: there was nothing to refuse
    wrong = tmp_path / "wrong-docker-config"
    wrong.mkdir()
    import base64

    token = base64.b64encode(f"{private.username}:not-{private.password}".encode()).decode()
    (wrong / "config.json").write_text(json.dumps({"auths": {private.host: {"auth": token}}}))
    done = run_cli("fetch", f"{private.host}/team/model:v1", "--cache-dir", str(cache_dir), "--debug",
                   env={"DOCKER_CONFIG": str(wrong)})
    assert done.returncode == 1 and "UNAUTHORIZED" in done.stderr
    for secret in (private.password, token, f"not-{private.password}"):
        assert secret not in done.stderr and secret not in done.stdout


def test_an_empty_docker_config_hiding_registry_auth_file_is_named(private, tmp_path, cache_dir, monkeypatch):
    """What `logout` leaves, ~/.docker/config.json with no auths, still comes first: REGISTRY_AUTH_FILE is unread."""
    push_model(write_model(tmp_path / "src"), f"{private.host}/team/model:v1", tmp_path)
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker" / "config.json").write_text('{\n\t"auths": {}\n}')
    podman = tmp_path / "podman-auth.json"
    podman.write_text((private.docker_config / "config.json").read_text())
    monkeypatch.delenv("DOCKER_CONFIG")
    env = {"HOME": str(home), "REGISTRY_AUTH_FILE": str(podman)}
    done = run_cli("fetch", f"{private.host}/team/model:v1", "--cache-dir", str(cache_dir), "-q", env=env)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("error: the registry asks for credentials, and no credentials were sent: ")
    assert f"crane read {home}/.docker/config.json (from ~/.docker/config.json), which holds none" in done.stderr
    assert f"REGISTRY_AUTH_FILE ({podman}) is ignored while that file exists: pass --authfile {podman}" \
        in done.stderr
    fixed = run_cli("fetch", f"{private.host}/team/model:v1", "--cache-dir", str(cache_dir), "-q", "--authfile",
                    str(podman), env=env)
    assert fixed.returncode == 0, fixed.stderr


def test_untrusted_certificate_is_a_tls_error_with_a_fix(private, tmp_path, cache_dir):
    push_model(write_model(tmp_path / "src"), f"{private.host}/team/model:v1", tmp_path)
    done = run_cli("fetch", f"{private.host}/team/model:v1", "--cache-dir", str(cache_dir),
                   env={"SSL_CERT_FILE": str(tmp_path / "no-such-ca.pem")})
    assert done.returncode == 1
    assert "TLS" in done.stderr and "SSL_CERT_FILE" in done.stderr and "--insecure" in done.stderr
    insecure = run_cli("fetch", f"{private.host}/team/model:v1", "--cache-dir", str(cache_dir), "--insecure", "-q",
                       env={"SSL_CERT_FILE": str(tmp_path / "no-such-ca.pem")})
    assert insecure.returncode == 0, insecure.stderr


def test_failing_credential_helper_is_named(private, tmp_path, cache_dir):
    helper_config = tmp_path / "helper-docker-config"
    helper_config.mkdir()
    (helper_config / "config.json").write_text(json.dumps({"credsStore": "oci-crane-test-missing"}))
    done = run_cli("fetch", f"{private.host}/team/model:v1", "--cache-dir", str(cache_dir),
                   env={"DOCKER_CONFIG": str(helper_config)})
    assert done.returncode == 1
    assert "credential helper" in done.stderr and "credsStore" in done.stderr


def test_login_ls_logout_with_the_bundled_crane(private, tmp_path, cache_dir):
    """`oci-crane login` writes the docker config crane reads, with the password on stdin only; `logout` undoes it."""
    push_model(write_model(tmp_path / "src"), f"{private.host}/team/model:v1", tmp_path)
    config_dir = tmp_path / "fresh-docker-config"
    config_dir.mkdir()
    env = {"DOCKER_CONFIG": str(config_dir)}
    reference = f"{private.host}/team/model:v1"

    before = run_cli("ls", f"{private.host}/team/model", env=env)
    assert before.returncode == 1 and "oci-crane login" in before.stderr

    login = run_cli("login", private.host, "-u", private.username, "--password-stdin", "--debug", env=env,
                    input=private.password + "\n")
    assert login.returncode == 0, login.stderr
    assert f"logged in to {private.host} as {private.username}" in login.stderr
    assert str(config_dir / "config.json") in login.stderr
    assert private.password not in login.stdout + login.stderr  # --debug logs crane's argv: no password in it
    auths = json.loads((config_dir / "config.json").read_text())["auths"]
    assert list(auths) == [private.host]

    tags = run_cli("ls", f"{private.host}/team/model", "--json", env=env)
    assert tags.returncode == 0, tags.stderr
    assert json.loads(tags.stdout) == ["v1"]
    fetched = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "-q", env=env)
    assert fetched.returncode == 0, fetched.stderr

    logout = run_cli("logout", private.host, env=env)
    assert logout.returncode == 0, logout.stderr
    assert json.loads((config_dir / "config.json").read_text()).get("auths", {}) == {}
    after = run_cli("fetch", reference, "--cache-dir", str(tmp_path / "other-cache"), env=env)
    assert after.returncode == 1 and "no credentials were sent" in after.stderr


def test_login_refuses_what_is_not_a_registry_and_an_empty_password(private, tmp_path):
    env = {"DOCKER_CONFIG": str(tmp_path)}
    not_host = run_cli("login", "team/model", "-u", "me", "--password-stdin", env=env, input="x")
    assert not_host.returncode == 1
    assert "'team/model' is not a registry host -- fix: name the registry alone" in not_host.stderr
    empty = run_cli("login", private.host, "-u", "me", "--password-stdin", env=env, input="\n")
    assert empty.returncode == 1 and "the password is empty" in empty.stderr
    assert not (tmp_path / "config.json").exists()


def login_fails(*args: str, env: dict[str, str], password: str) -> str:
    """The single error line of a login that must be refused."""
    done = run_cli("login", *args, "--password-stdin", env=env, input=password + "\n")
    assert done.returncode == 1 and done.stdout == "", done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and " -- fix: " in lines[0], done.stderr
    assert password not in done.stderr
    return lines[0]


def test_a_wrong_password_is_refused_before_anything_is_written(private, tmp_path):
    """docs/registries.md: login checks the credentials with the registry first (GET /v2/ with basic auth here)."""
    config_dir = tmp_path / "docker-config"
    config_dir.mkdir()
    env = {"DOCKER_CONFIG": str(config_dir)}
    wrong = f"not-{private.password}"
    line = login_fails(private.host, "-u", private.username, env=env, password=wrong)
    assert line.startswith(f"error: {private.host} refused the password or token of {private.username} "
                           f"(https://{private.host}/v2/ answered 401); nothing was stored -- fix: check the user")
    assert not (config_dir / "config.json").exists()
    line = login_fails(private.host, "-u", "mallory", env=env, password=private.password)
    assert "refused the password or token of mallory" in line

    new = tmp_path / "made" / "for" / "auth.json"  # neither the file nor its directories stay behind
    login_fails(private.host, "-u", private.username, "--authfile", str(new), env=env, password=wrong)
    assert not (tmp_path / "made").exists()
    existing = tmp_path / "existing.json"
    existing.write_text('{"auths": {"other.example.com": {"auth": "b3RoZXI6cHc="}}}')
    before = existing.read_bytes()
    login_fails(private.host, "-u", private.username, "--authfile", str(existing), env=env, password=wrong)
    assert existing.read_bytes() == before

    right = run_cli("login", private.host, "-u", private.username, "--password-stdin", "--authfile", str(new),
                    env=env, input=private.password)
    assert right.returncode == 0, right.stderr
    assert list(json.loads(new.read_text())["auths"]) == [private.host]


def test_login_checks_tls_as_fetch_does(private, tmp_path):
    env = {"DOCKER_CONFIG": str(tmp_path), "SSL_CERT_FILE": str(tmp_path / "no-such-ca.pem")}
    line = login_fails(private.host, "-u", private.username, env=env, password=private.password)
    assert line.startswith(f"error: TLS handshake with https://{private.host}/v2/ failed (")
    assert "nothing was stored" in line and "--ca-file" in line
    assert not (tmp_path / "config.json").exists()
    for way in (("--ca-file", str(private.ca_file)), ("--insecure",)):
        done = run_cli("login", private.host, "-u", private.username, "--password-stdin", *way, env=env,
                       input=private.password)
        assert done.returncode == 0, done.stderr


def test_login_makes_an_existing_credentials_file_private(private, tmp_path):
    shared = tmp_path / "auth.json"
    shared.write_text("{}")
    shared.chmod(0o644)
    done = run_cli("login", private.host, "-u", private.username, "--password-stdin", "--authfile", str(shared),
                   env={"DOCKER_CONFIG": str(tmp_path / "unused")}, input=private.password)
    assert done.returncode == 0, done.stderr
    assert shared.stat().st_mode & 0o777 == 0o600
    assert f"note: made {shared} readable by you only (mode 0600)" in done.stderr


def test_login_into_a_dangling_link_says_so(private, tmp_path):
    link = tmp_path / "auth.json"
    link.symlink_to(tmp_path / "gone" / "auth.json")
    line = login_fails(private.host, "-u", private.username, "--authfile", str(link),
                       env={"DOCKER_CONFIG": str(tmp_path)}, password=private.password)
    assert line == (f"error: --authfile {link} is a symbolic link to {tmp_path / 'gone' / 'auth.json'}, which does "
                    "not exist -- fix: fix or remove the link, or name the credentials file itself")
    assert "cache" not in line
