"""keychain.py predicts which credentials file crane reads: checked against the real crane (`crane auth get`) for
each layout of files a user may have, and the files crane never reads reach it through a private DOCKER_CONFIG."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from oci_crane_loader.registry.keychain import crane_environment, find_credentials

REGISTRY = "registry.example.test"
PLACES = {  # a user name per file, so that crane's answer says which file it read
    "home": ".docker/config.json",
    "docker_config": "dc/config.json",
    "registry_auth_file": "podman/auth.json",
    "xdg_runtime": "run/containers/auth.json",
    "xdg_config": ".config/containers/auth.json",
}


def layout(root: Path, *users: str) -> dict[str, str]:
    """Files for ``users`` (keys of PLACES) under ``root``, and the environment that names them."""
    for user in users:
        path = root / PLACES[user]
        path.parent.mkdir(parents=True, exist_ok=True)
        token = base64.b64encode(f"{user}:pw".encode()).decode()
        path.write_text(json.dumps({"auths": {REGISTRY: {"auth": token}}}))
    env = {key: value for key, value in os.environ.items()
           if key not in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME")}
    env.update(HOME=str(root), REGISTRY_AUTH_FILE=str(root / PLACES["registry_auth_file"]),
               XDG_RUNTIME_DIR=str(root / "run"))
    if "docker_config" in users or "home" not in users:
        env["DOCKER_CONFIG"] = str(root / "dc")
    return env


def crane_user(crane_binary: str, env: dict[str, str]) -> str | None:
    done = subprocess.run([crane_binary, "auth", "get", REGISTRY], capture_output=True, text=True, env=env,
                          check=False)
    return json.loads(done.stdout)["Username"] if done.returncode == 0 and done.stdout.startswith("{") else None


@pytest.mark.parametrize("users", [
    ("home",), ("docker_config",), ("home", "docker_config"), ("home", "registry_auth_file"),
    ("registry_auth_file", "xdg_runtime"), ("xdg_runtime",), ("xdg_runtime", "xdg_config"), ("xdg_config",), (),
])
def test_the_file_we_name_is_the_file_crane_reads(crane_binary, tmp_path, users):
    env = layout(tmp_path, *users)
    source = find_credentials(env=env)
    with crane_environment(source, None, env) as crane_env:
        read = crane_user(crane_binary, crane_env)
    predicted = next((user for user, place in PLACES.items() if source.path == tmp_path / place), None)
    if source.path is not None and not source.path.is_file():  # DOCKER_CONFIG named, its file missing
        predicted = None
    assert read == predicted, (users, source)
    assert source.redirect is (predicted == "xdg_config")  # the one file crane would not read by itself
    assert not list(Path(tmp_path).glob("**/oci-crane-env.*"))


def test_docker_config_without_its_file_shadows_the_home_config(crane_binary, tmp_path):
    env = {**layout(tmp_path, "home"), "DOCKER_CONFIG": str(tmp_path / "dc")}
    source = find_credentials(env=env)
    assert source.path == tmp_path / "dc" / "config.json" and source.origin == "DOCKER_CONFIG"
    assert "which does not exist: no credentials" in source.describe()
    assert any("(~/.docker/config.json): not read" in line for line in source.ignored)
    assert crane_user(crane_binary, env) is None  # crane agrees: no fallback to ~/.docker/config.json


def test_authfile_comes_first_and_the_private_directory_goes(crane_binary, tmp_path):
    env = layout(tmp_path, "home", "registry_auth_file")
    authfile = tmp_path / PLACES["registry_auth_file"]
    source = find_credentials(authfile, env=env)
    assert (source.path, source.origin, source.redirect) == (authfile, "--authfile", True)
    with crane_environment(source, authfile, env) as crane_env:
        private = Path(crane_env["DOCKER_CONFIG"]).parent
        assert oct(private.stat().st_mode & 0o777) == "0o700"
        assert (private / "docker" / "config.json").is_symlink()  # a link, never a copy of the secret
        assert crane_env["SSL_CERT_DIR"].startswith(str(private / "certs") + ":")
        assert crane_user(crane_binary, crane_env) == "registry_auth_file"
    assert not private.exists()
