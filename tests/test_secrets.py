"""No secret echoed: the credentials actually configured (a real docker credential helper on PATH, named by a
temporary DOCKER_CONFIG) are removed from errors, a reference holding userinfo is refused without echoing it,
ordinary words such as `secret` in a repository name are left alone, and doctor redacts userinfo."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.commands import run_cli
from support.scripted_registry import ScriptedRegistry, serve

SECRET = "Pl41n-S3cret-value"


def helper_env(tmp_path: Path, registry: str, script: str) -> dict[str, str]:
    """A docker-credential-octest helper running ``script`` for `get`, used for ``registry``."""
    helpers = tmp_path / "helpers"
    helpers.mkdir()
    helper = helpers / "docker-credential-octest"
    helper.write_text(f"#!/bin/sh\ncat >/dev/null\n{script}\n")
    helper.chmod(0o755)
    config = tmp_path / "docker"
    config.mkdir()
    (config / "config.json").write_text(json.dumps({"credHelpers": {registry: "octest"}}))
    return {"DOCKER_CONFIG": str(config), "PATH": f"{helpers}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize("printed", [f"tester:{SECRET}", f"token for tester is {SECRET}"])
def test_a_failing_credential_helper_never_has_its_output_shown(registry, tmp_path, cache_dir, printed):
    env = helper_env(tmp_path, registry.host, f"echo '{printed}'; exit 1")
    done = run_cli("fetch", f"{registry.host}/acme/tiny:v1", "--cache-dir", str(cache_dir), "--debug", env=env)
    assert done.returncode == 1
    assert "credential helper" in done.stderr, done.stderr
    assert SECRET not in done.stderr + done.stdout


class EchoingRegistry(ScriptedRegistry):
    """Asks for basic auth, then refuses it with a message that quotes the password (as a careless one might)."""

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization")
        if auth is None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        user, _, password = base64.b64decode(auth.split()[1]).decode().partition(":")
        body = json.dumps({"errors": [{"code": "DENIED", "message": f"{user} may not use {password} here"}]})
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())


@pytest.fixture
def echoing() -> Iterator[str]:
    with serve(EchoingRegistry) as host:
        yield host


def test_the_configured_secret_is_removed_wherever_crane_quotes_it(echoing, tmp_path, cache_dir, crane_binary):
    answer = json.dumps({"ServerURL": echoing, "Username": "tester", "Secret": SECRET})
    env = helper_env(tmp_path, echoing, f"echo '{answer}'")
    done = run_cli("fetch", f"{echoing}/acme/tiny:v1", "--cache-dir", str(cache_dir), "--insecure", env=env)
    assert done.returncode == 1
    assert "refused our credentials" in done.stderr and "tester may not use *** here" in done.stderr, done.stderr
    assert SECRET not in done.stderr


def test_a_reference_with_userinfo_is_refused_without_echoing_it(cache_dir):
    done = run_cli("fetch", f"tester:{SECRET}@127.0.0.1:9/acme/tiny:v1", "--cache-dir", str(cache_dir))
    assert done.returncode == 1
    assert "cannot hold credentials" in done.stderr and "127.0.0.1:9/acme/tiny:v1" in done.stderr, done.stderr
    assert SECRET not in done.stderr and "tester" not in done.stderr


def test_a_repository_named_secret_is_shown_as_it_is(registry, cache_dir):
    done = run_cli("fetch", f"{registry.host}/probe/secret:v1", "--cache-dir", str(cache_dir))
    assert done.returncode == 1 and "not found" in done.stderr
    assert f"{registry.host}/probe/secret:v1" in done.stderr, done.stderr


def test_doctor_redacts_userinfo_in_credential_helper_keys(tmp_path, cache_dir, crane_binary):
    config = tmp_path / "docker"
    config.mkdir()
    (config / "config.json").write_text(json.dumps({"credHelpers": {f"tester:{SECRET}@reg.example.com": "octest"}}))
    for extra in ((), ("--json",)):
        done = run_cli("doctor", "--cache-dir", str(cache_dir), *extra, env={"DOCKER_CONFIG": str(config)})
        assert "***@reg.example.com" in done.stdout, done.stdout
        assert SECRET not in done.stdout + done.stderr
