"""The MLflow login of a process, and what a refusal tells the user.

MLflow's client signs every request to a tracking server started with `--auth` with the login
in its environment: `MLFLOW_TRACKING_USERNAME` + `MLFLOW_TRACKING_PASSWORD` (basic auth), or
`MLFLOW_TRACKING_TOKEN`. It reads them at each request, so a process that sets them (a Ray
worker given the driver's login, `use`) signs its next request with them.

    login = current()            # the driver: {"MLFLOW_TRACKING_USERNAME": "bob", ...}
    use(login)                   # a Ray worker, before it opens the run (never on its argv)
    experiment_denied("team")    # "bob may not use MLflow experiment 'team' (HTTP 403): ..."

The password never goes on a command line, into params or tags, or into a message: messages
name the user only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def current() -> dict[str, str]:
    """This process's login: those of `VARIABLES` that are set and not empty ({} for none)."""
    return {k: os.environ[k] for k in VARIABLES if os.environ.get(k)}


def use(login: Mapping[str, str]) -> None:
    """Sign this process's MLflow requests with `login` (`current()` of another process):
    exactly its variables, any other login of this environment removed. An empty `login`
    changes nothing (a Ray node may have a login of its own in its environment)."""
    if not login:
        return
    for key in VARIABLES:
        if login.get(key):
            os.environ[key] = login[key]
        else:
            os.environ.pop(key, None)


def who() -> str:
    """The login for messages: the user name, "the token", or "this login" (no password)."""
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        return os.environ["MLFLOW_TRACKING_USERNAME"]
    return "the token" if os.environ.get("MLFLOW_TRACKING_TOKEN") else "this login"


def experiment_denied(name: str) -> str:
    """The one line for a 403 on experiment `name`."""
    return (
        f"{who()} may not use MLflow experiment '{name}' (HTTP 403): ask an admin of the "
        "server for EDIT on it (docs/cluster.md), or set mlflow.experiment in params.yaml"
    )


def model_denied(name: str, where: str) -> str:
    """The one line for a 403 on registered model `name` of the server `where` (redacted)."""
    return (
        f"{who()} may not read registered model '{name}' of {where} (HTTP 403): ask its owner "
        "or an admin of the server for READ on it and on the experiment it was logged in "
        "(docs/cluster.md)"
    )
