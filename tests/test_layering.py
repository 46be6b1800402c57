"""The layering of jobs/ and udfs/ (README "Layout"), checked on every import statement, including the ones
inside functions, which Python resolves late and a cycle would otherwise hide behind.

Layers, from the bottom:

* ``udfs``: the pure core. Never imports ``jobs`` or ``mlflow`` (the detector's MLflow wrapper is
  jobs/common/detector_model.py).
* ``jobs.common``: what steps share. Never imports a step or an entry point.
* ``jobs.<step>``: one module per step. Never imports another step or an entry point, except in its own
  ``main`` (what ``python -m jobs.<step>`` and ``spark-submit jobs/<step>.py`` run), which imports the
  registry to learn the pipeline's step order.
* Entry points, which may import anything: ``jobs.pipeline`` (the registry: the one list of steps, in
  order, and ``cleanwell run``), ``jobs.cli`` (the ``cleanwell`` command) and ``jobs.submit`` (the
  spark-submit launcher, which only runs the CLI) and ``jobs.collapse_lab`` (the collapse lab, whose spark
  engine runs the registry's steps).
"""
from __future__ import annotations

import ast
import graphlib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("jobs", "udfs")
ENTRY_POINTS = frozenset({"jobs.pipeline", "jobs.cli", "jobs.submit", "jobs.collapse_lab"})
STEP_ENTRY_FUNCTION = "main"
# Imports that break a rule until the modules the lead is editing switch over; each entry is
# (importer, imported, enclosing function). Remove an entry when its import is gone.
PENDING: frozenset = frozenset()  # (importer, imported, function) tolerated while a move is under way


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    function: str | None  # the innermost enclosing function, None at module level
    line: int

    def __str__(self) -> str:
        where = f" (in {self.function})" if self.function else ""
        return f"{self.importer}:{self.line}{where} imports {self.imported}"


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    return {module_name(root, path): path for package in packages for path in sorted((root / package).rglob("*.py"))}


class _Collector(ast.NodeVisitor):
    def __init__(self, importer: str, is_package: bool, known: set[str]) -> None:
        self.importer, self.is_package, self.known = importer, is_package, known
        self.functions: list[str] = []
        self.found: list[Import] = []

    def _add(self, imported: str, node: ast.AST) -> None:
        function = self.functions[-1] if self.functions else None
        self.found.append(Import(self.importer, imported, function, node.lineno))

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.functions.append(node.name)
        self.generic_visit(node)
        self.functions.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:  # relative: resolve against the importing module's package
            package = self.importer.split(".")
            if not self.is_package:
                package = package[:-1]
            package = package[:len(package) - (node.level - 1)]
            base = ".".join([*package, *([node.module] if node.module else [])])
        # `from jobs import detect` imports the module jobs.detect; `from jobs.common.x import f, g` imports x
        named = {f"{base}.{alias.name}" for alias in node.names}
        for imported in sorted({name if name in self.known else base for name in named}):
            self._add(imported, node)


