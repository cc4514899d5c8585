"""The docs name real things: every test that docs/security.md cites exists, so the table cannot drift."""

from __future__ import annotations

import ast
import re

from support.commands import REPO_ROOT


def _test_names(path: str) -> set[str]:
    tree = ast.parse((REPO_ROOT / path).read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_test_cited_by_security_md_exists():
    cited: list[tuple[str, str | None]] = []
    for line in (REPO_ROOT / "docs" / "security.md").read_text().splitlines():
        if not line.startswith("| ") or line.startswith("| ---") or line.startswith("| case"):
            continue
        current = None
        for token in re.findall(r"(tests/[\w/]+\.py)?(::\w+)?", line.rsplit("|", 2)[-2]):
            path, name = token
            if path:
                current = path
            if path or name:
                cited.append((current or "", name[2:] if name else None))
    assert len(cited) > 40  # the table is there and was read
    missing = [f"{path}::{name}" for path, name in cited
               if not path or not (REPO_ROOT / path).is_file() or (name and name not in _test_names(path))]
    assert missing == []
