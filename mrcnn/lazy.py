"""Names imported on first use (PEP 562), for the package `__init__` files: `import mrcnn.export`
loads no torch until a name that needs it is asked for, so the torch-free parts
(`mrcnn.export.OnnxModel`, `mrcnn.Detections`) work in a process without torch.

    __getattr__, __dir__ = lazy_names(__name__, {"mrcnn.export.onnx": ("to_onnx",), ...})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_names(
    package: str, modules: Mapping[str, Iterable[str]], submodules: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """-> a module-level `__getattr__` that imports each name of `modules` ({module: names})
    from its module on first use (and each of `submodules` as `package.sub`), and the matching
    `__dir__`."""
    names = {name: module for module, ns in modules.items() for name in ns}
    subs = tuple(submodules)

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        if name in subs:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module '{package}' has no attribute '{name}'")

    def __dir__() -> list[str]:
        return sorted([*vars(importlib.import_module(package)), *names, *subs])

    return __getattr__, __dir__
