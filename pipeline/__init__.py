"""The experiment pipeline around `mrcnn`: DVC stages, Ray Train / Tune, MLflow.

layout.py    every project path, once          params.py   params.yaml -> typed sections
paramfile.py the YAML file <-> section machinery  cli.py      what every stage's main shares
stages/      download shards inspect train evaluate export (`python -m pipeline.<stage>`)
training/    Ray Train driver, worker loop, checkpoints, Ray start-up, periodic validation
sweep/       Ray Tune sweeps (`python -m pipeline.tune`)
tracking/    MLflow store, registry, the registered model's pyfunc
reporting/   figures and tables under reports/
predict.py ui.py fetch.py    user tools and the downloader (not stages)
"""
