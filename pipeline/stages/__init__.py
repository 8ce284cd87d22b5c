"""The DVC stages: each a thin CLI (paths from dvc.yaml's `cmd`, its params sections) over one
library call. A stage never imports another stage; `python -m pipeline.<stage>` runs it."""
