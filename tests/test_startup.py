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

from oci_crane_loader.crane import find_crane

# Imported where they are used: tensors when vLLM loads, zstd when a layer is zstd, the rest not by a fast command.
HEAVY = ("pydantic", "safetensors", "zstandard", "rich", "httpx", "filelock")
NOT_FOR_A_CACHED_FETCH = ("safetensors", "zstandard", "rich", "httpx")


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


def test_the_fetch_command_still_loads_its_machinery():
    """The other side of the test above: the check sees imports (a fetch does need pydantic for manifests)."""
    loaded = _loaded_after("from oci_crane_loader.cli import main; main(['fetch', 'r.example/a:b', '--offline', "
                           "'--cache-dir', '/nonexistent-oci-crane-cache', '-q'])")
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


def test_a_cached_offline_fetch_starts_no_crane_and_loads_no_downloader(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src")
    reference = f"{registry.host}/acme/tiny:v1"
    push_model(source, reference, tmp_path)
    wrapper, log = _recording_crane(tmp_path)
    env = {"OCI_CRANE_BINARY": str(wrapper), "PATH": f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}"}
    online = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "-q", env=env)
    assert online.returncode == 0, online.stderr
    assert "manifest" in log.read_text()  # the wrapper is the crane in use
    log.unlink()

    offline = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "-q", "--offline", env=env)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout == online.stdout
    assert not log.exists(), f"crane was started: {log.read_text()}"
    code = (f"from oci_crane_loader.cli import main; main(['fetch', {reference!r}, '--offline', "
            f"'--cache-dir', {str(cache_dir)!r}, '-q'])")
    assert [name for name in _loaded_after(code, env) if name in NOT_FOR_A_CACHED_FETCH] == []
    assert not log.exists()
