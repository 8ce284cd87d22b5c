"""MLflow helpers every stage uses: where the tracking store is, whether it answers, and runs.

    uri = tracking_uri("params.yaml", params.tracking_uri)   # sqlite:///mlflow.db -> absolute
    check_tracking_uri(uri)                                    # clear error, before any work
    locate("params.yaml", params)                              # Tracking: uri, experiment, ...
    with start_run(uri, "mrcnn", run_name="train", run_id=resume_id) as run:
        mlflow.log_params(flatten(model_section, prefix="model."))

The default store is an SQLite file in the project root (`mlflow.db`): a real database, so it
also holds the model registry. Artifacts of experiments created here go to `mlartifacts/` in
the project root unless `mlflow.artifact_location` says otherwise (an http tracking server keeps
its own default).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.layout import project_root
from pipeline.params import MlflowParams
from pipeline.tracking import login

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# MLflow 3.17 accepts 6000 characters per param value, older servers only 500; values are cut at
# 500 so the same params log to either.
MAX_PARAM_LENGTH = 500
_DB_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433}


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message says which and how to fix it."""


@dataclass(frozen=True)
class Tracking:
    """Where a stage logs: the tracking store `uri` (relative paths resolved), the
    `experiment`, and where experiments created here keep their artifacts (None: the store
    decides). Part of a stage's paths; `locate` builds it from the `mlflow` section."""

    uri: str
    experiment: str = "mrcnn"
    artifact_location: str | None = None


def locate(params_path: str | Path, params: MlflowParams) -> Tracking:
    """The `mlflow` section of the params file at `params_path` -> `Tracking`."""
    uri = tracking_uri(params_path, params.tracking_uri)
    location = default_artifact_location(params_path, uri, params)
    return Tracking(uri, params.experiment, location)


def tracking_uri(params_path: str | Path, uri: str) -> str:
    """Resolve a tracking URI from params.yaml: relative sqlite / file paths are taken from the
    project root (so every stage, whatever its working directory, uses the same store);
    anything else (http(s)://, postgresql://, databricks, absolute paths) is returned as is.

    >>> tracking_uri("/proj/params.yaml", "sqlite:///mlflow.db")
    'sqlite:////proj/mlflow.db'
    """
    root = project_root(params_path)
    uri = uri.strip()
    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///") :]
        if rest.startswith("/") or rest.startswith(":memory:") or not rest:
            return uri
        return "sqlite:///" + str((root / rest).resolve())
    if uri.startswith("file:"):
        parsed = urllib.parse.urlparse(uri)
        if parsed.path.startswith("/"):
            return uri
        return (root / parsed.path).resolve().as_uri()
    if "://" not in uri and uri != "databricks" and not uri.startswith("databricks"):
        return (root / uri).resolve().as_uri()  # a bare folder: MLflow's file store
    return uri


def default_artifact_location(
    params_path: str | Path, uri: str, params: MlflowParams
) -> str | None:
    """Artifact location for experiments this project creates (None: the server decides)."""
    if params.artifact_location:
        loc = params.artifact_location
        if "://" in loc or loc.startswith("/"):
            return loc
        return str((project_root(params_path) / loc).resolve())
    if uri.startswith(("sqlite:", "file:")):
        return str(project_root(params_path) / "mlartifacts" / _folder_name(params.experiment))
    return None


