"""Ray Tune sweeps over the training recipe, tracked in MLflow (not a DVC stage).

    python -m pipeline.tune [--params params.yaml] [--name NAME] [--fresh] [--retry-failed]

A `Tuner` runs `run_trial`, a driver function, once per sampled config (`tune.space`). Each
trial builds its `train` and `model` params (the base sections with the sampled values applied,
`tune.iterations` / `tune.eval_every` / `tune.eval_images` overriding), opens an MLflow run
nested under the sweep's parent run, and starts a Ray Train `TorchTrainer` through
`pipeline.train.fit` with `TuneReportCallback`: the workers' reports (`iteration`, `loss`, and
every `tune.eval_every` iterations the val `segm_AP` / `bbox_AP`) reach Tune, where ASHA stops
the trials that are behind at its rungs. A trial that raises (an impossible config, a
non-finite loss, a crash) is recorded as failed and the sweep goes on.

Resources: the driver function holds no CPU (only a little memory); the TorchTrainer's workers
take `train.num_workers` x `train.cpus_per_worker` CPUs (or one GPU each with `train.use_gpu`),
and `max_concurrent_trials` (`tune.max_concurrent_trials`, or the cluster's CPUs / GPUs
divided by one trial's) keeps Tune from starting trials that would wait for workers.

Restarts: the Tune experiment lives in `<storage>/<name>` and each trial's TorchTrainer in
`<storage>/<name>/train/trial-<id>`. Running the same command again restores the experiment
(`Tuner.restore`): finished trials stay, unfinished ones start again and their TorchTrainer
resumes from its last checkpoint (same run name and storage); `--fresh` starts over.

Outputs (`<tune.out_dir>/<name>/`, by default `sweeps/shapes/`): `best_params.yaml` (the best
trial's swept keys + the `dvc exp run -S ...` line), `trials.csv` / `trials.md`, `sweep.png`,
`summary.json`; the same go to the parent MLflow run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mrcnn.solver import scale_schedule
from pipeline import sweep_report, sweep_tracking
from pipeline.params import (
    MlflowParams,
    TrainParams,
    TuneParams,
    from_dict,
    load_params,
    model_config,
    to_dict,
)
from pipeline.search_space import SearchSpace, apply, dvc_set_args, parse_space
from pipeline.sweep_report import COMPLETED, FAILED, STOPPED, TrialRecord
from pipeline.train import init_ray

logger = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"  # in the Tune experiment dir: the sweep's identity + parent run id
DRIVER_MEMORY = 256 * 2**20  # bytes of Ray's `memory` resource held by a trial's driver
SEARCH_ALGS = {  # name -> (package to pip install, module, class, seed keyword)
    "optuna": ("optuna", "ray.tune.search.optuna", "OptunaSearch", "seed"),
    "hyperopt": ("hyperopt", "ray.tune.search.hyperopt", "HyperOptSearch", "random_state_seed"),
}


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
    fault: dict[str, Any] | None = None  # tests: passed to train_loop (see pipeline.train)

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
    global_batch = params.batch_size * max(1, params.num_workers)
    return scale_schedule(
        params.lr, params.iterations, 0, global_batch, params.reference_batch
    ).iterations


# ---------------------------------------------------------------------------------------------
# One trial (runs in the Tune trial's actor).


def run_trial(config: dict[str, Any], sweep: Sweep) -> None:
    """Tune's driver function: one training run of the sampled `config`."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.train import fit, make_loop_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    trial_id = ray.tune.get_context().get_trial_id()
    values = sweep.space.decode(config)
    client, run_id = sweep_tracking.trial_run(sweep, trial_id, values)
    try:
        params, cfg = sweep.trial_params(values)  # an impossible combination raises here
        sweep_tracking.log_trial_params(client, run_id, params, cfg)
        loop_config = make_loop_config(
            params, cfg, Path(sweep.shards), sweep.tracking_uri, run_id, fault=sweep.fault
        )
        result = fit(
            loop_config,
            params,
            f"trial-{trial_id}",
            Path(sweep.trainer_storage),
            callbacks=[TuneReportCallback()],
        )
        if result.error is not None:
            raise result.error
    except Exception as e:
        client.set_tag(run_id, "tune.status", FAILED)
        client.set_tag(run_id, "tune.error", f"{type(e).__name__}: {e}"[:5000])
        client.set_terminated(run_id, "FAILED")
        raise


