"""Nothing is lost when a worker dies: the train stage under Ray Train (`max_failures`), its
only worker SIGKILLed after a checkpoint, in the middle of uploading the next one, ends with
the same weights, Adam moments and EMA, tensor by tensor (`torch.equal`, CPU), and logs the
same loss at every step, to the last bit, as the same run never interrupted. The checkpoint
whose upload was cut (a truncated state.pt on local storage; state.pt whole but the RNG state
and the manifest missing in S3, which would still load) is skipped for the complete one
before it."""

from __future__ import annotations

import io
from pathlib import Path

import mlflow
import pytest
import torch

from mrcnn.data import storage
from pipeline.params import Params
from pipeline.stages import train
from pipeline.stages.train import TrainPaths
from pipeline.tracking.store import Tracking
from pipeline.train_params import TrainParams
from pipeline.training.checkpoint_files import STATE_FILE, manifest_name
from tests.pipeline.tiny_model import TINY_MODEL

# ray_s3: one Ray for the file whose workers reach the S3 server (local storage works too)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_s3")]

ITERATIONS = 6
LOSSES = ("loss", "loss_rpn_objectness", "loss_rpn_box", "loss_classifier", "loss_box", "loss_mask")


def _train(root: Path, shards: Path, storage_path: str) -> tuple[dict, str]:
    """6 iterations, a checkpoint every 2, every step logged, an EMA, one restart allowed."""
    params = TrainParams(
        num_workers=1,
        cpus_per_worker=1,
        batch_size=2,
        reference_batch=2,
        iterations=ITERATIONS,
        checkpoint_every=2,
        log_every=1,
        warmup_iters=1,
        max_gt=8,
        ema_decay=0.9,
        max_failures=1,
        run_name="exact",
        storage_path=storage_path,
    )
    uri = f"sqlite:///{root}/mlflow.db"
    paths = TrainPaths(
        shards=shards,
        model_dir=root / "models/final",
        metrics=root / "metrics/train.json",
        run_info=root / "metrics/train_run.json",
        reports=root / "reports/train",
        storage=storage_path,
        tracking=Tracking(uri, "e"),
    )
    model = {"preset": "shapes_small", **TINY_MODEL}
    return train.run(Params(train=params, model=model), paths), uri


def _latest(summary: dict) -> str:
    """The run's last checkpoint: a folder, or (Ray names it without the scheme) an S3 URL."""
    path = summary["latest_checkpoint"]
    return path if Path(path).is_dir() else f"s3://{path}"


