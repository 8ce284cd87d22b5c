"""Ray Tune sweeps over the training recipe, tracked in MLflow (not a DVC stage).

    python -m pipeline.tune [--params params.yaml] [--name NAME] [--fresh] [--retry-failed]

A `Tuner` runs `run_trial`, a driver function, once per sampled config (`tune.space`). Each
trial builds its `train` and `model` params (the base sections with the sampled values applied,
`tune.iterations` / `tune.eval_every` / `tune.eval_images` overriding), opens an MLflow run
nested under the sweep's parent run, and starts a Ray Train `TorchTrainer` through
`pipeline.training.driver.fit` with `TuneReportCallback`: the workers' reports (`iteration`,
`loss`, and every `tune.eval_every` iterations the val `segm_AP` / `bbox_AP`) reach Tune,
where ASHA stops the trials that are behind at its rungs. A trial that raises (an impossible
config, a non-finite loss, a crash) is recorded as failed and the sweep goes on.

Resources: the driver function holds no CPU (only a little memory); the TorchTrainer's workers
take `train.num_workers` x `train.cpus_per_worker` CPUs (or one GPU each with `train.use_gpu`),
and `max_concurrent_trials` (`tune.max_concurrent_trials`, or the cluster's CPUs / GPUs
divided by one trial's) keeps Tune from starting trials that would wait for workers.

Restarts: the Tune experiment lives in `<storage>/<name>` and each trial's TorchTrainer in
`<storage>/<name>/train/trial-<id>`; `<storage>` (`tune.storage_path`, by default
`<train.storage_path>/tune`) is a folder, or a URL such as s3://bucket/prefix that Tune, the
trials and their workers reach through pyarrow with the credentials and `AWS_ENDPOINT_URL` of
their own environment (what a multi-node cluster needs: no shared disk). Running the same
command again restores the experiment (`Tuner.restore`): finished trials stay, unfinished ones
start again and their TorchTrainer resumes from its last checkpoint (same run name and
storage); `--fresh` starts over.

Outputs (`<tune.out_dir>/<name>/`, by default `sweeps/shapes/`): `best_params.yaml` (the best
trial's swept keys + the `dvc exp run -S ...` line), `trials.csv` / `trials.md`, `sweep.png`,
`summary.json`; the same go to the parent MLflow run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from mrcnn.data import ShardDataset
from mrcnn.data.layout import MANIFEST
from mrcnn.data.storage import Location, exists, filesystem, is_url, join, read_text, write_text
from mrcnn.fileio import json_digest
from pipeline import cli, layout
from pipeline.paramfile import from_dict, load_params, load_section, to_dict
from pipeline.params import MlflowParams
from pipeline.search_space import dvc_set_args
from pipeline.sweep import report as sweep_report
from pipeline.sweep import tracking as sweep_tracking
from pipeline.sweep.config import Sweep, load_sweep, planned_iterations
from pipeline.sweep.records import COMPLETED, FAILED, STOPPED, best_trial, trial_records
from pipeline.sweep.trial import run_trial
from pipeline.tracking import active, store
from pipeline.tracking.store import TrackingError
from pipeline.train_params import TrainParams, TuneParams
from pipeline.training.driver import ClusterResourceError
from pipeline.training.runtime import check_state_api, init_ray

logger = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"  # in the Tune experiment dir: the sweep's identity + parent run id
DRIVER_MEMORY = 256 * 2**20  # bytes of Ray's `memory` resource held by a trial's driver
SEARCH_ALGS = {  # name -> (package to pip install, module, class, seed keyword)
    "optuna": ("optuna", "ray.tune.search.optuna", "OptunaSearch", "seed"),
    "hyperopt": ("hyperopt", "ray.tune.search.hyperopt", "HyperOptSearch", "random_state_seed"),
}


def run(
    tp: TuneParams,
    sweep: Sweep,
    mlflow_params: MlflowParams,
    *,
    storage: Location,
    out_dir: Path,
    params_doc: dict[str, Any] | None = None,
    fresh: bool = False,
    retry_failed: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the sweep; write the reports; return the summary.

    `storage`: the Tune storage, a folder (made absolute here) or a URL (s3://bucket/prefix)."""
    store.check_tracking_uri(sweep.tracking_uri)
    manifest = ShardDataset(join(sweep.shards, "train")).manifest  # fails early without shards
    storage = storage if is_url(storage) else Path(storage).resolve()
    exp_dir = join(storage, tp.name)
    identity = _identity(tp, sweep, manifest)
    if fresh and exists(exp_dir):
        logger.info("--fresh: removing the previous sweep %s", exp_dir)
        _remove_tree(exp_dir)
    state = _sweep_state(exp_dir, identity)
    init_ray()
    if tp.scheduler == "asha":
        check_state_api()

    start = time.time()
    with store.start_run(
        sweep.tracking_uri,
        mlflow_params.experiment,
        run_name=f"sweep-{tp.name}",
        run_id=state.get("parent_run_id"),
        tags={"stage": "tune", "sweep": tp.name},
    ) as parent:
        if state.get("parent_run_id") != parent.info.run_id:
            active.log_params(store.flatten({"tune": to_dict(tp)}))
            active.log_params(
                {f"space.{k}": json.dumps(v) for k, v in sweep.space.to_spec().items()}
            )
        state |= {"identity": identity, "parent_run_id": parent.info.run_id}
        write_text(join(exp_dir, SWEEP_FILE), json.dumps(state, indent=2))
        sweep = replace(
            sweep,
            experiment_id=parent.info.experiment_id,
            parent_run_id=parent.info.run_id,
            trainer_storage=str(join(exp_dir, "train")),
        )
        grid = _tuner(tp, sweep, storage, exp_dir, retry_failed).fit()
        records = trial_records(grid, sweep, tp.metric)
        wall = time.time() - start
        sweep_tracking.finish_trial_runs(records, sweep)
        best = best_trial(records, tp.metric, tp.mode)
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
    identity = {
        "tune": settings,
        "space": sweep.space.to_spec(),
        "sections": sweep.sections,
        "data": manifest.get("index"),
    }
    return json_digest(identity, length=12)


