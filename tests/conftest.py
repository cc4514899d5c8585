"""Shared fixtures: a real crane and a real registry on 127.0.0.1; the no-skip rule of CI. Helpers live in
tests/support/ (models.py: models pushed with crane; commands.py: the command line as a user runs it)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.distribution import DistributionRegistry, binary_path, distribution_registry

from oci_crane_loader import errors
from oci_crane_loader.registry.crane import find_crane
from oci_crane_loader.registry.local_registry import LocalRegistry, serve_registry


@pytest.fixture(scope="session")
def crane_binary() -> str:
    try:
        return find_crane()
    except errors.CraneMissingError as exc:
        pytest.skip(f"crane is not installed ({exc.cause}): run bin/install-crane")


@pytest.fixture
def registry(crane_binary: str, tmp_path: Path) -> Iterator[LocalRegistry]:
    """A fresh `crane registry serve` per test (disk-backed, so tests can damage stored blobs)."""
    disk = tmp_path / "registry-disk"
    disk.mkdir()
    with serve_registry(disk=disk) as running:
        yield running


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With OCI_CRANE_NO_SKIPS=1 (set by .ci/run) a skipped test fails the run: CI installs every component,
    so a skip there means a broken install, not a missing optional part. No test at all fails too."""
    if os.environ.get("OCI_CRANE_NO_SKIPS") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped or session.testscollected == 0:
        print(f"\nOCI_CRANE_NO_SKIPS=1: {skipped} skipped, {session.testscollected} collected -> failing the run")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def pull_through(registry: LocalRegistry, tmp_path: Path) -> Iterator[DistributionRegistry]:
    """The CNCF distribution registry (Debian's docker-registry) in proxy mode: a pull-through mirror of the
    `registry` fixture, plain http, no auth (docs/mirrors.md)."""
    if binary_path() is None:
        pytest.skip("Debian's docker-registry is not installed: run bin/install-test-deps")
    with distribution_registry(tmp_path / "mirror", tls=False, auth=False,
                               proxy_remote=f"http://{registry.host}") as mirror:
        yield mirror
