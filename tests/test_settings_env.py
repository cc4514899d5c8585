"""OCI_CRANE_* environment variables (settings.py): every one parsed, a bad one one clear error naming it, never
a traceback at import; the loader honours them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.commands import REPO_ROOT, run_cli

from oci_crane_loader import errors
from oci_crane_loader.options import from_extra_config
from oci_crane_loader.pull import open_puller
from oci_crane_loader.settings import Settings, settings

UNREACHABLE = "127.0.0.1:9/acme/tiny:v1"  # never contacted: every case fails before the network


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    settings.cache_clear()
    yield
    settings.cache_clear()


@pytest.mark.parametrize(("name", "value"), [
    ("OCI_CRANE_TIMEOUT", "abc"), ("OCI_CRANE_LOCK_TIMEOUT", "x"), ("OCI_CRANE_STALL_TIMEOUT", "nan"),
    ("OCI_CRANE_STALL_TIMEOUT", "inf"), ("OCI_CRANE_TIMEOUT", "0"), ("OCI_CRANE_TIMEOUT", "-5"),
    ("OCI_CRANE_OFFLINE", "maybe"), ("OCI_CRANE_NO_FSYNC", "2"), ("OCI_CRANE_MAX_UNPACK_RATIO", "lots"),
    ("OCI_CRANE_MAX_UNPACK_BYTES", "-5G"), ("OCI_CRANE_TIMEOUT", "1e300"), ("OCI_CRANE_STALL_TIMEOUT", "1e300"),
    ("OCI_CRANE_LOCK_TIMEOUT", "1e12"),
])
def test_a_bad_setting_is_one_line_naming_the_variable(cache_dir, name, value):
    done = run_cli("fetch", UNREACHABLE, "--cache-dir", str(cache_dir), "-q", env={name: value})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"error: {name}={value!r} is ") and f"-- fix: set {name} to" in lines[0]


def test_settings_parse_every_variable():
    parsed = Settings.from_environment({
        "OCI_CRANE_TIMEOUT": "7.5", "OCI_CRANE_STALL_TIMEOUT": " 3 ", "OCI_CRANE_LOCK_TIMEOUT": "1e3",
        "OCI_CRANE_OFFLINE": "Yes", "OCI_CRANE_NO_FSYNC": "on", "OCI_CRANE_LOADER_CACHE": "/srv/cache"})
    assert parsed == Settings(7.5, 3.0, 1000.0, True, True, Path("/srv/cache"))
    assert Settings.from_environment({"OCI_CRANE_OFFLINE": "0", "OCI_CRANE_TIMEOUT": ""}) == Settings()


def test_the_package_imports_with_bad_settings():
    env = {**os.environ, "OCI_CRANE_TIMEOUT": "abc", "OCI_CRANE_LOCK_TIMEOUT": "x"}
    done = subprocess.run([sys.executable, "-c", "import oci_crane_loader.cli, oci_crane_loader.loader, "
                           "oci_crane_loader.cache.store"], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                          check=False)
    assert done.returncode == 0, done.stderr


def test_the_loader_honours_oci_crane_offline(monkeypatch, fresh_settings, cache_dir):
    monkeypatch.setenv("OCI_CRANE_OFFLINE", "1")
    monkeypatch.setenv("OCI_CRANE_BINARY", "/nonexistent/crane")  # proves crane is never started
    puller = open_puller(from_extra_config(None, cache_dir))
    assert puller.crane.offline is True
    with pytest.raises(errors.OfflineError, match="is not in the cache"):
        puller.prepare(UNREACHABLE)


def test_help_lists_every_variable_the_package_reads():
    """`oci-crane --help` (settings.VARIABLES) names every OCI_CRANE_* variable a module of the package reads."""
    import re

    from oci_crane_loader.settings import VARIABLES

    package = REPO_ROOT / "oci_crane_loader"
    read = {name for path in package.rglob("*.py")
            for name in re.findall(r"\bOCI_CRANE_[A-Z_]*[A-Z]\b", path.read_text())}
    prefixes = {"OCI_CRANE_LORA", "OCI_CRANE_MAX_UNPACK", "OCI_CRANE_RANGE"}  # "OCI_CRANE_RANGE_*" in prose
    assert read - prefixes - set(VARIABLES) == set()
    assert set(VARIABLES) - read == set()  # and none is listed that nothing reads
