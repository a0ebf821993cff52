"""Every third-party module that ``src/`` or ``tests/`` imports is declared.

The README's test command installs ``.[test]`` plus the packages it names after
``pip install --no-deps``; a module that only a developer's machine happens to have would pass
locally and fail on a fresh one. So: an unguarded import in ``src/`` must come from a core
dependency (or a ``--no-deps`` package of the README), one in ``tests/`` from a core or ``test``
dependency. Optional modules are allowed only behind a guard: inside ``try: ... except
ImportError`` or through ``pytest.importorskip``.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import pathlib
import re
import sys

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(req: str) -> str:
    return _norm(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req).group(1))


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_req_name(r) for r in project["dependencies"]}
    test = {_req_name(r) for r in project.get("optional-dependencies", {}).get("test", [])}
    readme = (ROOT / "README.md").read_text()
    no_deps = {_norm(m) for m in re.findall(r"pip install --no-deps ([A-Za-z0-9._-]+)", readme)}
    return core | no_deps, core | no_deps | test


def _guarded_lines(tree: ast.AST) -> set[int]:
    """Line numbers of imports inside ``try`` blocks that catch ImportError."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        names = set()
        for h in node.handlers:
            t = h.type
            for e in (t.elts if isinstance(t, ast.Tuple) else [t]):
                if isinstance(e, ast.Name):
                    names.add(e.id)
        if names & {"ImportError", "ModuleNotFoundError", "Exception"}:
            for stmt in node.body:
                for sub in ast.walk(stmt):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)):
                        lines.add(sub.lineno)
    return lines


def _imports(path: pathlib.Path):
    """(top-level module, line) of every unguarded absolute import in a file."""
    tree = ast.parse(path.read_text(), str(path))
    guarded = _guarded_lines(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods = [node.module]
        else:
            continue
        if node.lineno in guarded:
            continue
        for m in mods:
            yield m.split(".")[0], node.lineno


def _local_modules() -> set[str]:
    names = {"rlhfkit", "conftest", "tests"}
    for p in (ROOT / "tests").rglob("*.py"):
        names.add(p.stem)
    return names


def _distributions(module: str) -> set[str]:
    dists = md.packages_distributions().get(module)
    return {_norm(d) for d in dists} if dists else {_norm(module)}


def _undeclared(folder: str, allowed: set[str]) -> list[str]:
    local = _local_modules()
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for mod, line in _imports(path):
            if mod in sys.stdlib_module_names or mod in local or mod == "__future__":
                continue
            if not (_distributions(mod) & allowed):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports '{mod}' "
                           f"(distribution {sorted(_distributions(mod))}), which no dependency list declares")
    return bad


def test_src_imports_are_core_dependencies():
    core, _ = _declared()
    assert _undeclared("src", core) == []


def test_test_imports_are_declared_for_the_test_command():
    _, with_test = _declared()
    assert _undeclared("tests", with_test) == []


def test_checker_flags_an_undeclared_import(tmp_path, monkeypatch):
    # The checker itself: a module outside every dependency list is reported, a guarded one is not.
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("import numpy\nimport not_a_declared_pkg\n"
                              "try:\n    import another_optional_pkg\nexcept ImportError:\n    pass\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    bad = _undeclared("src", {"numpy"})
    assert len(bad) == 1 and "not_a_declared_pkg" in bad[0]
