"""The package without vLLM: importing it (and the plugin module) never imports vLLM or torch."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO_ROOT


def test_import_does_not_import_vllm_or_torch():
    code = ("import sys, oci_crane_loader, oci_crane_loader.cli, oci_crane_loader.pull, oci_crane_loader.vllm_plugin;"
            "print(sorted(m for m in ('vllm', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert done.stdout.strip() == "[]"


def test_entry_points_are_declared():
    from importlib.metadata import entry_points

    plugins = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert plugins.get("oci_crane") == "oci_crane_loader.vllm_plugin:register"
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("oci-crane") == "oci_crane_loader.cli:main"
