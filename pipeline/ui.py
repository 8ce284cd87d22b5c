"""`make ui`: the MLflow UI over the project's tracking store, on 127.0.0.1 unless told otherwise.

    python -m pipeline.ui --params params.yaml [--port 5000] [--host 127.0.0.1]

Runs `mlflow ui --backend-store-uri <mlflow.tracking_uri>` (the SQLite file in the project by
default): runs, their metric curves and pictures, and the model registry. When the tracking URI
is an http(s) server, that server already is the UI; this prints its address instead.

The address to open is logged (`start_url`): the experiment's runs in MLflow's "Model training"
mode. MLflow 3's UI starts a new browser in its GenAI mode (traces, token usage, no model
registry in the sidebar) until the page is opened with `?workflowType=machine_learning` or
"Model training" is picked at the top of the sidebar (the browser remembers the choice).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pipeline.paramfile import load_section
from pipeline.params import MlflowParams
from pipeline.tracking.store import check_tracking_uri, project_root, redact, tracking_uri
from pipeline.tracking.training import find_experiment

log = logging.getLogger(__name__)


def build_command(
    params_path: str | Path, host: str = "127.0.0.1", port: int = 5000, workers: int = 1
) -> list[str]:
    """argv of the `mlflow ui` process for the store in params.yaml; [] for an http(s) store.
    One worker process by default: one person's browser needs no more, and MLflow's default
    four each import MLflow (a 2-core machine answers after ~40 s instead of ~15 s)."""
    params = load_section(params_path, "mlflow", MlflowParams)
    uri = tracking_uri(params_path, params.tracking_uri)
    if uri.startswith(("http://", "https://")):
        return []
    check_tracking_uri(uri)
    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        # Only for experiments created from the UI; ours carry their own artifact location.
        "--default-artifact-root",
        str(project_root(params_path) / "mlartifacts"),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


# MLflow 3's UI mode for model training (runs, metric charts, model registry) instead of GenAI.
MODEL_TRAINING = "workflowType=machine_learning"


def start_url(base: str, experiment_id: str | None = None) -> str:
    """The page to open on the UI at `base` (http://host:port): the runs of `experiment_id`
    (the experiment list without one) in "Model training" mode."""
    page = f"experiments/{experiment_id}" if experiment_id else "experiments"
    return f"{base.rstrip('/')}/#/{page}?{MODEL_TRAINING}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml", help="default: %(default)s")
    parser.add_argument("--host", default="127.0.0.1", help="default: %(default)s (local only)")
    parser.add_argument("--port", type=int, default=5000, help="default: %(default)s")
    parser.add_argument("--workers", type=int, default=1, help="default: %(default)s")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv_ui = build_command(args.params, args.host, args.port, args.workers)
    if not argv_ui:
        uri = load_section(args.params, "mlflow", MlflowParams).tracking_uri
        print(
            "mlflow.tracking_uri is a tracking server; its UI is the server itself: "
            + start_url(redact(uri))
        )
        return
    params = load_section(args.params, "mlflow", MlflowParams)
    experiment = find_experiment(tracking_uri(args.params, params.tracking_uri), params.experiment)
    url = start_url(f"http://{args.host}:{args.port}", experiment)
    log.info("MLflow UI: open %s (Ctrl-C stops it)", url)
    os.execv(argv_ui[0], argv_ui)


if __name__ == "__main__":
    main()
