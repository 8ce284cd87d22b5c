"""pipeline.ui: the MLflow UI command binds 127.0.0.1 and reads the project's store."""

from __future__ import annotations

from pathlib import Path

from pipeline.ui import build_command


def test_ui_command_for_the_sqlite_store(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("mlflow:\n  tracking_uri: sqlite:///mlflow.db\n")
    argv = build_command(params, port=5123)
    assert argv[1:4] == ["-m", "mlflow", "ui"]
    assert (
        argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    )
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "5123"


def test_ui_for_a_tracking_server_is_the_server(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("mlflow:\n  tracking_uri: http://127.0.0.1:5999\n")
    assert build_command(params) == []
