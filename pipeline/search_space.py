"""The search space of a sweep (`tune.space` in params.yaml): parsed, validated, sampled, applied.

A params-file concept below `pipeline.params` (which checks `tune.space` with the rest of the
file) and `pipeline.sweep` (which samples it), so neither imports the other for it.

    tune:
      space:
        train.lr: {loguniform: [1.0e-4, 3.0e-3]}
        model.rpn.nms_thresh: {uniform: [0.6, 0.8]}
        model.roi_heads.batch_size_per_image: {choice: [32, 64, 128]}
        model.anchors.sizes: {choice: [[8, 16, 32, 64, 128], [12, 24, 48, 96, 192]]}

Each key is a dotted params key of the `train` or `model` section; each value is one
distribution:

- `{loguniform: [lo, hi]}`: floats, uniform in log space, lo <= x < hi, 0 < lo
  (`tune.loguniform`)
- `{uniform: [lo, hi]}`: floats, lo <= x < hi (`tune.uniform`)
- `{randint: [lo, hi]}`: integers, lo <= x < hi: hi is excluded, as in `tune.randint`
- `{choice: [a, b, ...]}`: one of the values, lists allowed (anchor sizes) (`tune.choice`)
- `{grid: [a, b, ...]}`: every value, once per sample, crossed with the other grids
  (`tune.grid_search`)

A choice or grid whose values are lists is sampled as an index (search algorithms such as
Optuna only take scalar categories) and decoded back. A trial's config is the base params with
the sampled values applied (`apply`); `best_params.yaml` holds only the swept keys, nested as
in params.yaml (`nested`), and `dvc_set_args` gives the matching `dvc exp run -S` arguments.
"""

from __future__ import annotations

import copy
import json
import math
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

KINDS = ("loguniform", "uniform", "randint", "choice", "grid")
SECTIONS = ("train", "model")
# Train keys a sweep sets itself (or that name the run): sampling them is an error.
FIXED_TRAIN_KEYS = {
    "iterations": "tune.iterations",
    "eval_every": "tune.eval_every",
    "eval_images": "tune.eval_images",
    "checkpoint_every": "tune.eval_every",
    "run_name": "tune.name",
    "storage_path": "tune.storage_path",
}


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class Dimension:
    """One swept key: `kind` is one of KINDS; `values` are the bounds (ranges) or the options."""

    key: str  # dotted params key, e.g. "train.lr"
    kind: str
    values: tuple[Any, ...]

    @property
    def log_scale(self) -> bool:
        return self.kind == "loguniform"

    @property
    def numeric(self) -> bool:
        """True when every value is a number (plotted on an axis; else as categories)."""
        return self.kind in ("loguniform", "uniform", "randint") or all(
            _is_number(v) for v in self.values
        )

    @property
    def _indexed(self) -> bool:
        return self.kind in ("choice", "grid") and not all(
            isinstance(v, (str, int, float, bool)) or v is None for v in self.values
        )

    def domain(self) -> Any:
        """The Ray Tune sampler for this key."""
        from ray import tune

        lo_hi = self.values
        if self.kind == "loguniform":
            return tune.loguniform(*lo_hi)
        if self.kind == "uniform":
            return tune.uniform(*lo_hi)
        if self.kind == "randint":
            return tune.randint(*lo_hi)
        options = list(range(len(self.values))) if self._indexed else list(self.values)
        return tune.choice(options) if self.kind == "choice" else tune.grid_search(options)

    def decode(self, sampled: Any) -> Any:
        """A sampled value as the params value (an index back to its list; a copy)."""
        if self._indexed:
            return copy.deepcopy(self.values[int(sampled)])
        if self.kind == "randint":
            return int(sampled)
        if self.kind in ("loguniform", "uniform"):
            return float(sampled)
        return sampled

    def contains(self, value: Any) -> bool:
        """Whether `value` lies in the declared space."""
        if self.kind in ("loguniform", "uniform"):
            lo, hi = self.values
            return _is_number(value) and lo <= value <= hi
        if self.kind == "randint":
            lo, hi = self.values
            return isinstance(value, int) and not isinstance(value, bool) and lo <= value < hi
        return any(_same(value, v) for v in self.values)

    def edge_values(self) -> list[Any]:
        """What validation builds a config from: both ends of a range, every option."""
        if self.kind in ("loguniform", "uniform"):
            return list(self.values)
        if self.kind == "randint":
            return [self.values[0], self.values[1] - 1]
        return list(self.values)

    def describe(self) -> str:
        return f"{self.kind}{json.dumps(list(self.values))}"


def _same(a: Any, b: Any) -> bool:
    """Equality that treats 8 and 8.0, and lists and tuples, as the same value."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if _is_number(a) and _is_number(b):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b


@dataclass(frozen=True)
class SearchSpace:
    dims: tuple[Dimension, ...]

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dims]

    def __getitem__(self, key: str) -> Dimension:
        for d in self.dims:
            if d.key == key:
                return d
        raise KeyError(key)

    def param_space(self) -> dict[str, Any]:
        """`Tuner(param_space=...)`: one flat entry per dotted key."""
        return {d.key: d.domain() for d in self.dims}

    def decode(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's Tune config -> {dotted key: params value}."""
        return {d.key: d.decode(config[d.key]) for d in self.dims}

    def contains(self, values: Mapping[str, Any]) -> bool:
        return set(values) == set(self.keys) and all(self[k].contains(v) for k, v in values.items())

    def to_spec(self) -> dict[str, dict[str, list[Any]]]:
        """Back to the params.yaml form (for MLflow and the sweep's identity)."""
        return {d.key: {d.kind: list(d.values)} for d in self.dims}


