"""Every project path, once.

dvc.yaml writes these paths into each stage's `cmd` (as DVC's example-get-started does) and
into its `deps` / `outs`; a stage run by hand (`python -m pipeline.train`) takes the same ones
as its argument defaults from here. `tests/test_layout.py` checks that dvc.yaml's `vars`
block and this module agree, so the two cannot drift.

Naming convention (the pipeline's nouns, one shape each):
    raw folder      data/raw/<data.source>/{train,val}/ + annotations/instances_{split}.json
    shards          data/shards/<split>/: tar shards, index, manifest.json, report.json
    manifest        the JSON beside a split's shards (`mrcnn.data.ShardDataset.manifest`)
    class map       {label: ClassInfo(category_id, name)}, read by `mrcnn.data.read_class_map`
    run             one training run: Ray Train storage `<train.storage_path>/<run name>/` and
                    one MLflow run (`metrics/train_run.json` says which)
    checkpoint      a directory Ray Train registered: state.pt + rng_rank<r>.pt
    model folder    `mrcnn.weights.save` output: model.safetensors + config.json (the config,
                    the preset it came from, the class map: `mrcnn.weights.read_meta`)
"""

from __future__ import annotations

from pathlib import Path

from mrcnn.data.storage import is_url

PARAMS = Path("params.yaml")
RAW = Path("data/raw")  # + /<data.source>
DOWNLOADS = Path("data/downloads")
SHARDS = Path("data/shards")  # + /{train,val}
MODEL = Path("models/final")
EXPORT = Path("models/export")
TRAIN_METRICS = Path("metrics/train.json")
TRAIN_RUN = Path("metrics/train_run.json")  # not metrics: run name, MLflow run id, checkpoint
EVAL_METRICS = Path("metrics/eval.json")  # COCOeval's AP only: what experiments compare
EVAL_ERRORS = Path("metrics/eval_errors.json")  # TIDE's dAP per error type
INSPECT_REPORTS = Path("reports/inspect")
TRAIN_REPORTS = Path("reports/train")
EVAL_REPORTS = Path("reports/evaluate")

# The names dvc.yaml's `vars: - paths:` block uses for the paths above.
DVC_VARS = {
    "raw": RAW,
    "downloads": DOWNLOADS,
    "shards": SHARDS,
    "model": MODEL,
    "export": EXPORT,
    "train_metrics": TRAIN_METRICS,
    "train_run": TRAIN_RUN,
    "eval_metrics": EVAL_METRICS,
    "eval_errors": EVAL_ERRORS,
    "inspect_reports": INSPECT_REPORTS,
    "train_reports": TRAIN_REPORTS,
    "eval_reports": EVAL_REPORTS,
}


PROJECT_MARKER = "dvc.yaml"  # what makes a folder a project root


def project_root(params_path: str | Path, cwd: str | Path | None = None) -> Path:
    """The folder every relative path is taken from, one rule for every stage and tool:

    1. the project (the nearest folder holding `dvc.yaml`) the params file is in, e.g.
       `configs/finetune.yaml` -> the checkout;
    2. else the project the working directory is in: a params file kept elsewhere
       (`--params ~/experiments/own.yaml`) run from anywhere inside the checkout writes to the
       checkout's `data/`, `models/` and `mlflow.db`, not beside itself;
    3. else (no project anywhere) the params file's folder.
    """
    here = Path.cwd() if cwd is None else Path(cwd)
    params_dir = Path(params_path).resolve().parent
    for start in (params_dir, here.resolve()):
        for folder in (start, *start.parents):
            if (folder / PROJECT_MARKER).is_file():
                return folder
    return params_dir


def under(root: str | Path, path: str | Path) -> Path:
    """`path` from params.yaml or the command line, absolute: relative paths are taken from the
    project root (`project_root`; not the working directory, which differs on Ray workers)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else Path(root).resolve() / path


def place(root: str | Path, location: str | Path) -> Path | str:
    """A folder or an object-store URL (`s3://bucket/prefix`): URLs as they are, folders
    `under(root, ...)`."""
    return location if is_url(location) else under(root, location)


def raw_dir(root: str | Path, source: str) -> Path:
    """The raw COCO-layout folder of a data source."""
    return under(root, RAW / source)