def _folder_name(experiment: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("_") or "default"


def _beside_database(uri: str, experiment: str) -> str | None:
    """For an SQLite store: `mlartifacts/<experiment>` in the database's folder (the project
    root with the default URI), rather than MLflow's `./mlruns` of the working directory."""
    path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
    if not path.startswith("/"):
        return None
    return str(Path(path).parent / "mlartifacts" / _folder_name(experiment))


def redact(uri: str) -> str:
    """The URI without a password (for messages and logs)."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.password is None:
        return uri
    netloc = f"{parsed.username}:***@{parsed.hostname}" + (f":{parsed.port}" if parsed.port else "")
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))


def check_tracking_uri(uri: str, timeout_s: float = 5) -> None:
    """Fail fast, with a message saying how to fix it, when the tracking store is unusable.

    http(s): a GET to `/health` (then the experiments API) must answer within `timeout_s`.
    sqlite / file: the database file or folder must be creatable and writable.
    postgresql / mysql / mssql: the database host must accept a TCP connection.
    Anything else (e.g. databricks) is not checked.
    """
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme in ("http", "https"):
        _check_http(uri, timeout_s)
    elif scheme == "sqlite":
        path = uri[len("sqlite:///") :]
        if path and not path.startswith(":memory:"):
            _check_writable_file(Path(path), uri)
    elif scheme == "file":
        _check_writable_dir(Path(urllib.parse.urlparse(uri).path), uri)
    elif "://" not in uri and scheme not in ("databricks", "databricks-uc"):
        _check_writable_dir(Path(uri), uri)
    elif scheme in _DB_PORTS:
        _check_tcp(uri, _DB_PORTS[scheme], timeout_s)


_FIX = (
    "Start the server (see docs/mlflow.md) or set mlflow.tracking_uri in params.yaml "
    f"(default {DEFAULT_TRACKING_URI}, an SQLite file in the project)."
)


def _check_http(uri: str, timeout_s: float) -> None:
    """`/health` says the server is up; the experiments API, asked with the credentials MLflow
    will send, says whether the login is accepted (401: no login or a wrong one)."""
    base = uri.rstrip("/")
    headers = _login_header()
    healthy = False
    last = ""
    for endpoint in ("/health", "/api/2.0/mlflow/experiments/search?max_results=1"):
        try:
            request = urllib.request.Request(base + endpoint, headers=headers)
            with urllib.request.urlopen(request, timeout=timeout_s) as r:
                if r.status < 400 and endpoint != "/health":
                    return
                healthy = r.status < 400
        except urllib.error.HTTPError as e:
            if e.code == 401:
                raise TrackingError(_login_refused(uri, bool(headers))) from None
            if e.code == 403 or healthy:  # signed in; each experiment's permission is its own
                return
            last = f"HTTP {e.code} from {endpoint.split('?')[0]}"
            if e.code >= 500:
                break
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(
                f"MLflow tracking server {redact(uri)} is not reachable ({reason}). {_FIX}"
            ) from None
    raise TrackingError(
        f"{redact(uri)} does not answer as an MLflow tracking server ({last}). {_FIX}"
    )


def _login_header() -> dict[str, str]:
    """The Authorization header MLflow's client sends: basic auth from
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, else MLFLOW_TRACKING_TOKEN."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME", "")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    if user and password:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN", "")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _login_refused(uri: str, sent: bool) -> str:
    """The one line for a 401: which login was refused (the user name, never the password)."""
    if not sent:
        return (
            f"MLflow tracking server {redact(uri)} needs a login (HTTP 401): set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in "
            "the environment, not in params.yaml"
        )
    user = os.environ.get("MLFLOW_TRACKING_USERNAME", "")
    who = f"user '{user}'" if user and os.environ.get("MLFLOW_TRACKING_PASSWORD") else "the token"
    return (
        f"MLflow tracking server {redact(uri)} refused the login of {who} (HTTP 401): check "
        "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
    )


def _check_writable_file(path: Path, uri: str) -> None:
    if path.exists():
        if not path.is_file():
            raise TrackingError(f"tracking store {uri}: {path} exists but is not a file. {_FIX}")
        if not os.access(path, os.R_OK | os.W_OK):
            raise TrackingError(f"tracking store {uri}: {path} is not writable. {_FIX}")
    _check_writable_dir(path.parent, uri, what="its folder ")


def _check_writable_dir(path: Path, uri: str, what: str = "") -> None:
    # The nearest existing ancestor decides: MLflow creates missing folders for a file store,
    # SQLite does not create the database's folder.
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise TrackingError(f"tracking store {uri}: {what}{probe} is not a folder. {_FIX}")
    if what and probe != path:
        raise TrackingError(f"tracking store {uri}: {what}{path} does not exist. {_FIX}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise TrackingError(f"tracking store {uri}: {what}{probe} is not writable. {_FIX}")


def _check_tcp(uri: str, default_port: int, timeout_s: float) -> None:
    parsed = urllib.parse.urlsplit(uri)
    host = parsed.hostname
    if not host:  # e.g. a unix socket: let the driver report
        return
    port = parsed.port or default_port
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as e:
        raise TrackingError(
            f"tracking database {redact(uri)} is not reachable at {host}:{port} ({e}). {_FIX}"
        ) from None


def flatten(
    d: Mapping[str, Any], prefix: str = "", max_len: int = MAX_PARAM_LENGTH
) -> dict[str, str]:
    """Nested params -> `{"a.b.c": "value"}` for `mlflow.log_params`.

    Strings stay as they are, everything else is JSON (`true`, `0.5`, `[8, 16]`, `null`);
    dataclasses are flattened like dicts. Values longer than `max_len` are cut and end in "...".
    """
    if dataclasses.is_dataclass(d) and not isinstance(d, type):
        d = dataclasses.asdict(d)
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}.", max_len))
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if len(text) > max_len:
            text = text[: max_len - 3] + "..."
        out[name] = text
    return out


