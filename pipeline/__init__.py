"""The experiment pipeline around `mrcnn`: DVC stages, Ray Train / Tune, MLflow.

layout.py    every project path, once          params.py   params.yaml -> typed sections, Params
paramfile.py the YAML file <-> section machinery  train_params.py  the train and tune sections
search_space.py  the tune.space grammar        device.py   the device a params value names
cli.py       what every stage's main shares
stages/      download shards inspect train evaluate export (`python -m pipeline.<stage>`):
             each `run(params, paths) -> dict`
training/    Ray Train driver, worker loop, checkpoints, Ray start-up, periodic validation
sweep/       Ray Tune sweeps (`python -m pipeline.tune`)
tracking/    every MLflow call: store, active run, training and trial runs, registry, pyfunc
reporting/   figures and tables under reports/
predict.py ui.py fetch.py    user tools and the downloader (not stages)
"""
