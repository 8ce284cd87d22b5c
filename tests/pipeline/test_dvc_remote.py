"""A DVC remote in S3 (the dvc-s3 plugin) against the test S3 server: `dvc remote add -d store
s3://...`, `dvc push` of shards and a model, and `dvc pull` into an emptied checkout gives back
the same bytes. Credentials and endpoint come from the environment, as in docs/cluster.md."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipeline.registry_helpers import save_model, tiny_model


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _dvc(repo: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
    )
    assert done.returncode == 0, f"dvc {' '.join(args)}: {done.stdout[-1500:]}{done.stderr[-1500:]}"
    return done.stdout


@pytest.mark.slow
def test_dvc_push_and_pull_shards_and_model_through_s3(tiny_shards, s3_bucket, s3_server, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    shutil.copytree(tiny_shards, repo / "data" / "shards")
    save_model(tiny_model(seed=1), repo / "models" / "final")
    before = {d: _digests(repo / d) for d in ("data/shards", "models/final")}
    assert len(before["data/shards"]) > 8  # tars, records, index, manifest of both splits

    _dvc(repo, "add", "data/shards", "models/final")
    _dvc(repo, "remote", "add", "-d", "store", f"{s3_bucket}/dvcstore")
    _dvc(repo, "push")
    listed = s3_server.client().list_objects_v2(Bucket=s3_bucket.removeprefix("s3://"))
    keys = [o["Key"] for o in listed.get("Contents", [])]
    assert all(k.startswith("dvcstore/files/md5/") for k in keys)
    # One object per distinct file, plus one `.dir` listing per tracked folder.
    distinct = {h for files in before.values() for h in files.values()}
    assert sum(k.endswith(".dir") for k in keys) == 2
    assert len(keys) - 2 == len(distinct)

    # A fresh machine: no workspace copies, no cache; only git's .dvc files and the remote.
    shutil.rmtree(repo / "data" / "shards")
    shutil.rmtree(repo / "models" / "final")
    shutil.rmtree(repo / ".dvc" / "cache")
    _dvc(repo, "pull")
    after = {d: _digests(repo / d) for d in ("data/shards", "models/final")}
    assert after == before
    assert "in sync" in _dvc(repo, "status", "--cloud")
