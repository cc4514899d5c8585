"""The names in oci_crane_loader.vllm_api.VLLM_NAMES, found with `ast` in a vLLM wheel's sources, without importing
vLLM (its GPU build needs CUDA to import). Also runnable: python tests/support/vllm_sources.py WHEEL..."""

from __future__ import annotations

import ast
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from oci_crane_loader.vllm_api import VLLM_NAMES, VllmName

Sources = Callable[[str], "str | None"]  # module name -> its source text, None when absent


def wheel_sources(wheel: Path) -> Sources:
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())

    def read(module: str) -> str | None:
        base = module.replace(".", "/")
        for candidate in (f"{base}.py", f"{base}/__init__.py"):
            if candidate in names:
                return archive.read(candidate).decode()
        return None

    return read


def problems(sources: Sources, names: tuple[VllmName, ...] = VLLM_NAMES) -> list[str]:
    """One line per name that is missing or differs (optional names included, marked so)."""
    found = []
    for name in names:
        problem = _problem(sources, name)
        if problem is not None:
            found.append(f"{name}: {problem}{' (optional)' if name.optional else ''}")
    return found


def _problem(sources: Sources, name: VllmName) -> str | None:
    text = sources(name.module)
    if text is None:
        return "no such module"
    scope: list[ast.stmt] = ast.parse(text).body
    node: ast.stmt | None = None
    for part in name.qualname.split("."):
        node = _definition(scope, part)
        if isinstance(node, ast.ImportFrom) and node.module:  # `from m import part`: defined in m
            return _problem(sources, VllmName(node.module, name.qualname, name.parameters, name.abstract,
                                              name.optional))
        if node is None:
            return f"{part} is not defined"
        scope = node.body if isinstance(node, ast.ClassDef) else []
    if name.abstract is not None and isinstance(node, ast.ClassDef):
        extra = sorted(_abstract_methods(node) - set(name.abstract))
        if extra:
            return f"abstract methods {extra} beyond {list(name.abstract)}"
    if name.parameters is not None:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return "not a function"
        arguments = node.args
        parameters = tuple(a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs])
        if parameters[:len(name.parameters)] != name.parameters:
            return f"parameters {parameters}, expected to start with {name.parameters}"
    return None


def _definition(body: list[ast.stmt], name: str) -> ast.stmt | None:
    """The last statement of ``body`` that defines ``name``."""
    found = None
    for statement in body:
        if _defines(statement, name):
            found = statement
    return found


def _defines(statement: ast.stmt, name: str) -> bool:
    """A def, a class, an assignment, an annotated (dataclass) field, or `from module import name` (absolute,
    not renamed: followed into that module)."""
    if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return statement.name == name
    if isinstance(statement, ast.AnnAssign):
        return isinstance(statement.target, ast.Name) and statement.target.id == name
    if isinstance(statement, ast.Assign):
        return any(isinstance(target, ast.Name) and target.id == name for target in statement.targets)
    if isinstance(statement, ast.ImportFrom):
        return statement.level == 0 and any(alias.name == name and alias.asname in (None, name)
                                            for alias in statement.names)
    return False


def _abstract_methods(node: ast.ClassDef) -> set[str]:
    return {statement.name for statement in node.body
            if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef)
            and any((isinstance(d, ast.Name) and d.id == "abstractmethod")
                    or (isinstance(d, ast.Attribute) and d.attr == "abstractmethod") for d in statement.decorator_list)}


if __name__ == "__main__":
    for path in sys.argv[1:]:
        found = problems(wheel_sources(Path(path)))
        print(Path(path).name, "OK" if not found else "", *found, sep="\n  " if found else " ")
