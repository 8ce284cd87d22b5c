"""`import mrcnn` gives the public surface of ARCHITECTURE.md, without import cycles."""

import ast
import subprocess
import sys
from pathlib import Path

import mrcnn

PACKAGE = Path(mrcnn.__file__).parent


def test_import_mrcnn_exposes_subpackages_in_a_fresh_interpreter():
    # A fresh interpreter: inside pytest other tests may already have imported the submodules.
    code = (
        "import mrcnn, sys\n"
        "assert callable(mrcnn.weights.load_torchvision)\n"
        "assert callable(mrcnn.presets.torchvision_r50_fpn)\n"
        "assert callable(mrcnn.presets.shapes_small)\n"
        "assert mrcnn.data.ShardDataset and mrcnn.data.expand_mini_masks\n"
        "assert {'data', 'evaluation', 'export', 'presets', 'weights'} <= set(mrcnn.__all__)\n"
        "assert callable(mrcnn.evaluation.coco_evaluate) and callable(mrcnn.export.to_onnx)\n"
        "assert mrcnn.export.OnnxModel.__name__ == 'OnnxModel'\n"
        "assert not any(m.startswith('pipeline') for m in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_torch_free_parts_import_without_torch():
    """`OnnxModel`, `Detections` and the post-processing load where torch cannot be imported
    (a serving process with numpy, Pillow and onnxruntime only)."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any `import torch` now raises ImportError\n"
        "from mrcnn.export import OnnxModel\n"
        "from mrcnn import Detections\n"
        "from mrcnn.inference.postprocess import to_detections\n"
        "from mrcnn.data.image_file import read_image\n"
        "from mrcnn.onnx_model import OnnxModel as Alias\n"
        "assert Alias is OnnxModel\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_moved_public_names_keep_their_aliases():
    """The aliases the README lists for one release resolve to the moved objects."""
    from mrcnn import coco_eval, evaluation, export, onnx_model

    assert coco_eval.coco_evaluate is evaluation.coco_evaluate
    assert onnx_model.OnnxModel is export.OnnxModel
    assert mrcnn.export.to_onnx is export.onnx.to_onnx


def test_all_names_exist():
    for name in mrcnn.__all__:
        assert hasattr(mrcnn, name), name


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.Module, modules: set[str]) -> set[str]:
    """mrcnn modules a module imports at import time (top-level statements, not functions).

    `from a.b import c` imports `a.b.c` when that is a module, else takes a name from `a.b`.
    The implied import of a parent package's __init__ is left out: Python has always started
    the parent before the child, so only a named import can see a half-initialised module.
    """
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
    return found & modules


def test_no_import_cycles_between_modules():
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {n: _imports(ast.parse(p.read_text()), set(paths)) for n, p in paths.items()}
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        for nxt in graph[node] - {node}:
            assert nxt not in stack, f"import cycle: {' -> '.join([*stack, nxt])}"
            if nxt not in done:
                visit(nxt, [*stack, nxt])
        done.add(node)

    for node in sorted(graph):
        visit(node, [node])
    assert {"mrcnn.modeling.model", "mrcnn.weights", "mrcnn.data.loader"} <= set(graph)
    assert "mrcnn.structures" in graph["mrcnn.data.loader"]  # the graph sees real edges
