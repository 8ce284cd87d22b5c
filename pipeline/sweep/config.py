"""A sweep's definition: the `tune` section, the search space and the base train / model
sections every trial starts from (`Sweep`, sent to every trial's driver function)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mrcnn.solver import scale_schedule
from pipeline.params import TrainParams, check, from_dict, load_params, model_config
from pipeline.sweep.space import SearchSpace, apply, parse_space

TUNE_METRICS = {"segm_AP": "max", "bbox_AP": "max", "loss": "min"}  # what train_loop reports


@dataclass
class TuneParams:
    """`tune`: Ray Tune sweeps (`pipeline.tune`; not a DVC stage). Trials are training runs of the
    `train` and `model` sections with the sampled values applied and these keys overriding.

    The search space `tune.space` is a mapping parsed by `pipeline.search_space` (not a field).
    """

    name: str = "shapes"  # sweeps/<name>/ and the Ray Tune experiment <storage_path>/<name>
    num_samples: int = 6  # trials (times each grid, when the space has grids)
    metric: str = "segm_AP"  # segm_AP | bbox_AP (val AP, mode max) | loss (mode min)
    mode: str = "max"
    scheduler: str = "asha"  # asha (stops bad trials at rungs) | fifo (every trial runs out)
    grace_period: int = 100  # ASHA: iterations before a trial can be stopped (first rung)
    reduction_factor: float = 2.0  # ASHA: keep the best 1/factor of trials at each rung
    search_alg: str = "random"  # random | optuna | hyperopt (those two need their package)
    seed: int = 0  # of the search algorithm's sampling
    iterations: int = 300  # per trial, replaces train.iterations (same units, reference batch)
    eval_every: int = 100  # val AP every N iterations: what ASHA compares (train.eval_every)
    eval_images: int = 50  # val images in those evaluations (train.eval_images)
    time_budget_s: float = 0.0  # stop starting / running trials after this; 0 = no budget
    max_concurrent_trials: int = 0  # 0 = from the cluster: CPUs (GPUs) / those of one trial
    max_failures: int = 0  # Tune restarts of a trial whose driver died (0: recorded as failed)
    storage_path: str = ""  # Ray Tune storage; "" = <train.storage_path>/tune
    out_dir: str = "sweeps"  # best_params.yaml, trials table and picture: <out_dir>/<name>/

    def validate(self) -> None:
        check(
            re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name) is not None,
            "name",
            "must be letters, digits, '.', '_', '-'",
        )
        check(self.num_samples >= 1, "num_samples", "must be >= 1")
        check(self.metric in TUNE_METRICS, "metric", f"must be one of {tuple(TUNE_METRICS)}")
        check(
            self.mode == TUNE_METRICS.get(self.metric, self.mode),
            "mode",
            f"must be {TUNE_METRICS.get(self.metric)} for metric {self.metric}",
        )
        check(self.scheduler in ("asha", "fifo"), "scheduler", "must be asha or fifo")
        check(self.grace_period >= 1, "grace_period", "must be >= 1")
        check(self.reduction_factor > 1, "reduction_factor", "must be > 1")
        check(
            re.fullmatch(r"[a-z_]+", self.search_alg) is not None,
            "search_alg",
            "must be a name such as random, optuna or hyperopt",
        )
        for name in ("iterations", "eval_every", "eval_images"):
            check(getattr(self, name) >= 1, name, "must be >= 1")
        check(self.time_budget_s >= 0, "time_budget_s", "must be >= 0 (0 = no budget)")
        check(self.max_concurrent_trials >= 0, "max_concurrent_trials", "must be >= 0 (0 = auto)")
        check(self.max_failures >= 0, "max_failures", "must be >= 0")
        check(bool(self.out_dir.strip()), "out_dir", "must not be empty")


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
    sweep = Sweep(tp.name, sweep_sections(doc, tp), SearchSpace(()), dataset, "", "")
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
