"""The DVC stages: each a thin CLI (paths from dvc.yaml's `cmd`, its params sections) over
`run(params: Params, paths: <Stage>Paths) -> dict`. A stage never imports another stage;
`python -m pipeline.<stage>` runs it."""
