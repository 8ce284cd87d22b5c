"""`params.yaml` as a file: read it, build a section's dataclass from a mapping (errors name
`section.key`), turn a section back into a plain dict, and the `model` section into an
`mrcnn.Config`. The sections themselves, and the whole-file check, are in `pipeline.params`
(import these functions from here).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mrcnn import presets
from mrcnn.config import Config
from mrcnn.mapping import from_mapping, reprefix, to_plain
from pipeline.device import DEVICE_PATTERN

T = TypeVar("T")

DEFAULT_PRESET = "shapes_small"  # model.preset when the section names none


# `num_workers: -1`: one worker process per core, in every section that counts processes.
ALL_CORES = -1


def worker_processes(num_workers: int) -> int:
    """A params `num_workers` -> worker processes to start. One meaning in every section: N
    processes, 0 = none (the main process does the work), -1 (`ALL_CORES`) = one per core."""
    return (os.cpu_count() or 1) if num_workers == ALL_CORES else num_workers


def check_workers(num_workers: int, key: str = "num_workers") -> None:
    """N >= 0 worker processes, or -1 for one per core (see `worker_processes`)."""
    check(
        num_workers >= ALL_CORES, key, "must be >= 0 (0 = none: the main process) or -1 (all cores)"
    )


def check_device(device: str, key: str = "device") -> None:
    """`auto`, `cpu`, `cuda` or `cuda:N` (see `pipeline.device.resolve_device`)."""
    check(DEVICE_PATTERN.fullmatch(device) is not None, key, "must be auto, cpu, cuda or cuda:N")


def check(ok: bool, key: str, why: str) -> None:
    """Raise `ValueError("params key 'key' why")` unless `ok` (the section prefix is added by
    `load_section`)."""
    if not ok:
        raise ValueError(f"params key '{key}' {why}")


def model_config(
    section: dict[str, Any],
    *,
    num_classes: int,
    image_size: int,
    class_names: tuple[str, ...] = (),
) -> Config:
    """A `model` section given as a dict -> `mrcnn.Config`: a preset (`model.preset`) with the
    section's other keys merged over it; the dataset fixes classes and input size (sweeps apply
    each trial's sampled values to the section first)."""
    if not isinstance(section, Mapping):
        raise ValueError(f"params section 'model' must be a mapping, got {type(section).__name__}")
    odd = [k for k in section if not isinstance(k, str)]
    if odd:
        raise ValueError(f"unknown params key 'model.{odd[0]}' (keys are names, e.g. preset)")
    section = dict(section)
    preset = model_preset(section)
    section.pop("preset", None)
    try:
        cfg = presets.get(preset, num_classes=num_classes, image_size=image_size)
        return cfg.replace(**section, class_names=list(class_names))
    except ValueError as e:
        message = str(e).replace("unknown config key '", "unknown params key 'model.", 1)
        if message.startswith("unknown preset"):
            message = f"params key 'model.preset': {message}"
        raise ValueError(reprefix(message, "model.", "params key")) from None


def model_preset(section: Mapping[str, Any]) -> str:
    """The preset a `model` section builds on: its `preset`, else `DEFAULT_PRESET`. The one
    place that default is applied (the saved model records the result, `mrcnn.weights.save`)."""
    return str(section.get("preset", DEFAULT_PRESET))


def load_params(path: str | Path) -> dict[str, Any]:
    """The whole YAML file as a dict (empty for an empty file). A file that is not UTF-8 text or
    not one YAML document (a syntax error, a tab indent, a Python tag) raises `ValueError` with
    the line and column (a UTF-8 byte-order mark and Windows line ends are fine)."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8"
        ) from None
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(doc).__name__}")
    return doc


def _yaml_problem(error: yaml.YAMLError) -> str:
    """yaml's error as one phrase: what is wrong and where (line and column from 1)."""
    problem = getattr(error, "problem", None) or getattr(error, "context", None) or str(error)
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def load_section(path: str | Path, section: str, cls: type[T]) -> T:
    """Read `section` of the YAML file at `path` into the dataclass `cls` (validated)."""
    return from_dict(cls, load_params(path).get(section) or {}, section)


def from_dict(cls: type[T], d: Any, section: str) -> T:
    """Build and validate `cls` from a mapping; errors name `section.key`."""
    if not isinstance(d, dict):
        raise ValueError(f"params section '{section}' must be a mapping, got {type(d).__name__}")
    if hasattr(cls, "normalize"):
        try:
            d = cls.normalize(d)
        except ValueError as e:
            raise ValueError(reprefix(str(e), f"{section}.", "params key")) from None
    return from_mapping(cls, d, prefix=f"{section}.", noun="params key")


def to_dict(obj: Any) -> dict[str, Any]:
    """A section as a plain, JSON/YAML-safe dict (tuples become lists)."""
    return to_plain(dataclasses.asdict(obj))
