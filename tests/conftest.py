"""Shared fixtures: a real crane, a real registry on 127.0.0.1, and models packed and pushed with crane."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from oci_crane_loader import errors
from oci_crane_loader.crane import Crane, find_crane
from oci_crane_loader.formats.dmr_pack import pack_dmr
from oci_crane_loader.local_registry import LocalRegistry, serve_registry

REPO_ROOT = Path(__file__).resolve().parent.parent


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


def write_model(directory: Path, shards: int = 2, seed: int = 0) -> Path:
    """A small model with real safetensors shards (several dtypes), an index, config and tokenizer files."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for number in range(1, shards + 1):
        name = f"model-{number:05d}-of-{shards:05d}.safetensors" if shards > 1 else "model.safetensors"
        tensors = {
            f"layers.{number}.weight": rng.standard_normal((16, 8)).astype(np.float16),
            f"layers.{number}.bias": rng.standard_normal(8).astype(np.float32),
            f"layers.{number}.ids": np.arange(5, dtype=np.int64),
        }
        save_file(tensors, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    if shards > 1:
        (directory / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}, indent=2))
    (directory / "config.json").write_text(json.dumps({"architectures": ["TestModel"], "hidden_size": 8}))
    (directory / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128}))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return directory


def push_layout(layout: Path, reference: str) -> str:
    return Crane().push(layout, reference)


def push_model(model: Path, reference: str, tmp_path: Path, *, version: str = "v0.2",
               annotate_shards: bool = True) -> str:
    layout = tmp_path / f"layout-{abs(hash((reference, version)))}"
    pack_dmr(model, layout, version=version, annotate_shards=annotate_shards)
    return push_layout(layout, reference)


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


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


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
