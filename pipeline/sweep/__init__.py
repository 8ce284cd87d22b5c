"""Ray Tune sweeps over the training recipe (`python -m pipeline.tune`): the entry (`entry`),
a sweep's definition (`config`; its search space is `pipeline.search_space`), one trial
(`trial`), the trials' outcomes (`records`), the reports (`report`) and the MLflow side
(`tracking`)."""
