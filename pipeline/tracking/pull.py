"""Reading the model registry for `pipeline.predict`: which version a `models:/` URI names, and
downloading that version's files (only those asked for).

    where = use_store(uri)                                    # redacted, for messages
    version = registered_version("mrcnn-shapes", "champion", None, where)
    mlmodel = download(f"models:/mrcnn-shapes/{version}/MLmodel", workdir)
"""

from __future__ import annotations

from pathlib import Path

from pipeline.tracking import login
from pipeline.tracking.store import TrackingError, redact

HOW_TO_CREATE = (
    "Create one with `dvc repro` (train, evaluate, export) or `python -m pipeline.export` "
    "after training."
)


class ModelNotFoundError(LookupError):
    """`--model` names nothing loadable; the message lists what exists and how to create it."""

    def __str__(self) -> str:  # LookupError's default repr-quotes the message
        return str(self.args[0]) if self.args else ""


def use_store(uri: str | None) -> str:
    """Make `uri` the process's tracking store (None: MLflow's own default, e.g.
    MLFLOW_TRACKING_URI) -> the store's URI without its password, for messages."""
    import mlflow

    if uri:
        mlflow.set_tracking_uri(uri)
    return redact(mlflow.get_tracking_uri())


def download(artifact_uri: str, workdir: Path) -> Path:
    """A registered model's file or folder (`models:/NAME/VERSION/<path>`) into `workdir` -> its
    local path."""
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(artifact_uri, dst_path=str(workdir)))


def registered_version(name: str, alias: str | None, version: str | None, where: str) -> str:
    """The version `models:/NAME@ALIAS` / `NAME/VERSION` / `NAME/latest` names, or a
    `ModelNotFoundError` listing what the registry has (a `TrackingError` when the login may
    not read the model)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        registered = client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code == "PERMISSION_DENIED":  # a server with --auth: no READ on the model
            raise TrackingError(login.model_denied(name, where)) from None
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        names = [m.name for m in client.search_registered_models(max_results=50)]
        listing = ", ".join(names) if names else "none"
        raise ModelNotFoundError(
            f"no registered model '{name}' in {where} (registered models: {listing}). "
            + HOW_TO_CREATE
        ) from None
    aliases = {a: str(v) for a, v in registered.aliases.items()}
    if alias is not None:
        if alias not in aliases:
            listing = ", ".join(f"@{a} -> v{v}" for a, v in sorted(aliases.items())) or "none"
            raise ModelNotFoundError(
                f"registered model '{name}' has no alias '{alias}' (aliases: {listing}). "
                + HOW_TO_CREATE
            )
        return aliases[alias]
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    if version in (None, "latest"):
        if not versions:
            raise ModelNotFoundError(f"registered model '{name}' has no versions")
        return str(versions[-1])
    if not version.isdigit() or int(version) not in versions:
        raise ModelNotFoundError(
            f"registered model '{name}' has no version {version!r} (versions: "
            f"{', '.join(map(str, versions)) or 'none'})"
        )
    return version