def parse_space(spec: Any, check: Callable[[dict[str, Any]], None] | None = None) -> SearchSpace:
    """`tune.space` -> SearchSpace. Raises ValueError naming the key for a bad key or spec.

    `check({key: value})` is called with each key at the ends of its range and with each of its
    options (it should build the trial's params and raise ValueError when they are invalid);
    combinations of keys are checked only when a trial starts (an impossible one fails that
    trial, not the sweep).
    """
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise ValueError(f"params key 'tune.space' must be a mapping, got {type(spec).__name__}")
    if not spec:
        raise ValueError("params key 'tune.space' is empty: name at least one key to sweep")
    dims = [_parse_dimension(str(key), value) for key, value in spec.items()]
    if check is not None:
        for dim in dims:
            for value in dim.edge_values():
                try:
                    check({dim.key: value})
                except ValueError as e:
                    raise ValueError(
                        f"params key 'tune.space.{dim.key}': value {json.dumps(value)} gives an "
                        f"invalid config: {e}"
                    ) from None
    return SearchSpace(tuple(dims))


def _parse_dimension(key: str, value: Any) -> Dimension:
    where = f"params key 'tune.space.{key}'"
    parts = key.split(".")
    if len(parts) < 2 or parts[0] not in SECTIONS or not all(parts):
        raise ValueError(
            f"{where}: keys are dotted params keys of the train or model section, "
            "e.g. train.lr or model.rpn.nms_thresh"
        )
    if parts[0] == "train" and len(parts) == 2 and parts[1] in FIXED_TRAIN_KEYS:
        raise ValueError(f"{where}: a sweep sets it from {FIXED_TRAIN_KEYS[parts[1]]}")
    if not isinstance(value, Mapping) or len(value) != 1:
        raise ValueError(
            f"{where} must be one distribution, e.g. {{loguniform: [1.0e-4, 1.0e-2]}} "
            f"(one of {', '.join(KINDS)}), got {value!r}"
        )
    kind, args = next(iter(value.items()))
    if kind not in KINDS:
        raise ValueError(f"{where}: unknown distribution '{kind}' (known: {', '.join(KINDS)})")
    if not isinstance(args, (list, tuple)) or not args:
        raise ValueError(f"{where}: {kind} needs a non-empty list, got {args!r}")
    args = tuple(args)
    if kind in ("loguniform", "uniform", "randint"):
        if len(args) != 2 or not all(_is_number(a) for a in args):
            raise ValueError(f"{where}: {kind} needs [low, high] numbers, got {list(args)}")
        lo, hi = args
        if not lo < hi:
            raise ValueError(f"{where}: {kind} needs low < high, got {list(args)}")
        if kind == "loguniform" and lo <= 0:
            raise ValueError(f"{where}: loguniform needs 0 < low, got {lo}")
        if kind == "randint":
            if not all(isinstance(a, int) for a in args):
                raise ValueError(f"{where}: randint needs integer bounds, got {list(args)}")
            if hi - lo < 2:
                raise ValueError(f"{where}: randint [{lo}, {hi}] holds one value (hi excluded)")
        else:
            args = (float(lo), float(hi))
    elif len(args) != len({json.dumps(a, sort_keys=True) for a in args}):
        raise ValueError(f"{where}: {kind} lists a value twice: {list(args)}")
    return Dimension(key, kind, args)


# ---------------------------------------------------------------------------------------------
# Sampled values -> params.


def apply(sections: Mapping[str, Mapping[str, Any]], values: Mapping[str, Any]) -> dict:
    """A deep copy of `sections` ({"train": {...}, "model": {...}}) with each dotted key set
    (missing intermediate mappings are created: `model.rpn.nms_thresh` on an empty model)."""
    out = copy.deepcopy(dict(sections))
    for key, value in values.items():
        node = out
        *path, last = key.split(".")
        for part in path:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ValueError(f"params key '{key}': '{part}' is not a section")
            node = child
        node[last] = copy.deepcopy(value)
    return out


def nested(values: Mapping[str, Any]) -> dict[str, Any]:
    """{"train.lr": 0.001} -> {"train": {"lr": 0.001}} (params.yaml nesting)."""
    return apply({}, values)


def dvc_set_args(values: Mapping[str, Any], existing: Mapping[str, Any] | None = None) -> list[str]:
    """`dvc exp run -S` arguments for `values`, shell-quoted. A key that `existing` (the params
    file's contents) lacks is written `++key=value` (Hydra's add-or-override)."""
    args = []
    for key, value in values.items():
        prefix = "" if existing is not None and _has_key(existing, key) else "++"
        text = json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else value
        args += ["-S", shlex.quote(f"{prefix}{key}={text}")]
    return args


def _has_key(doc: Mapping[str, Any], key: str) -> bool:
    node: Any = doc
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True