def _final_state(summary: dict) -> dict:
    data = storage.read_bytes(storage.join(_latest(summary), STATE_FILE))
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _losses(uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every logged value of every loss term, (step, value), repeats included."""
    client = mlflow.MlflowClient(uri)
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, f"train/{key}"))
        for key in LOSSES
    }


def _flat(tree, prefix: str = "") -> dict:
    if torch.is_tensor(tree):
        return {prefix: tree}
    if not isinstance(tree, (dict, list, tuple)):
        return {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    return {k: v for key, sub in items for k, v in _flat(sub, f"{prefix}/{key}").items()}


@pytest.fixture(scope="module")
def reference(tiny_shards, tmp_path_factory, fault_file) -> dict:
    """The run never interrupted: its last state and its per-step losses."""
    root = tmp_path_factory.mktemp("uninterrupted")
    summary, uri = _train(root, tiny_shards, str(root / "runs"))
    assert summary["resumes"] == 0 and summary["iterations"] == ITERATIONS
    losses = _losses(uri, summary["mlflow_run_id"])
    assert [s for s, _ in losses["loss"]] == list(range(1, ITERATIONS + 1))
    return {"state": _final_state(summary), "losses": {k: dict(v) for k, v in losses.items()}}


def _assert_exact(summary: dict, uri: str, reference: dict, twice: list[int]) -> None:
    """Resumed once; weights, Adam moments and EMA equal to the reference's, bit for bit; every
    step logged, the steps in `twice` (trained before the kill and again after the resume)
    twice, each value equal to the reference's."""
    assert summary["resumes"] == 1 and summary["iterations"] == ITERATIONS
    state, want = _final_state(summary), reference["state"]
    assert state["iteration"] == ITERATIONS and state["ema"]["updates"] == ITERATIONS
    for part in ("model", "optimizer", "ema", "scheduler"):
        ours, theirs = _flat(state[part]), _flat(want[part])
        assert ours.keys() == theirs.keys(), part
        unequal = [k for k, v in theirs.items() if not torch.equal(ours[k], v)]
        assert not unequal, f"{part}: {unequal[:5]}"
    assert state["scheduler"] == want["scheduler"]
    for key, logged in _losses(uri, summary["mlflow_run_id"]).items():
        steps = [s for s, _ in logged]
        assert sorted(set(steps)) == list(range(1, ITERATIONS + 1)), key
        assert sorted(s for s in set(steps) if steps.count(s) == 2) == twice, key
        assert all(v == reference["losses"][key][s] for s, v in logged), key


@pytest.mark.parametrize(
    ("where", "fraction"),
    [
        ("local", 0.5),  # a truncated state.pt on disk
        ("s3", 1.0),  # state.pt whole in the bucket, the RNG state and manifest never sent
    ],
)
def test_a_checkpoint_whose_upload_was_cut_is_skipped(
    reference, tiny_shards, tmp_path, inject_fault, request, where, fraction
):
    """A worker killed after a checkpoint resumes exactly, and never from a partial one: the
    only worker dies uploading the checkpoint of iteration 4 (after steps 3 and 4 were
    logged); Ray Train restarts it (`max_failures: 1`), it finds that partial folder, newest on
    storage, skips it and resumes from the checkpoint of iteration 2: steps 3 and 4 are
    trained twice, and the run ends exactly as the uninterrupted one."""
    if where == "s3":
        storage_path = f"{request.getfixturevalue('s3_bucket')}/runs"
    else:
        storage_path = str(tmp_path / "runs")
    marker = tmp_path / "cut"
    cut = {"rank": 0, "iteration": 4, "file": STATE_FILE, "fraction": fraction}
    inject_fault({"cut_upload": {**cut, "marker": str(marker)}})
    summary, uri = _train(tmp_path, tiny_shards, storage_path)
    assert marker.read_text() == f"killed while uploading {STATE_FILE}\n"
    _assert_exact(summary, uri, reference, twice=[3, 4])

    # The partial folder is still on storage, as the cut left it.
    run_dir = storage.join(storage_path, summary["run_name"])
    folders = _checkpoint_folders(run_dir)
    partial = [f for f in folders if not storage.exists(storage.join(f, manifest_name(0)))]
    assert len(partial) == 1, folders
    complete = storage.read_bytes(storage.join(_latest(summary), STATE_FILE))
    if fraction < 1:
        cut_state = storage.read_bytes(storage.join(partial[0], STATE_FILE))
        assert 0 < len(cut_state) < len(complete)
    else:
        assert storage.exists(storage.join(partial[0], STATE_FILE))
        assert not storage.exists(storage.join(partial[0], "rng_rank0.pt"))


def _checkpoint_folders(run_dir) -> list:
    """The checkpoint folders in a run's storage (beside them: Ray's snapshot file)."""
    if storage.is_url(run_dir):
        fs, path = storage.filesystem(str(run_dir))
        listed = fs.ls(path, detail=True, refresh=True)
        names = [i["name"].rsplit("/", 1)[-1] for i in listed if i["type"] == "directory"]
    else:
        names = [p.name for p in Path(run_dir).iterdir() if p.is_dir()]
    return [storage.join(run_dir, n) for n in sorted(names) if n.startswith("checkpoint_")]