def _remove_tree(location: Location) -> None:
    if is_url(location):
        fs, path = filesystem(str(location))
        fs.rm(path, recursive=True)
    else:
        shutil.rmtree(location)


def _sweep_state(exp_dir: Location, identity: str) -> dict[str, Any]:
    try:
        state = json.loads(read_text(join(exp_dir, SWEEP_FILE)))
    except FileNotFoundError:
        return {}
    if state.get("identity") != identity:
        name, parent = str(exp_dir).rstrip("/").rsplit("/", 1)[::-1]
        raise ValueError(
            f"sweep {name} in {parent} was started with other params (tune, "
            "train, model or data); resume it with those, or start over with --fresh, or "
            "pick another --name"
        )
    logger.info("resuming sweep %s (MLflow run %s)", exp_dir, state.get("parent_run_id"))
    return state


def _tuner(tp: TuneParams, sweep: Sweep, storage: Location, exp_dir: Location, retry_failed: bool):
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
            storage_path=str(storage),
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
    ap = cli.parser("Ray Tune sweep over train/model params (tune).")
    ap.add_argument("--shards", default=str(layout.SHARDS), help="a folder or s3://bucket/prefix")
    ap.add_argument("--name", help="sweep name (default tune.name); the same name resumes")
    ap.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    ap.add_argument("--retry-failed", action="store_true", help="on resume, rerun failed trials")
    args = ap.parse_args(argv)
    errors = (TrackingError, ClusterResourceError)
    cli.run_main(args, lambda: _main(args), errors, "%(asctime)s %(name)s: %(message)s")


def _main(args: argparse.Namespace) -> None:
    root = layout.project_root(args.params)
    shards = args.shards if is_url(args.shards) else layout.under(root, args.shards).resolve()
    if not exists(join(shards, "train", MANIFEST)):
        raise FileNotFoundError(
            f"no shards in {join(shards, 'train')}: build them with `dvc repro shards` "
            "(`make sweep` does it first)"
        )
    manifest = ShardDataset(join(shards, "train")).manifest
    dataset = {
        "num_classes": manifest["num_classes"],
        "image_size": manifest["image_size"],
        "class_names": tuple(manifest["class_names"]),
    }
    tp, sweep = load_sweep(args.params, dataset, args.name)
    mlflow_params = load_section(args.params, "mlflow", MlflowParams)
    uri = store.tracking_uri(args.params, mlflow_params.tracking_uri)
    train_storage = from_dict(TrainParams, sweep.sections["train"], "train").storage_path
    storage = tp.storage_path or join(train_storage, "tune")
    sweep = replace(sweep, shards=str(shards), tracking_uri=uri)
    summary = run(
        tp,
        sweep,
        mlflow_params,
        storage=storage if is_url(storage) else layout.under(root, storage),
        out_dir=layout.under(root, tp.out_dir),
        params_doc=load_params(args.params),
        fresh=args.fresh,
        retry_failed=args.retry_failed,
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "trials"}, indent=2))


if __name__ == "__main__":
    main()
