"""The command line as a user runs it, and the system tools some tests need."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real command line, as a user runs it (``input``: what is piped to its standard input)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "oci_crane_loader", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO_ROOT, check=False, input=input)


def fetch(reference: str, cache_dir: Path, *extra: str) -> dict[str, object]:
    """`fetch --json` that must succeed; its result object."""
    done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--json", *extra)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def fetch_fails(reference: str, cache_dir: Path, *extra: str) -> str:
    """The single error line of a fetch that must fail (--quiet: no progress lines), nothing on stdout."""
    done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--quiet", *extra)
    assert done.returncode == 1, done.stdout
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and " -- fix: " in lines[0], lines[0]
    return lines[0]


def tool(name: str) -> str | None:
    """An independent client (oras from bin/install-oras, skopeo from bin/install-test-deps), or None."""
    local = REPO_ROOT / ".tools" / "bin" / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    import shutil

    return shutil.which(name)


def unshare_mount() -> list[str]:
    """argv prefix for a private mount namespace (as root, or as a user where user namespaces are allowed), in
    which a test may mount a small or read-only file system; skips where there is none."""
    import shutil

    found = shutil.which("unshare")
    if found is None or not sys.platform.startswith("linux"):
        pytest.skip("needs Linux unshare to mount a file system")
    argv = [found, "--mount"] if os.geteuid() == 0 else [found, "--mount", "--map-root-user"]
    if subprocess.run([*argv, "mount", "-t", "tmpfs", "tmpfs", "/mnt"], capture_output=True, check=False).returncode:
        pytest.skip("mount namespaces are not allowed here")
    return argv
