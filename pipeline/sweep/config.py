"""A sweep's definition: the `tune` section, the search space and the base train / model
sections every trial starts from (`Sweep`, sent to every trial's driver function)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mrcnn.solver import scale_schedule
from pipeline.paramfile import from_dict, load_params, model_config
from pipeline.params import load
from pipeline.search_space import SearchSpace, apply, parse_space
from pipeline.train_params import TrainParams, TuneParams


@dataclass(frozen=True)
class Sweep:
    """Everything a trial needs (sent to every trial's driver function; plain values)."""

    name: str
    sections: dict[str, dict[str, Any]]  # base "train" + "model" sections, sweep keys applied
    space: SearchSpace
    dataset: dict[str, Any]  # num_classes, image_size, class_names (from the shard manifest)
    shards: str
    tracking_uri: str
    experiment_id: str = ""
    parent_run_id: str = ""
    trainer_storage: str = ""

    def trial_params(self, values: dict[str, Any]):
        """(TrainParams, Config) of a trial; ValueError naming the key when they are invalid."""
        sections = apply(self.sections, values)
        params = from_dict(TrainParams, sections["train"], "train")
        cfg = model_config(sections["model"], **self.dataset)
        return params, cfg


def sweep_sections(params_doc: dict[str, Any], tp: TuneParams) -> dict[str, dict[str, Any]]:
    """The base `train` and `model` sections of every trial, with the sweep's own train keys."""
    train = dict(params_doc.get("train") or {})
    train |= {
        "iterations": tp.iterations,
        "eval_every": tp.eval_every,
        "eval_images": tp.eval_images,
        "checkpoint_every": tp.eval_every,  # each report then carries the metric ASHA reads
    }
    return {"train": train, "model": dict(params_doc.get("model") or {})}


def load_sweep(
    params_path: Path, dataset: dict[str, Any], name: str | None = None
) -> tuple[TuneParams, Sweep]:
    """Read and validate the `tune` section (and the train/model sections trials start from)."""
    doc = load_params(params_path)
    section = dict(doc.get("tune") or {})
    space_spec = section.pop("space", None)
    tp = from_dict(TuneParams, section, "tune")
    if name:
        tp = replace(tp, name=name)
        tp.validate()
    sections = sweep_sections(doc, tp)
    # Paths in the file are taken from the project root, as every stage takes them (trials
    # run in their own folders on Ray workers): `load` applies the rule.
    init_weights = load(params_path).train.init_weights
    if init_weights:
        sections["train"]["init_weights"] = init_weights
    sweep = Sweep(tp.name, sections, SearchSpace(()), dataset, "", "")
    from_dict(TrainParams, sweep.sections["train"], "train")  # base params must be valid
    space = parse_space(space_spec, check=sweep.trial_params)
    base = from_dict(TrainParams, sweep.sections["train"], "train")
    if base.num_workers < 1:
        raise ValueError("params key 'train.num_workers' must be >= 1 for sweeps (Ray Train)")
    if tp.scheduler == "asha" and tp.grace_period > planned_iterations(base):
        raise ValueError(
            f"params key 'tune.grace_period' ({tp.grace_period}) exceeds a trial's "
            f"{planned_iterations(base)} iterations (tune.iterations at the real global batch)"
        )
    if tp.search_alg != "random" and any(d.kind == "grid" for d in space.dims):
        raise ValueError("params key 'tune.space': grid needs tune.search_alg random")
    return tp, replace(sweep, space=space)


def planned_iterations(params: TrainParams) -> int:
    """Iterations a trial runs: tune.iterations moved to its global batch (linear scaling)."""
    return scale_schedule(
        params.lr, params.iterations, 0, params.global_batch(), params.reference_batch
    ).iterations