# The MLflow UI (3.x) opens an experiment by its kind: without this tag it may guess GenAI
# (traces, token usage) instead of runs, charts and models.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def ensure_experiment(name: str, artifact_location: str | None = None) -> str:
    """The id of experiment `name` in the current tracking store, created if missing, tagged as
    a model-training experiment (`EXPERIMENT_KIND`)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            try:
                return mlflow.create_experiment(
                    name, artifact_location=artifact_location, tags=EXPERIMENT_KIND
                )
            except MlflowException as e:  # created meanwhile by another process
                if e.error_code == "PERMISSION_DENIED":
                    raise
                exp = mlflow.get_experiment_by_name(name)
                if exp is None:
                    raise
    except MlflowException as e:
        if e.error_code != "PERMISSION_DENIED":
            raise
        raise TrackingError(login.experiment_denied(name)) from None
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment '{name}' is deleted; restore it (`mlflow experiments restore "
            f"--experiment-id {exp.experiment_id}`) or set mlflow.experiment in params.yaml"
        )
    for key, value in EXPERIMENT_KIND.items():  # experiments made before the tag, or by others
        if key not in exp.tags:
            # A login that may log runs but not edit the experiment leaves it as it is.
            with contextlib.suppress(MlflowException):
                mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def run_exists(run_id: str) -> bool:
    """Whether `run_id` is an active (not deleted) run in the current tracking store."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        return False
    return run.info.lifecycle_stage == "active"


@contextmanager
def start_run(
    uri: str,
    experiment: str,
    run_name: str | None = None,
    run_id: str | None = None,
    nested: bool = False,
    tags: Mapping[str, str] | None = None,
    artifact_location: str | None = None,
) -> Iterator[Any]:
    """Set the tracking URI and experiment, then resume `run_id` if the store has it, else start
    a new run (named `run_name`). Yields the `mlflow.ActiveRun`; `tags` are set either way.

    `artifact_location` applies only when the experiment is created here; by default (None) an
    SQLite store keeps artifacts in `mlartifacts/<experiment>` beside the database, any other
    store where its server decides.
    """
    import mlflow

    mlflow.set_tracking_uri(uri)
    location = artifact_location or _beside_database(uri, experiment)
    experiment_id = ensure_experiment(experiment, location)
    if run_id and run_exists(run_id):
        # MLflow refuses to resume a run outside the process's active experiment (one that an
        # earlier `mlflow.set_experiment` left behind): make the run's own experiment active.
        run_experiment = mlflow.MlflowClient().get_run(run_id).info.experiment_id
        mlflow.set_experiment(experiment_id=run_experiment)
        ctx = mlflow.start_run(run_id=run_id, nested=nested)
        log.info("resuming MLflow run %s", run_id)
    else:
        if run_id:
            log.warning("MLflow run %s is not in %s; starting a new run", run_id, redact(uri))
        ctx = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, nested=nested)
    with ctx as run:
        if tags:
            mlflow.set_tags(dict(tags))
        yield run


def end_run(uri: str, run_id: str, status: str, error: str = "", prefix: str = "train") -> None:
    """End run `run_id` honestly: tag `<prefix>.status` = `status` ("finished" or "failed", with
    `<prefix>.error` for a failure) and mark the run FINISHED or FAILED. Never raises (it runs
    while another error is on its way up); a store that cannot be reached is logged."""
    from mlflow import MlflowClient

    try:
        client = MlflowClient(uri)
        client.set_tag(run_id, f"{prefix}.status", status)
        if error:
            client.set_tag(run_id, f"{prefix}.error", error[:5000])
        client.set_terminated(run_id, "FINISHED" if status == "finished" else "FAILED")
    except Exception as e:  # noqa: BLE001 (the original error matters more)
        log.warning("could not mark MLflow run %s %s: %s", run_id, status, e)


def dvc_experiment() -> str:
    """The DVC experiment being run (`dvc exp run` sets DVC_EXP_NAME for its commands), or ""."""
    return os.environ.get("DVC_EXP_NAME", "")