# ---------------------------------------------------------------------------------------------
# The sweep (the process that runs `python -m pipeline.tune`).


def run(
    tp: TuneParams,
    sweep: Sweep,
    mlflow_params: MlflowParams,
    *,
    storage: Path,
    out_dir: Path,
    params_doc: dict[str, Any] | None = None,
    fresh: bool = False,
    retry_failed: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the sweep; write the reports; return the summary."""
    from mrcnn.data import ShardDataset
    from pipeline import tracking

    tracking.check_tracking_uri(sweep.tracking_uri)
    manifest = ShardDataset(Path(sweep.shards) / "train").manifest  # fails early without shards
    exp_dir = storage / tp.name
    identity = _identity(tp, sweep, manifest)
    if fresh and exp_dir.exists():
        logger.info("--fresh: removing the previous sweep %s", exp_dir)
        shutil.rmtree(exp_dir)
    state = _sweep_state(exp_dir, identity)
    init_ray()
    if tp.scheduler == "asha":
        check_state_api()

    start = time.time()
    with tracking.start_run(
        sweep.tracking_uri,
        mlflow_params.experiment,
        run_name=f"sweep-{tp.name}",
        run_id=state.get("parent_run_id"),
        tags={"stage": "tune", "sweep": tp.name},
    ) as parent:
        import mlflow

        if state.get("parent_run_id") != parent.info.run_id:
            mlflow.log_params(tracking.flatten({"tune": to_dict(tp)}))
            mlflow.log_params(
                {f"space.{k}": json.dumps(v) for k, v in sweep.space.to_spec().items()}
            )
        state |= {"identity": identity, "parent_run_id": parent.info.run_id}
        exp_dir.mkdir(parents=True, exist_ok=True)
        (exp_dir / SWEEP_FILE).write_text(json.dumps(state, indent=2))
        sweep = replace(
            sweep,
            experiment_id=parent.info.experiment_id,
            parent_run_id=parent.info.run_id,
            trainer_storage=str((exp_dir / "train").resolve()),
        )
        grid = _tuner(tp, sweep, storage, exp_dir, retry_failed).fit()
        records = _records(grid, sweep, tp.metric)
        wall = time.time() - start
        sweep_tracking.finish_trial_runs(records, sweep)
        best = sweep_report.best_trial(records, tp.metric, tp.mode)
        summary = _summary(tp, sweep, records, best, params_doc, wall)
        files = sweep_report.write_reports(
            out_dir / tp.name, records, best, sweep.space, tp.metric, params_doc, summary
        )
        sweep_tracking.log_parent(records, best, sweep, tp, files, wall)
    _log_outcome(summary, files)
    if best is None:
        raise RuntimeError(f"sweep {tp.name}: no trial reported {tp.metric}; see {out_dir}")
    return summary


def _identity(tp: TuneParams, sweep: Sweep, manifest: dict[str, Any]) -> str:
    """What makes a sweep the same sweep: restoring one that differs is refused."""
    settings = to_dict(tp)
    for key in ("name", "max_concurrent_trials", "time_budget_s", "max_failures", "out_dir"):
        settings.pop(key)
    blob = json.dumps(
        {
            "tune": settings,
            "space": sweep.space.to_spec(),
            "sections": sweep.sections,
            "data": manifest.get("index"),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _sweep_state(exp_dir: Path, identity: str) -> dict[str, Any]:
    path = exp_dir / SWEEP_FILE
    if not path.exists():
        return {}
    state = json.loads(path.read_text())
    if state.get("identity") != identity:
        raise ValueError(
            f"sweep {exp_dir.name} in {exp_dir.parent} was started with other params (tune, "
            "train, model or data); resume it with those, or start over with --fresh, or "
            "pick another --name"
        )
    logger.info("resuming sweep %s (MLflow run %s)", exp_dir.name, state.get("parent_run_id"))
    return state


def check_state_api() -> None:
    """Raise unless Ray's state API answers. A trial that ASHA stops is killed with its Ray
    Train controller; Ray Train V2 then removes the trial's worker placement group from a
    watcher that polls the state API. Without it the workers' resources stay reserved and the
    next trial waits for them forever."""
    from ray.util.state import list_actors

    try:
        list_actors(limit=1, timeout=20, raise_on_missing_output=False)
    except Exception as e:
        raise RuntimeError(
            "Ray's state API does not answer (Ray started without its dashboard?). ASHA stops "
            "trials early, and Ray Train frees a stopped trial's workers through that API: "
            "start Ray with the dashboard (`ray start --head`, or leave Ray to pipeline.tune), "
            f"or set tune.scheduler: fifo. ({type(e).__name__}: {e})"
        ) from None


def _tuner(tp: TuneParams, sweep: Sweep, storage: Path, exp_dir: Path, retry_failed: bool):
    from ray import tune

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, sweep=sweep), {"CPU": 0, "memory": DRIVER_MEMORY}
    )
    if tune.Tuner.can_restore(str(exp_dir)):
        logger.info("restoring the Tune experiment %s", exp_dir)
        return tune.Tuner.restore(
            str(exp_dir), trainable, resume_unfinished=True, resume_errored=retry_failed
        )
    base = from_dict(TrainParams, sweep.sections["train"], "train")
    concurrent = tp.max_concurrent_trials or max_concurrent_trials(base)
    logger.info("sweep %s: %d trial(s) at a time", tp.name, concurrent)
    scheduler = None
    if tp.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(
            time_attr="iteration",
            max_t=planned_iterations(base),
            grace_period=tp.grace_period,
            reduction_factor=tp.reduction_factor,
            stop_last_trials=False,  # a surviving trial ends by itself, after its last eval
        )
    search_alg = search_algorithm(tp, concurrent)
    return tune.Tuner(
        trainable,
        param_space=sweep.space.param_space(),
        tune_config=tune.TuneConfig(
            metric=tp.metric,
            mode=tp.mode,
            scheduler=scheduler,
            search_alg=search_alg,
            num_samples=tp.num_samples,
            # Set on the random search itself; Tune wraps other searchers in a limiter.
            max_concurrent_trials=None if tp.search_alg == "random" else concurrent,
            time_budget_s=tp.time_budget_s or None,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=tp.name,
            storage_path=str(storage.resolve()),
            failure_config=tune.FailureConfig(max_failures=tp.max_failures),
            verbose=1,
        ),
    )


def _trial_name(trial) -> str:
    return f"trial-{trial.trial_id}"


def max_concurrent_trials(params: TrainParams, resources: dict[str, float] | None = None) -> int:
    """How many trials fit at once: the cluster's GPUs (use_gpu) or CPUs over one trial's."""
    if resources is None:
        import ray

        resources = ray.cluster_resources()
    if params.use_gpu:
        per_trial, have = params.num_workers, resources.get("GPU", 0)
    else:
        per_trial, have = params.num_workers * params.cpus_per_worker, resources.get("CPU", 0)
    return max(1, math.floor(have / per_trial))


def search_algorithm(tp: TuneParams, max_concurrent: int = 0):
    """`tune.search_alg` -> a Tune search algorithm (random: Tune's BasicVariantGenerator).

    `max_concurrent` is given here: Tune applies `TuneConfig.max_concurrent_trials` only to
    searchers it wraps itself, not to a BasicVariantGenerator passed in."""
    import importlib
    import importlib.util

    if tp.search_alg == "random":
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(random_state=tp.seed, max_concurrent=max_concurrent)
    if tp.search_alg not in SEARCH_ALGS:
        known = ", ".join(["random", *SEARCH_ALGS])
        raise ValueError(f"params key 'tune.search_alg': unknown '{tp.search_alg}' ({known})")
    package, module, cls, seed_kw = SEARCH_ALGS[tp.search_alg]
    if importlib.util.find_spec(package) is None:
        raise ValueError(
            f"params key 'tune.search_alg': {tp.search_alg} needs the '{package}' package "
            f"(`pip install {package}`), or use random"
        )
    return getattr(importlib.import_module(module), cls)(**{seed_kw: tp.seed})


def _records(grid, sweep: Sweep, metric: str) -> list[TrialRecord]:
    """One TrialRecord per trial of Tune's ResultGrid."""
    from ray.tune import ExperimentAnalysis

    # Every trial's config (a restored grid has none in the Result of a trial that never
    # reported).
    configs = ExperimentAnalysis(grid.experiment_path).get_all_configs()
    records = []
    for result in grid:
        trial_id = Path(result.path).name.removeprefix("trial-")
        values = sweep.space.decode(result.config or configs[trial_id])
        metrics = result.metrics or {}
        try:
            planned = planned_iterations(sweep.trial_params(values)[0])
        except ValueError:
            planned = 0
        iteration = int(metrics.get("iteration", 0) or 0)
        if result.error is not None:
            status = FAILED
        else:
            status = COMPLETED if iteration >= planned else STOPPED
        curve = []
        df = result.metrics_dataframe
        if df is not None and metric in df and "iteration" in df:
            rows = df[["iteration", metric]].dropna()
            curve = [
                (int(i), float(v)) for i, v in zip(rows["iteration"], rows[metric], strict=True)
            ]
        records.append(
            TrialRecord(
                trial_id=trial_id,
                status=status,
                values=values,
                iteration=iteration,
                planned_iterations=planned,
                metrics={k: float(metrics[k]) for k in sweep_report.METRIC_KEYS if k in metrics},
                curve=curve,
                error=f"{type(result.error).__name__}: {result.error}" if result.error else "",
            )
        )
    return sorted(records, key=lambda r: r.trial_id)


def _summary(tp, sweep, records, best, params_doc, wall) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": tp.name,
        "metric": tp.metric,
        "mode": tp.mode,
        "wall_s": round(wall, 1),
        "trials": sweep_report.records_as_dicts(records),
        "completed": [r.trial_id for r in records if r.status == COMPLETED],
        "stopped_early": [r.trial_id for r in records if r.status == STOPPED],
        "failed": [r.trial_id for r in records if r.status == FAILED],
        "parent_run_id": sweep.parent_run_id,
        "best": None,
    }
    if best is not None:
        out["best"] = {
            "trial_id": best.trial_id,
            tp.metric: best.metrics[tp.metric],
            "iteration": best.iteration,
            "params": best.values,
            "mlflow_run_id": best.mlflow_run_id,
        }
        out["dvc_command"] = "dvc exp run " + " ".join(dvc_set_args(best.values, params_doc))
    return out


def _log_outcome(summary: dict[str, Any], files: dict[str, Path]) -> None:
    logger.info(
        "sweep %s: %d trials (%d stopped early, %d failed) in %.0f s",
        summary["name"],
        len(summary["trials"]),
        len(summary["stopped_early"]),
        len(summary["failed"]),
        summary["wall_s"],
    )
    if summary["best"]:
        b = summary["best"]
        logger.info(
            "best trial %s: %s %.4f", b["trial_id"], summary["metric"], b[summary["metric"]]
        )
        logger.info("best params: %s", files.get("best_params.yaml"))
        logger.info("apply with: %s", summary["dvc_command"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Ray Tune sweep over train/model params (tune).")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--name", help="sweep name (default tune.name); the same name resumes")
    ap.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    ap.add_argument("--retry-failed", action="store_true", help="on resume, rerun failed trials")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from mrcnn.data import ShardDataset
    from pipeline import tracking
    from pipeline.params import load_section

    root = args.params.resolve().parent
    shards = root / "data" / "shards"
    manifest = ShardDataset(shards / "train").manifest
    dataset = {
        "num_classes": manifest["num_classes"],
        "image_size": manifest["image_size"],
        "class_names": tuple(manifest["class_names"]),
    }
    tp, sweep = load_sweep(args.params, dataset, args.name)
    mlflow_params = load_section(args.params, "mlflow", MlflowParams)
    uri = tracking.tracking_uri(args.params, mlflow_params.tracking_uri)
    train_storage = Path(from_dict(TrainParams, sweep.sections["train"], "train").storage_path)
    storage = Path(tp.storage_path) if tp.storage_path else train_storage / "tune"
    sweep = replace(sweep, shards=str(shards.resolve()), tracking_uri=uri)
    summary = run(
        tp,
        sweep,
        mlflow_params,
        storage=storage if storage.is_absolute() else root / storage,
        out_dir=root / tp.out_dir,
        params_doc=load_params(args.params),
        fresh=args.fresh,
        retry_failed=args.retry_failed,
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "trials"}, indent=2))


if __name__ == "__main__":
    main()
