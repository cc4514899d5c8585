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


def _troubleshooting_generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_troubleshooting", REPO_ROOT / "bin" / "gen_troubleshooting.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_troubleshooting_md_is_generated_from_the_code():
    """docs/troubleshooting.md is what bin/gen_troubleshooting.py writes today: `python bin/gen_troubleshooting.py`
    refreshes it after a change to errors.py or cli.py's exit codes."""
    committed = (REPO_ROOT / "docs" / "troubleshooting.md").read_text()
    assert committed == _troubleshooting_generator().render(), "run: python bin/gen_troubleshooting.py"


def test_troubleshooting_md_names_every_error_class_and_exit_code():
    from oci_crane_loader import cli, errors

    classes, pending = set(), [errors.OciCraneError]
    while pending:
        cls = pending.pop()
        if cls.__module__.startswith("oci_crane_loader"):  # not a subclass a test may define
            classes.add(cls)
            pending.extend(cls.__subclasses__())
    page = (REPO_ROOT / "docs" / "troubleshooting.md").read_text()
    headings = set(re.findall(r"^### (\w+)$", page, re.MULTILINE))
    assert {cls.__name__ for cls in classes} - headings == set()
    assert len(classes) > 20
    for cls in classes - {errors.OciCraneError}:  # each with its docstring and its fix, and an example line
        section = page.split(f"### {cls.__name__}\n", 1)[1].split("\n### ", 1)[0]
        assert " ".join(cls.__doc__.split()[:4]) in " ".join(section.split()), cls
        assert "\nerror: " in section and " -- fix: " in section, cls
    codes = {value for name, value in vars(cli).items() if name.startswith("EXIT_") and isinstance(value, int)}
    listed = {int(code) for code in re.findall(r"^\| (\d+) \|", page, re.MULTILINE)}
    assert codes | {0} == listed
