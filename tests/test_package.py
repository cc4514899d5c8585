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


# docs/development.md's drawing, top to bottom: a module imports only modules of its own layer or of lower ones.
# A name ending in ".*" stands for every module of that package, the package itself included.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("doors", frozenset({"__init__", "__main__", "cli", "cli_format", "auth", "doctor", "serve", "kserve", "demo",
                         "vllm_plugin", "loader", "vllm_api", "vllm_lora"})),
    ("one fetch", frozenset({"fetching"})),
    ("the work", frozenset({"pull", "push", "adapters", "local_dir", "materialize", "layout", "packing", "formats.*",
                            "safetensors_check", "progress", "cache.listing", "cache.verify", "cache.prune",
                            "signatures.sign"})),
    ("a fetch's terms", frozenset({"options", "cached", "sourcing", "signatures", "signatures.policy",
                                   "signatures.cosign", "signatures.keys", "signatures.bundles",
                                   "signatures.openssf"})),
    ("registry", frozenset({"registry.*"})),
    ("cache", frozenset({"cache", "cache.store", "cache.partial", "cache.durability", "cache.usage",
                         "cache.reachability", "cache.contents"})),
    ("leaves", frozenset({"errors", "digests", "oci", "reference", "paths", "files", "settings", "platforms"})),
)


def _package_imports(root: Path = REPO_ROOT / "oci_crane_loader") -> dict[str, set[str]]:
    """Module -> the package's modules it imports: relative imports, ``from oci_crane_loader.x import y`` and
    ``import oci_crane_loader.x``, wherever they are written (in a function, under TYPE_CHECKING)."""
    import ast

    modules = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__") or "__init__": p
               for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}

    def add(name: str, base: list[str], names: list[str]) -> None:
        for imported in names:  # `from base import imported`: a module of base, else a name in base itself
            for candidate in (".".join([*base, imported]), ".".join(base) or "__init__"):
                if candidate in modules and candidate != name:
                    graph[name].add(candidate)
                    break

    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                parts = [p for p in package.split(".") if p and p != "__init__"]
                add(name, parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []),
                    [alias.name for alias in node.names])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "oci_crane_loader":
                add(name, (node.module or "").split(".")[1:], [alias.name for alias in node.names])
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == "oci_crane_loader":
                        add(name, parts[1:-1], parts[-1:] if len(parts) > 1 else [])
    return graph


def _layer_of(module: str, layers: tuple[tuple[str, frozenset[str]], ...]) -> int | None:
    for rank, (_name, members) in enumerate(layers):
        if module in members or any(m.endswith(".*") and (module == m[:-2] or module.startswith(m[:-1]))
                                    for m in members):
            return rank
    return None


def layering_faults(graph: dict[str, set[str]], layers: tuple[tuple[str, frozenset[str]], ...]) -> list[str]:
    """Every module without a layer, every import of a higher layer, every import cycle; [] when the graph holds
    the layering."""
    faults = [f"{module} is in no layer (add it to LAYERS and to docs/development.md's drawing)"
              for module in sorted(graph) if _layer_of(module, layers) is None]
    for module in sorted(graph):
        for imported in sorted(graph[module]):
            mine, theirs = _layer_of(module, layers), _layer_of(imported, layers)
            if mine is not None and theirs is not None and theirs < mine:
                faults.append(f"{module} ({layers[mine][0]}) imports {imported}, a higher layer ({layers[theirs][0]})")
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            faults.append(f"import cycle: {' -> '.join((*path[path.index(name):], name))}")
            return
        if name in done:
            return
        for dependency in sorted(graph.get(name, ())):
            visit(dependency, (*path, name))
        done.add(name)

    for module in sorted(graph):
        visit(module, ())
    return faults


def test_imports_flow_one_way():
    """docs/development.md draws the modules as layers: each module is in one, imports only its own layer or lower
    ones, and no imports form a cycle."""
    graph = _package_imports()
    assert "pull" in graph["cli"] and "errors" in graph["oci"]  # the graph was really read
    assert layering_faults(graph, LAYERS) == []


def test_the_layering_check_can_fail():
    layers = (("top", frozenset({"door", "door2"})), ("middle", frozenset({"work", "formats.*"})),
              ("bottom", frozenset({"leaf", "leaf2"})))
    sound = {"door": {"work", "leaf"}, "door2": set(), "work": {"formats.image", "leaf"}, "formats": {"leaf"},
             "formats.image": {"formats", "leaf"}, "leaf": set(), "leaf2": {"leaf"}}
    assert layering_faults(sound, layers) == []
    assert layering_faults({**sound, "leaf2": {"work"}}, layers) == [
        "leaf2 (bottom) imports work, a higher layer (middle)"]
    assert layering_faults({**sound, "formats.image": {"door2"}}, layers) == [
        "formats.image (middle) imports door2, a higher layer (top)"]
    assert layering_faults({**sound, "stray": set()}, layers) == [
        "stray is in no layer (add it to LAYERS and to docs/development.md's drawing)"]
    assert layering_faults({**sound, "formats": {"work"}}, layers) == [
        "import cycle: work -> formats.image -> formats -> work"]


def test_the_graph_reader_sees_every_import_form(tmp_path):
    package = tmp_path / "oci_crane_loader"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from .a import run\n")
    (package / "a.py").write_text("import oci_crane_loader.b\nfrom oci_crane_loader.sub import c\n")
    (package / "b.py").write_text("def f():\n    from oci_crane_loader import d\n")
    (package / "d.py").write_text("import json\nimport oci_crane_loader\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "c.py").write_text("from .. import a\nfrom ..b import f\nfrom . import e\n")
    (package / "sub" / "e.py").write_text("from oci_crane_loader.sub.c import x\n")
    assert _package_imports(package) == {
        "__init__": {"a"}, "a": {"b", "sub.c"}, "b": {"d"}, "d": set(), "sub": set(),
        "sub.c": {"a", "b", "sub.e"}, "sub.e": {"sub.c"}}
