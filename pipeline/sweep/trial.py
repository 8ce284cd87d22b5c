"""One trial of a sweep: Tune's driver function, which starts a Ray Train run of its config."""

from __future__ import annotations

import logging
from typing import Any

from pipeline.sweep import tracking as sweep_tracking
from pipeline.sweep.config import Sweep
from pipeline.training import driver


def run_trial(config: dict[str, Any], sweep: Sweep) -> None:
    """Tune's driver function: one training run of the sampled `config`."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    trial_id = ray.tune.get_context().get_trial_id()
    values = sweep.space.decode(config)
    run_id = sweep_tracking.trial_run(sweep, trial_id, values)
    try:
        params, cfg = sweep.trial_params(values)  # an impossible combination raises here
        sweep_tracking.log_trial_params(sweep, run_id, params, cfg)
        config = driver.loop_config(params, cfg, sweep.shards, sweep.tracking_uri, run_id)
        result = driver.fit(
            config,
            params,
            f"trial-{trial_id}",
            sweep.trainer_storage,  # a folder or a URL
            callbacks=[TuneReportCallback()],
        )
        if result.error is not None:
            raise result.error
    except Exception as e:
        sweep_tracking.fail_trial(sweep, run_id, e)
        raise