def imports(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[Import]:
    """Every import statement in the packages under ``root``, with what it names resolved to a module."""
    found = modules(root, packages)
    known = set(found)
    result = []
    for name, path in found.items():
        collector = _Collector(name, path.name == "__init__.py", known)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        result.extend(collector.found)
    return result


def layer(module: str) -> str:
    root = module.split(".")[0]
    if root == "udfs":
        return "core"
    if root != "jobs":
        return "external"
    if module == "jobs":
        return "package"
    if module == "jobs.common" or module.startswith("jobs.common."):
        return "common"
    return "entry" if module in ENTRY_POINTS else "step"


def violation(imp: Import) -> str | None:
    """Why ``imp`` breaks the layering, or None."""
    source, target = layer(imp.importer), layer(imp.imported)
    if source == "core":
        if target in ("common", "step", "entry", "package"):
            return "udfs -> jobs: the pure core must not depend on the jobs"
        if imp.imported.split(".")[0] == "mlflow":
            return "udfs -> mlflow: the pure core has no MLflow in it"
    if source == "common" and target in ("step", "entry"):
        return "jobs.common -> a step or entry point: shared code must not depend on what uses it"
    if source == "step" and target == "step" and imp.imported != imp.importer:
        return "step -> another step: move what both need to jobs/common"
    if source == "step" and target == "entry" and imp.function != STEP_ENTRY_FUNCTION:
        return f"step -> entry point outside the step's {STEP_ENTRY_FUNCTION}(): an import cycle"
    return None


def violations(found: list[Import], pending: frozenset = PENDING) -> list[str]:
    return [f"{imp}: {reason}" for imp in found
            if (reason := violation(imp)) and (imp.importer, imp.imported, imp.function) not in pending]


@pytest.fixture(scope="module")
def repository_imports() -> list[Import]:
    return imports(REPO)


def test_no_import_breaks_the_layering(repository_imports: list[Import]) -> None:
    assert violations(repository_imports) == []


def test_every_pending_exception_is_still_needed(repository_imports: list[Import]) -> None:
    present = {(i.importer, i.imported, i.function) for i in repository_imports}
    assert PENDING <= present, f"remove from PENDING: {sorted(PENDING - present)}"


def import_graph(found: list[Import], pending: frozenset = PENDING) -> dict[str, set[str]]:
    """Who imports whom below the entry points: every import (in functions too) except those of entry
    points and of a step's main."""
    graph: dict[str, set[str]] = {}
    for imp in found:
        if layer(imp.importer) == "entry" or layer(imp.imported) in ("external", "package"):
            continue
        if layer(imp.importer) == "step" and imp.function == STEP_ENTRY_FUNCTION:
            continue
        if (imp.importer, imp.imported, imp.function) in pending or imp.importer == imp.imported:
            continue
        graph.setdefault(imp.importer, set()).add(imp.imported)
    return graph


def test_modules_below_the_entry_points_import_each_other_without_cycles(repository_imports: list[Import]) -> None:
    graphlib.TopologicalSorter(import_graph(repository_imports)).prepare()  # raises CycleError naming it


def test_the_walker_sees_imports_in_functions_and_relative_ones(repository_imports: list[Import]) -> None:
    found = {(i.importer, i.imported, i.function) for i in repository_imports}
    assert ("jobs.detect", "jobs.common.detector_model", "train_and_register") in found
    assert ("jobs.cli", "jobs.pipeline", None) in found
    assert ("jobs.pipeline", "jobs.token_counts", None) in found  # `from jobs import …, token_counts`


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_walker_reports_each_kind_of_bad_import(tmp_path: Path) -> None:
    _write(tmp_path, {
        "jobs/__init__.py": "",
        "jobs/common/__init__.py": "",
        "jobs/common/runner.py": "def upstream():\n    from jobs.pipeline import STEPS\n",
        "jobs/common/shared.py": "from .. import detect\n",
        "jobs/detect.py": "from jobs.common import shared\nfrom jobs.embed import fit\n\n\n"
                          "def main():\n    from jobs.pipeline import STEPS\n",
        "jobs/embed.py": "import jobs.cli\n\n\ndef fit():\n    pass\n",
        "jobs/pipeline.py": "from jobs import detect, embed\n",
        "jobs/cli.py": "from jobs import pipeline\n",
        "udfs/__init__.py": "",
        "udfs/core.py": "import numpy\nimport mlflow.pyfunc\n\n\ndef f():\n    from jobs.common.shared import x\n",
    })
    found = imports(tmp_path)
    assert sorted(violations(found, pending=frozenset())) == sorted([
        "jobs.common.runner:2 (in upstream) imports jobs.pipeline: jobs.common -> a step or entry point: "
        "shared code must not depend on what uses it",
        "jobs.common.shared:1 imports jobs.detect: jobs.common -> a step or entry point: shared code must not "
        "depend on what uses it",
        "jobs.detect:2 imports jobs.embed: step -> another step: move what both need to jobs/common",
        "jobs.embed:1 imports jobs.cli: step -> entry point outside the step's main(): an import cycle",
        "udfs.core:2 imports mlflow.pyfunc: udfs -> mlflow: the pure core has no MLflow in it",
        "udfs.core:6 (in f) imports jobs.common.shared: udfs -> jobs: the pure core must not depend on the jobs",
    ])
    assert len(violations(found, pending=frozenset({("jobs.common.runner", "jobs.pipeline", "upstream")}))) == 5
    with pytest.raises(graphlib.CycleError):  # jobs.common.shared -> jobs.detect -> jobs.common.shared
        graphlib.TopologicalSorter(import_graph(found, pending=frozenset())).prepare()
