"""The package's shape: no import cycles, and the harness seams (executors, settings) are real.

Imports are read from the source: every ``import`` of a module, at its top, inside a function
or under ``if TYPE_CHECKING``. A cycle through a function-level import still couples two modules
both ways, even when Python happens to import them in a working order; one through a type-only
import couples them for whoever reads or type-checks them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lightlayers

PACKAGE = Path(lightlayers.__file__).parent


def _modules(root: Path) -> dict[str, Path]:
    mods = {}
    for f in root.rglob("*.py"):
        parts = list(f.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _imported(module: str, path: Path, node: ast.Import | ast.ImportFrom,
              mods: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = module.split(".")
        if path.name != "__init__.py":
            base = base[:-1]
        base = base[:len(base) - (node.level - 1)]
        name = ".".join(base + ([node.module] if node.module else []))
    else:
        name = node.module or ""
    # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
    return [f"{name}.{a.name}" if f"{name}.{a.name}" in mods else name for a in node.names]


def import_graph(root: Path) -> dict[str, set[str]]:
    mods = _modules(root)
    graph: dict[str, set[str]] = {}
    for module, path in mods.items():
        tree = ast.parse(path.read_text())
        deps = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            deps.update(d for d in _imported(module, path, node, mods)
                        if d in mods and d != module)
        graph[module] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert "lightlayers.study" in graph and "lightlayers.executors.ray" in graph
    found = cycles(graph)
    detail = [f"{c}: " + "; ".join(f"{v} -> {sorted(graph[v] & set(c))}" for v in c)
              for c in found]
    assert not found, "import cycles:\n" + "\n".join(detail)


def test_the_cycle_check_finds_a_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n")  # lazy, still a cycle
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from pkg import d\n")  # type-only, still a cycle
    (pkg / "d.py").write_text("import pkg.c\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"}
    assert graph["pkg.c"] == {"pkg.d"} and graph["pkg.d"] == {"pkg.c"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"], ["pkg.c", "pkg.d"]]


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for dep in graph.get(todo.pop(), set()) - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def _within(module: str, names: tuple[str, ...]) -> bool:
    return any(module == n or module.startswith(f"{n}.") for n in names)


def forbidden_imports(graph: dict[str, set[str]], package: str, direct: tuple[str, ...],
                      through: tuple[str, ...]) -> dict[str, list[str]]:
    """Per module of ``package`` (it and its submodules): the modules of ``direct`` (or their
    submodules) it imports itself, and those of ``through`` it imports directly or through
    other modules."""
    found = {}
    for m in sorted(graph):
        if not _within(m, (package,)):
            continue
        bad = {d for d in graph[m] if _within(d, direct)}
        bad |= {d for d in reachable(graph, m) if _within(d, through)}
        if bad:
            found[m] = sorted(bad)
    return found


def test_the_report_never_imports_the_runner():
    """The report reads a run folder's files: no report module imports the study runner or
    the executors, not even from inside a function, and none reaches the runner or an
    executor that runs trials through other modules. (The executors' registry itself is
    reached through lightlayers.config, whose settings name the executors.)"""
    graph = import_graph(PACKAGE)
    assert "lightlayers.report.write" in graph and "lightlayers.report.pool" in graph
    found = forbidden_imports(
        graph, "lightlayers.report", direct=("lightlayers.study", "lightlayers.executors"),
        through=("lightlayers.study", "lightlayers.executors.local", "lightlayers.executors.ray"))
    assert not found, "the report imports the runner:\n" + "\n".join(
        f"{m} -> {deps}" for m, deps in found.items())


# Who writes or reads a run folder: the runner, the report, export and prediction, distillation.
_USERS = ("lightlayers.study", "lightlayers.trial", "lightlayers.tune", "lightlayers.executors",
          "lightlayers.report", "lightlayers.deploy", "lightlayers.teacher", "lightlayers.commands",
          "lightlayers.cli", "lightlayers.api")


def test_the_run_folder_package_imports_none_of_its_users():
    """lightlayers.runfolder owns the run folder and sits below everything that uses it: none of
    its modules imports a user, and, apart from the settings check (which reads the settings
    module, and through it whatever settings name), none reaches one through other modules."""
    graph = import_graph(PACKAGE)
    modules = [m for m in graph if _within(m, ("lightlayers.runfolder",))]
    assert {"lightlayers.runfolder.store", "lightlayers.runfolder.trials",
            "lightlayers.runfolder.layout", "lightlayers.runfolder.checkpoint"} <= set(modules)
    found = forbidden_imports(graph, "lightlayers.runfolder", direct=_USERS, through=())
    for m in modules:
        if m not in ("lightlayers.runfolder", "lightlayers.runfolder.settings"):
            bad = sorted(d for d in reachable(graph, m) if _within(d, _USERS))
            if bad:
                found[m] = bad
    assert not found, "the run folder package imports its users:\n" + "\n".join(
        f"{m} -> {deps}" for m, deps in found.items())


def test_readers_of_finished_trials_go_through_the_run_folder_package():
    """Distillation reads its teacher's trials through lightlayers.runfolder, not through the
    deploy package; deploy reaches neither the runner nor distillation."""
    graph = import_graph(PACKAGE)
    assert "lightlayers.runfolder.trials" in graph["lightlayers.teacher"]
    found = forbidden_imports(
        graph, "lightlayers.teacher", direct=("lightlayers.deploy", "lightlayers.study"),
        through=("lightlayers.deploy", "lightlayers.study", "lightlayers.report"))
    found |= forbidden_imports(
        graph, "lightlayers.deploy", direct=("lightlayers.study", "lightlayers.teacher"),
        through=("lightlayers.study", "lightlayers.teacher", "lightlayers.executors.local",
                 "lightlayers.executors.ray"))
    assert not found, "\n".join(f"{m} -> {deps}" for m, deps in found.items())


def test_the_runner_check_finds_function_level_and_indirect_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "report").mkdir(parents=True)
    (pkg / "executors").mkdir()
    for d in (pkg, pkg / "report", pkg / "executors"):
        (d / "__init__.py").write_text("")
    (pkg / "executors" / "local.py").write_text("")
    (pkg / "study.py").write_text("from pkg.executors import local\n")
    (pkg / "config.py").write_text("import pkg.executors\n")
    (pkg / "csvfile.py").write_text("def f():\n    from pkg import study\n")
    (pkg / "report" / "write.py").write_text("def g():\n    from pkg import csvfile\n")
    (pkg / "report" / "pool.py").write_text("def h():\n    from pkg.executors import local\n")
    (pkg / "report" / "load.py").write_text("import json\nfrom pkg import config\n")
    graph = import_graph(pkg)
    found = forbidden_imports(graph, "pkg.report", direct=("pkg.study", "pkg.executors"),
                              through=("pkg.study", "pkg.executors.local"))
    assert found == {"pkg.report.write": ["pkg.executors.local", "pkg.study"],
                     "pkg.report.pool": ["pkg.executors.local"]}

def test_run_trial_returns_a_trial_result():
    import typing

    from lightlayers.trial import run_trial
    from lightlayers.trial_result import TrialResult

    assert typing.get_type_hints(run_trial)["return"] is TrialResult
