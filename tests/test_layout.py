"""The layout keeps its promises (ARCHITECTURE.md): read from the source with `ast`, no imports.

- `mrcnn` never imports `pipeline` (nor Ray, MLflow or DVC); MLflow only in `pipeline/tracking/`;
- a stage (`pipeline/stages/*.py`) never imports another stage, runs as `run(params, paths)`
  with a short `main`, and dvc.yaml's `deps` cover every module it imports;
- no import cycle between the project's modules, nor between its sub-packages;
- no module passes 400 lines; `mrcnn/` keeps at most 15 modules beside its sub-packages;
- a fact is spelled once: the COCO layout and manifest names, the model backends;
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
MAX_MODULE_LINES = 400
MAX_TOP_LEVEL_MODULES = 15  # directly in mrcnn/, __init__.py included
STAGES = ("download", "shards", "inspect", "train", "evaluate", "export")
MAX_STAGE_FUNCTION_LINES = 60  # a longer stage function is split into named helpers
MAX_MAIN_LINES = 6  # argparse, load params, call run


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


def test_modules_stay_small():
    """No module of `mrcnn/` or `pipeline/` passes 400 lines (split it first)."""
    lines = {name: len(p.read_text().splitlines()) for name, p in project_modules().items()}
    assert {"mrcnn.modeling.model", "pipeline.params"} <= set(lines)
    long = {m: n for m, n in lines.items() if n > MAX_MODULE_LINES}
    assert not long, f"split these modules (over {MAX_MODULE_LINES} lines): {long}"


def test_the_model_package_keeps_few_top_level_modules():
    """`mrcnn/` holds a handful of modules beside its sub-packages (ARCHITECTURE.md: split a
    folder before it holds ~15 modules)."""
    top = sorted(p.name for p in (REPO_ROOT / "mrcnn").glob("*.py"))
    assert "config.py" in top
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"mrcnn/ holds {len(top)} modules: {top}"


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


def test_every_stage_runs_as_run_params_paths_with_a_short_main():
    """`run(params: Params, paths: <Stage>Paths) -> dict` in every stage, its helpers named and
    short, and a `main` of a few lines."""
    for stage in STAGES:
        tree = ast.parse((REPO_ROOT / "pipeline" / "stages" / f"{stage}.py").read_text())
        functions = {f.name: f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
        run = functions["run"]
        args = [(a.arg, ast.unparse(a.annotation)) for a in run.args.args if a.annotation]
        assert args == [("params", "Params"), ("paths", f"{stage.capitalize()}Paths")], stage
        assert len(run.args.args) == 2 and not run.args.kwonlyargs, f"{stage}.run takes more"
        assert ast.unparse(run.returns).startswith("dict"), f"{stage}.run returns a dict"
        main = functions["main"]
        assert main.end_lineno - main.lineno + 1 <= MAX_MAIN_LINES, f"{stage}.main is long"
        long = {
            name: f.end_lineno - f.lineno + 1
            for name, f in functions.items()
            if f.end_lineno - f.lineno + 1 > MAX_STAGE_FUNCTION_LINES
        }
        assert not long, f"pipeline.stages.{stage}: split these functions: {long}"


def runs_code(init: Path) -> bool:
    """Whether a package's `__init__.py` holds more than its docstring (Python runs it before
    any module of the package)."""
    body = ast.parse(init.read_text()).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return bool(body)


def stage_sources(graph: dict[str, set[str]], stage: str) -> set[Path]:
    """The project files `python -m pipeline.<stage>` runs: the module dvc.yaml's `cmd` names,
    everything it imports transitively (inside functions too), and the `__init__.py` of each
    package on the way that runs code. Relative to the repository root."""
    modules = project_modules()
    found = closure(graph, f"pipeline.{stage}")
    for module in list(found):
        parts = module.split(".")
        for i in range(1, len(parts)):
            package = ".".join(parts[:i])
            if package in modules and runs_code(modules[package]):
                found.add(package)
    return {modules[m].relative_to(REPO_ROOT) for m in found}


def test_stage_closure_follows_imports_and_packages(graph):
    sources = stage_sources(graph, "evaluate")
    assert Path("pipeline/stages/evaluate.py") in sources
    assert Path("pipeline/tracking/runs.py") in sources  # imported inside the stage
    assert Path("mrcnn/weights.py") in sources  # imported inside a function
    assert Path("mrcnn/data/__init__.py") in sources  # a package that runs code
    assert Path("pipeline/__init__.py") not in sources  # a docstring only
    assert Path("pipeline/training/loop.py") not in sources


@pytest.mark.parametrize("stage", STAGES)
def test_dvc_deps_cover_every_module_a_stage_runs(graph, stage):
    """A change to any module a stage imports reruns it: each is under one of the stage's
    `deps` (a folder covers everything under it)."""
    doc = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    deps = [Path(d) for d in doc["stages"][stage]["deps"] if "${" not in d]
    missing = sorted(
        str(source)
        for source in stage_sources(graph, stage)
        if not any(source == dep or dep in source.parents for dep in deps)
    )
    assert not missing, f"dvc.yaml stage {stage} lacks deps covering {missing}"
