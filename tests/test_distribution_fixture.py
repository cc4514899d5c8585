"""The distribution registry fixture behaves like a real private registry for crane."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.distribution import DistributionRegistry, binary_path, distribution_registry


@pytest.fixture
def crane_bin(crane_binary: str) -> str:
    """The crane the package itself runs (OCI_CRANE_BINARY, the bundled copy from bin/install-crane, or PATH)."""
    return crane_binary


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[DistributionRegistry]:
    if binary_path() is None:
        pytest.skip("Debian's docker-registry is not installed: run bin/install-test-deps")
    with distribution_registry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
def crane(crane_bin: str, tmp_path: Path):
    """Run crane with a hermetic environment: no user credentials or CA settings leak in."""
    home = tmp_path / "home"
    home.mkdir()
    leaky = {"DOCKER_CONFIG", "SSL_CERT_FILE", "SSL_CERT_DIR", "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR"}
    base = {k: v for k, v in os.environ.items() if k not in leaky}
    base["HOME"] = str(home)

    def run(*args: str, **env: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [crane_bin, *args],
            env={**base, **{k: str(v) for k, v in env.items()}},
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


def trusted(reg: DistributionRegistry) -> dict[str, Path]:
    assert reg.ca_file is not None
    return {"DOCKER_CONFIG": reg.docker_config, "SSL_CERT_FILE": reg.ca_file}


def test_missing_tag_is_manifest_unknown_when_authenticated(registry, crane):
    result = crane("manifest", f"{registry.host}/x/y:latest", **trusted(registry))
    assert result.returncode != 0
    assert "MANIFEST_UNKNOWN" in result.stderr or "NAME_UNKNOWN" in result.stderr, result.stderr


def test_no_credentials_is_unauthorized(registry, crane, tmp_path):
    empty = tmp_path / "empty-docker-config"
    empty.mkdir()
    result = crane("manifest", f"{registry.host}/x/y:latest", DOCKER_CONFIG=empty, SSL_CERT_FILE=registry.ca_file)
    assert result.returncode != 0
    assert "UNAUTHORIZED: authentication required" in result.stderr, result.stderr


def test_wrong_password_is_unauthorized(registry, crane, tmp_path):
    config = tmp_path / "wrong-docker-config"
    config.mkdir()
    (config / "config.json").write_text(
        json.dumps({"auths": {registry.host: {"username": "tester", "password": "nope"}}})
    )
    result = crane("manifest", f"{registry.host}/x/y:latest", DOCKER_CONFIG=config, SSL_CERT_FILE=registry.ca_file)
    assert result.returncode != 0
    assert "UNAUTHORIZED" in result.stderr, result.stderr


def test_untrusted_ca_is_x509_error(registry, crane):
    result = crane("manifest", f"{registry.host}/x/y:latest")
    assert result.returncode != 0
    assert "x509: certificate signed by unknown authority" in result.stderr, result.stderr


def test_append_then_manifest(registry, crane, tmp_path):
    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w") as tar:
        data = b"hello\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    ref = f"{registry.host}/x/y:v1"

    pushed = crane("append", "--new_layer", str(layer), "-t", ref, **trusted(registry))
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.startswith(f"{registry.host}/x/y@sha256:")

    fetched = crane("manifest", ref, **trusted(registry))
    assert fetched.returncode == 0, fetched.stderr
    assert len(json.loads(fetched.stdout)["layers"]) == 1
    assert "PUT /v2/x/y/manifests/v1" in registry.log()


def test_plain_http_without_auth(crane, tmp_path):
    if binary_path() is None:
        pytest.skip("Debian's docker-registry is not installed: run bin/install-test-deps")
    with distribution_registry(tmp_path / "registry", tls=False, auth=False) as reg:
        assert reg.ca_file is None
        # crane falls back to plain HTTP for 127.0.0.1 on its own.
        result = crane("manifest", f"{reg.host}/x/y:latest")
    assert "MANIFEST_UNKNOWN" in result.stderr, result.stderr


def test_registry_is_stopped_on_exit(tmp_path):
    if binary_path() is None:
        pytest.skip("Debian's docker-registry is not installed: run bin/install-test-deps")
    with distribution_registry(tmp_path / "registry") as reg:
        port = int(reg.host.rsplit(":", 1)[1])
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
