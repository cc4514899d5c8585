"""Start-up cost: the command line imports only what a command uses, and a cached --offline fetch starts no crane.

No timing is asserted (the machine may be busy): what is loaded and what is started is. `nox -s bench` measures
the seconds (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.commands import REPO_ROOT, run_cli
from support.models import push_model, write_model

from oci_crane_loader.registry.crane import find_crane

# Imported where they are used: tensors when vLLM loads, zstd when a layer is zstd, the rest not by a fast command.
HEAVY = ("pydantic", "safetensors", "zstandard", "rich", "httpx", "filelock")
# A cached fetch answers from the record its first fetch left (cached.py): no manifest parsing, no lock.
NOT_FOR_A_CACHED_FETCH = HEAVY


def _loaded_after(code: str, env: dict[str, str] | None = None) -> list[str]:
    """Which HEAVY modules a fresh interpreter has loaded after running ``code`` (its output discarded)."""
    script = (f"import contextlib, io, sys\nwith contextlib.redirect_stdout(io.StringIO()):\n"
              f"    try:\n        {code}\n    except SystemExit:\n        pass\n"
              f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, **(env or {})}, check=True, timeout=120)
    loaded: list[str] = json.loads(done.stdout.strip().replace("'", '"'))
    return loaded


@pytest.mark.parametrize("code", [
    "import oci_crane_loader.cli",
    "from oci_crane_loader.cli import main; main(['--help'])",
    "from oci_crane_loader.cli import main; main(['--version'])",
    "from oci_crane_loader.cli import main; main(['fetch', '--help'])",
])
def test_the_command_line_starts_without_heavy_imports(code):
    assert _loaded_after(code) == []


def test_the_fetch_command_still_loads_its_machinery(tmp_path):
    """The other side of the test above: the check sees imports (a fetch the cache cannot answer parses
    manifests with pydantic)."""
    loaded = _loaded_after("from oci_crane_loader.cli import main; main(['fetch', 'r.example/acme/model:v1', "
                           f"'--offline', '--cache-dir', {str(tmp_path / 'cache')!r}, '-q'])")
    assert "pydantic" in loaded


def _recording_crane(tmp_path: Path) -> tuple[Path, Path]:
    """A crane that appends its arguments to a log, then runs the real one: OCI_CRANE_BINARY is used as given,
    so neither the bundled crane nor PATH's is consulted while it is set."""
    log = tmp_path / "crane-calls.log"
    wrapper = tmp_path / "bin" / "crane"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexec "{find_crane()}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, log


@pytest.fixture
def cached_model(registry, tmp_path, cache_dir):
    """A model fetched once through a crane that records its calls: (reference, environment, the call log, the
    first fetch's output); the log is emptied after that fetch."""
    reference = f"{registry.host}/acme/tiny:v1"
    push_model(write_model(tmp_path / "src"), reference, tmp_path)
    wrapper, log = _recording_crane(tmp_path)
    env = {"OCI_CRANE_BINARY": str(wrapper), "PATH": f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}"}
    first = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "-q", env=env)
    assert first.returncode == 0, first.stderr
    assert "manifest" in log.read_text()  # the wrapper is the crane in use
    log.unlink()
    return reference, env, log, first.stdout


def test_a_cached_offline_fetch_starts_no_crane_and_loads_no_downloader(cached_model, cache_dir):
    reference, env, log, first_output = cached_model
    offline = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "-q", "--offline", env=env)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout == first_output
    assert not log.exists(), f"crane was started: {log.read_text()}"
    code = (f"from oci_crane_loader.cli import main; main(['fetch', {reference!r}, '--offline', "
            f"'--cache-dir', {str(cache_dir)!r}, '-q'])")
    assert [name for name in _loaded_after(code, env) if name in NOT_FOR_A_CACHED_FETCH] == []
    assert not log.exists()


def test_a_cached_fetch_asks_the_registry_for_the_tag_only(cached_model, cache_dir):
    """Online, a cached model costs one `crane manifest` (the tag may have moved) and no heavy import."""
    reference, env, log, _first_output = cached_model
    code = (f"from oci_crane_loader.cli import main; main(['fetch', {reference!r}, '--cache-dir', "
            f"{str(cache_dir)!r}, '-q'])")
    assert _loaded_after(code, env) == []
    calls = [line.split()[0] for line in log.read_text().splitlines()]
    assert sorted(set(calls)) == ["manifest", "version"] and calls.count("manifest") == 1, calls
