"""The layout keeps its promises (ARCHITECTURE.md): read from the source with `ast`, no imports.

- `mrcnn` never imports `pipeline` (nor Ray, MLflow or DVC);
- a stage (`pipeline/stages/*.py`) never imports another stage;
- no import cycle between the project's modules;
- no `pipeline/` module passes 400 lines;
- dvc.yaml's path variables are `pipeline.layout`'s.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from pipeline import layout
from tests import REPO_ROOT

PACKAGES = ("mrcnn", "pipeline")
MAX_PIPELINE_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for package in PACKAGES
        for p in sorted((REPO_ROOT / package).rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports, at any depth (inside functions too), except those
    under `if TYPE_CHECKING:`, which never run."""
    tree = ast.parse(path.read_text(), filename=str(path))
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` imports the submodule; `from pkg import name`, the package
            subs = [f"{base}.{a.name}" for a in node.names]
            names = [n for n in subs if n in known] or [base]
        else:
            names = []
        for name in names:
            # the longest project module the name starts with
            while name and name not in known:
                name = name.rpartition(".")[0]
            # a package's own __init__ always runs before its modules: not an edge
            if name and name != this and not this.startswith(name + "."):
                found.add(name)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: imports_of(path, known) for name, path in modules.items()}


def test_the_graph_sees_the_imports_it_must(graph):
    """The parser itself: known edges are found (a parser that finds nothing passes the rest)."""
    assert "pipeline.training.driver" in graph["pipeline.stages.train"]
    assert "mrcnn.modeling.model" in graph["pipeline.training.loop"]
    assert "pipeline.search_space" in graph["pipeline.sweep.config"]
    assert "mrcnn.structures" in graph["mrcnn.modeling.model"]


def closure(graph: dict[str, set[str]], start: str) -> set[str]:
    """`start` and every project module it imports, transitively."""
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_running_a_model_needs_no_training_package(graph):
    """Evaluate, export, predict and the server run a saved model: the training package (Ray
    Train, the loop) is not among their imports (the device they run on: `pipeline.device`)."""
    for user in ("pipeline.stages.evaluate", "pipeline.stages.export", "pipeline.predict"):
        training = sorted(m for m in closure(graph, user) if m.startswith("pipeline.training"))
        assert not training, f"{user} imports {training}"


def test_mrcnn_imports_no_pipeline_and_no_orchestration():
    for name, path in project_modules().items():
        if not name.startswith("mrcnn"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            bad = roots & {"pipeline", "ray", "mlflow", "dvc"}
            assert not bad, f"{name} imports {sorted(bad)}: mrcnn is pure PyTorch + torchvision"


def imported_roots(path: Path) -> set[str]:
    """The top-level names a module imports (`import mlflow.pyfunc` -> mlflow), at any depth."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add((node.module or "").split(".")[0])
    return roots


def test_mlflow_is_imported_in_pipeline_tracking_only():
    """`pipeline/tracking/` owns every MLflow call: stages, training, sweeps and predict call
    its helpers."""
    users = {name for name, path in project_modules().items() if "mlflow" in imported_roots(path)}
    assert "pipeline.tracking.store" in users  # the check sees imports inside functions
    outside = sorted(m for m in users if not m.startswith("pipeline.tracking."))
    assert not outside, f"these import mlflow outside pipeline/tracking/: {outside}"


def test_no_stage_imports_another_stage(graph):
    stages = {m for m in graph if m.startswith("pipeline.stages.")}
    assert {"pipeline.stages.train", "pipeline.stages.evaluate"} <= stages
    for stage in stages:
        others = graph[stage] & (stages - {stage})
        assert not others, f"{stage} imports the stage(s) {sorted(others)}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of `graph` (depth-first search for a back edge), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def unit_of(module: str, packages: set[str]) -> str:
    """The part of the layout a module belongs to: its first-level sub-package
    (`mrcnn.modeling.roi_heads.box_head` -> `mrcnn.modeling`), or the module itself when it sits
    directly in `mrcnn/` or `pipeline/` (`pipeline.params`)."""
    first_level = ".".join(module.split(".")[:2])
    return first_level if first_level in packages else module


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph collapsed to `unit_of`: an edge A -> B when a module of A imports one
    of B."""
    packages = {
        module_name(p.parent)
        for package in PACKAGES
        for p in (REPO_ROOT / package).glob("*/__init__.py")
    }
    out: dict[str, set[str]] = {}
    for module, imported in graph.items():
        a = unit_of(module, packages)
        out.setdefault(a, set()).update(
            b for b in (unit_of(m, packages) for m in imported) if b != a
        )
    return out


def test_no_import_cycle_between_sub_packages(graph):
    """Sub-packages (and the modules beside them) depend on each other one way only: e.g.
    `pipeline.params` sits below `pipeline.sweep`, which reads it, and must not import it."""
    units = package_graph(graph)
    assert {"mrcnn.modeling", "pipeline.sweep", "pipeline.params"} <= set(units)
    assert "pipeline.training" in units["pipeline.stages"]
    cycle = find_cycle(units)
    assert cycle is None, "sub-package import cycle: " + " -> ".join(cycle or [])


def test_a_cycle_is_found_when_there_is_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_pipeline_modules_stay_small():
    lines = {name: len(p.read_text().splitlines()) for name, p in project_modules().items()}
    long = {m: n for m, n in lines.items() if m.startswith("pipeline") and n > MAX_PIPELINE_LINES}
    assert not long, f"split these modules (over {MAX_PIPELINE_LINES} lines): {long}"


def test_dvc_yaml_paths_are_the_layout():
    doc = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    paths = doc["vars"][0]["paths"]
    assert {k: Path(v) for k, v in paths.items()} == layout.DVC_VARS
    # and no stage spells one of them out instead of using the variable
    text = (REPO_ROOT / "dvc.yaml").read_text().split("stages:", 1)[1]
    for value in paths.values():
        assert f" {value}" not in text and f"- {value}" not in text, value


def test_every_stage_runs_as_python_m_pipeline_stage():
    doc = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    for name, stage in doc["stages"].items():
        assert stage["cmd"].startswith(f"python -m pipeline.{name}"), name
        assert (REPO_ROOT / "pipeline" / f"{name}.py").is_file()
        assert (REPO_ROOT / "pipeline" / "stages" / f"{name}.py").is_file()


def string_literals(path: Path) -> list[ast.Constant]:
    """The string constants of a module, f-string pieces included, docstrings excluded."""
    tree = ast.parse(path.read_text())
    scopes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, scopes)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_the_coco_layout_and_manifest_are_named_once():
    """`instances_<split>.json`, `manifest.json` and the split names are spelled in
    `mrcnn.data.layout` only; everything else asks it."""
    home = "mrcnn.data.layout"
    spelled = re.compile(r"instances_(\w+\.json|$)|manifest\.json")
    found = []
    for name, path in project_modules().items():
        if name == home:
            continue
        found += [
            f"{name}:{node.lineno} {node.value!r}"
            for node in string_literals(path)
            if spelled.search(node.value)
        ]
        found += [
            f"{name}:{node.lineno} ('train', 'val')"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Tuple)
            and [getattr(e, "value", None) for e in node.elts] == ["train", "val"]
        ]
    assert not found, f"use {home} instead of spelling these: {found}"


def test_the_model_backends_are_listed_once():
    """The backends a saved model runs on are `mrcnn.export.MODEL_BACKENDS`; a tuple or list
    naming them both anywhere else is a second copy that will drift."""
    home = "mrcnn.export"
    copies = [
        f"{name}:{node.lineno}"
        for name, path in project_modules().items()
        if name != home
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.Tuple, ast.List, ast.Set))
        and {"torch", "onnxruntime"} <= {getattr(e, "value", None) for e in node.elts}
    ]
    assert not copies, f"use {home}.MODEL_BACKENDS instead of these lists: {copies}"
