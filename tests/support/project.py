"""pyproject.toml as the tests read it (tomllib, or tomli on Python 3.10 where the standard library has none)."""

from __future__ import annotations

import sys
from typing import Any

from support.commands import REPO_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # the test extra installs tomli there
    import tomli as tomllib


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def optional_dependencies(extra: str) -> list[str]:
    return list(pyproject()["project"]["optional-dependencies"][extra])
