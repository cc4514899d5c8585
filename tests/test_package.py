"""The package without vLLM: importing it (and the plugin module) never imports vLLM or torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support.commands import REPO_ROOT


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


def _package_imports() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (relative imports, as the package writes them all)."""
    import ast

    root = Path(__file__).resolve().parent.parent / "oci_crane_loader"
    modules = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__") or "__init__": p
               for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                parts = [p for p in package.split(".") if p and p != "__init__"]
                base = parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else [])
                for alias in node.names:
                    for candidate in (".".join([*base, alias.name]), ".".join(base) or "__init__"):
                        if candidate in modules and candidate != name:
                            graph[name].add(candidate)
                            break
    return graph


def test_imports_flow_one_way():
    """docs/development.md draws the modules as layers: no import cycle, and the leaves import only leaves."""
    graph = _package_imports()
    assert "pull" in graph["cli"] and "errors" in graph["oci"]  # the graph was really read
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join((*path, name))}"
        if name in done:
            return
        for dependency in graph[name]:
            visit(dependency, (*path, name))
        done.add(name)

    for module in graph:
        visit(module, ())
    leaves = {"errors", "digests", "oci", "reference", "paths", "files", "settings"}
    upward = {leaf: graph[leaf] - leaves for leaf in leaves if graph[leaf] - leaves}
    assert upward == {}
