"""MLflow runs of a sweep's trials: each nested under the sweep's run (tag
`mlflow.parentRunId`), found again after a restart by its `trial_id` tag. Plain values in and
out; what a sweep puts in them is `pipeline.sweep.tracking`'s business.

    run_id = trial_run(uri, experiment_id, parent_id, "a1b2", "sweep-a1b2", tags, sampled)
    log_params(uri, run_id, flat_params)        # the trial's full params, once they are valid
    trial_runs(uri, experiment_id, parent_id)   # {trial id: run id}, after the sweep
    end_run(uri, run_id, "FINISHED", {"tune.status": "completed"}, {"train/summary/AP": 0.4}, 30)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

MAX_PARAMS_PER_BATCH = 100  # MLflow's limit for one log_batch


def _parent_filter(parent_run_id: str) -> str:
    return f"tags.`mlflow.parentRunId` = '{parent_run_id}'"


def trial_run(
    uri: str,
    experiment_id: str,
    parent_run_id: str,
    trial_id: str,
    run_name: str,
    tags: Mapping[str, str],
    sampled: Mapping[str, str],
    clear: Sequence[str] = (),
) -> str:
    """The run of trial `trial_id` under the parent -> its id: found again after a restart
    (given `tags`, its tags named in `clear` removed, RUNNING again if it had ended), else
    created with `tags` and the `sampled` values as params."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.search_runs(
        [experiment_id],
        filter_string=f"{_parent_filter(parent_run_id)} and tags.trial_id = '{trial_id}'",
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
        for key in clear:
            if key in found[0].data.tags:
                client.delete_tag(run_id, key)
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        if found[0].info.status != "RUNNING":  # e.g. FAILED by the attempt that raised
            client.update_run(run_id, status="RUNNING")
        return run_id
    run = client.create_run(
        experiment_id,
        run_name=run_name,
        tags={"mlflow.parentRunId": parent_run_id, "trial_id": trial_id, **tags},
    )
    log_params(uri, run.info.run_id, sampled)
    return run.info.run_id


def log_params(uri: str, run_id: str, params: Mapping[str, str]) -> None:
    """Params of run `run_id`, in batches MLflow accepts."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    client = MlflowClient(uri)
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i : i + MAX_PARAMS_PER_BATCH])


def trial_runs(uri: str, experiment_id: str, parent_run_id: str) -> dict[str, str]:
    """{trial id: run id} of every run nested under the parent."""
    from mlflow import MlflowClient

    runs = MlflowClient(uri).search_runs(
        [experiment_id], filter_string=_parent_filter(parent_run_id), max_results=10000
    )
    return {r.data.tags.get("trial_id"): r.info.run_id for r in runs}


def end_run(
    uri: str,
    run_id: str,
    status: str,
    tags: Mapping[str, str],
    metrics: Mapping[str, float] | None = None,
    step: int = 0,
) -> None:
    """Set `tags`, log `metrics` at `step`, then end run `run_id` with MLflow `status`
    (FINISHED, KILLED or FAILED)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    for key, value in (metrics or {}).items():
        client.log_metric(run_id, key, value, step=step)
    client.set_terminated(run_id, status)
