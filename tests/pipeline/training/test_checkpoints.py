"""The checkpoint / resume protocol: what each rank writes (its manifest last), which checkpoint
a restarted run resumes from (Ray's registered one, or a newer complete one Ray never
registered; never a partial one: a file missing or cut, a rank's manifest missing), the
non-finite marker, and the parameters digest. Ray Train is the stand-in of
`fake_ray` (the real one: tests/pipeline/stages/test_train.py)."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.training import checkpoints as ck
from tests.pipeline.training.fake_ray import FakeRayTrain


def _state(iteration: int) -> dict:
    return {
        "model": {"w": torch.full((2, 3), float(iteration)), "n": torch.tensor(iteration)},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.5, "params": [0]}]},
        "scheduler": {"last_epoch": iteration},
        "iteration": iteration,
        "resumes": 0,
    }


def _report(ray: FakeRayTrain, iteration: int, ranks=(0,), digest: str | None = None) -> Path:
    """Every rank reports iteration `iteration` (each with its own RNG state: seeded by rank
    and iteration); the fake stores one directory per report, so the ranks' files are merged
    into the first one as Ray's storage would hold them."""
    paths = []
    for rank in ranks:
        torch.manual_seed(100 * iteration + rank)
        metrics = {"iteration": iteration}
        ck.report_checkpoint(_state(iteration), metrics, rank, digest, world=len(ranks))
        paths.append(ray.reports[-1][1])
    for extra in paths[1:]:
        for f in extra.iterdir():
            f.rename(paths[0] / f.name)
        extra.rmdir()
    return paths[0]


def _rng(iteration: int, rank: int) -> torch.Tensor:
    torch.manual_seed(100 * iteration + rank)
    return torch.get_rng_state()


def test_each_rank_writes_its_part(tmp_path, monkeypatch):
    """Rank 0 the training state, every rank its RNG state and the node it ran on (a run that
    lost a node shows where each checkpoint was trained); with a digest (the last iteration),
    every rank its digest too."""
    ray = FakeRayTrain(tmp_path / "run").install(monkeypatch)
    for rank in (0, 1):
        torch.manual_seed(300 + rank)
        ck.report_checkpoint(_state(3), {"iteration": 3}, rank)
    (_, zero), (_, one) = ray.reports
    assert sorted(p.name for p in zero.iterdir()) == [
        "manifest_rank0.json",
        "node_rank0.txt",
        "rng_rank0.pt",
        "state.pt",
    ]
    assert sorted(p.name for p in one.iterdir()) == [
        "manifest_rank1.json",
        "node_rank1.txt",
        "rng_rank1.pt",
    ]
    assert (zero / "node_rank0.txt").read_text() == "node-under-test"
    manifest = json.loads((zero / "manifest_rank0.json").read_text())
    assert manifest["world"] == 1 and sorted(manifest["files"]) == [
        "node_rank0.txt",
        "rng_rank0.pt",
        "state.pt",
    ]
    state = zero / "state.pt"
    assert manifest["files"]["state.pt"] == {
        "size": state.stat().st_size,
        "sha256": hashlib.sha256(state.read_bytes()).hexdigest(),
    }
    assert [m for m, _ in ray.reports] == [{"iteration": 3}, {"iteration": 3}]
    assert torch.equal(torch.load(one / "rng_rank1.pt", weights_only=True), _rng(3, 1))
    ck.report_checkpoint(_state(6), {"iteration": 6}, 1, "abc123")
    _, last = ray.reports[-1]
    assert sorted(p.name for p in last.iterdir()) == [
        "manifest_rank1.json",
        "node_rank1.txt",
        "rng_rank1.pt",
        "weights_rank1.sha256",
    ]
    assert (last / "weights_rank1.sha256").read_text() == "abc123"
    assert (last / "node_rank1.txt").read_text() == "node-under-test"


def test_state_round_trip(tmp_path, monkeypatch):
    ray = FakeRayTrain(tmp_path / "run").install(monkeypatch)
    path = _report(ray, 4)
    state = ck.load_state(path / ck.STATE_FILE)
    want = _state(4)
    assert state.keys() == want.keys()
    assert torch.equal(state["model"]["w"], want["model"]["w"])
    assert state["model"]["n"].item() == 4
    assert state["optimizer"] == want["optimizer"] and state["scheduler"] == {"last_epoch": 4}


def test_load_state_refuses_pickled_objects(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"iteration": 1, "payload": _Opaque()}, path)
    with pytest.raises(pickle.UnpicklingError):
        ck.load_state(path)


class _Opaque:
    pass


def test_nothing_to_resume_from(tmp_path, monkeypatch):
    FakeRayTrain(tmp_path / "run").install(monkeypatch)
    assert ck.resume_state(0) is None


def test_resume_from_the_registered_checkpoint_with_this_ranks_rng(tmp_path, monkeypatch):
    ray = FakeRayTrain(tmp_path / "run").install(monkeypatch)
    path = _report(ray, 3, ranks=(0, 1))
    ray.registered = path
    state = ck.resume_state(1)
    assert state["iteration"] == 3 and torch.equal(state["rng"], _rng(3, 1))
    assert torch.equal(ck.resume_state(0)["rng"], _rng(3, 0))
    assert "rng" not in ck.resume_state(2)  # a rank that was not there: fresh sampling


def test_a_newer_complete_checkpoint_ray_never_registered_is_taken(tmp_path, monkeypatch):
    """A worker that died just after `report` leaves its checkpoint on storage unregistered:
    it is newer than Ray's, so it is resumed from (those iterations are not lost)."""
    ray = FakeRayTrain(tmp_path / "run").install(monkeypatch)
    ray.registered = _report(ray, 3)
    newer = _report(ray, 6)
    assert newer.name > ray.registered.name
    state = ck.resume_state(0)
    assert state["iteration"] == 6 and torch.equal(state["rng"], _rng(6, 0))
    # Without any registered checkpoint (the first report never registered) too.
    ray.registered = None
    assert ck.resume_state(0)["iteration"] == 6


@pytest.mark.parametrize(
    "damage", ["no_state", "truncated_state", "no_rng", "no_manifest", "other_rank_missing"]
)
def test_a_partial_newer_checkpoint_is_skipped(tmp_path, monkeypatch, damage, caplog):
    """Half-persisted copies (a worker killed during its upload): the newest complete one
    wins, the registered one when no unregistered one is whole. A copy whose state.pt is whole
    but whose RNG state (or one rank's whole upload) never arrived still loads: only the
    manifests tell it apart (resuming from it would silently change the sampling)."""
    ray = FakeRayTrain(tmp_path / "run").install(monkeypatch)
    ray.registered = _report(ray, 3, ranks=(0, 1))
    complete = _report(ray, 6, ranks=(0, 1))
    partial = _report(ray, 9, ranks=(0, 1))
    state_file = partial / ck.STATE_FILE
    if damage == "no_state":
        state_file.unlink()
    elif damage == "truncated_state":
        state_file.write_bytes(state_file.read_bytes()[:100])
    elif damage == "no_rng":
        (partial / "rng_rank0.pt").unlink()
    elif damage == "no_manifest":
        (partial / "manifest_rank0.json").unlink()
    else:  # rank 1's upload never happened
        (partial / "rng_rank1.pt").unlink()
        (partial / "manifest_rank1.json").unlink()
    assert ck.resume_state(0)["iteration"] == 6
    assert f"skipping incomplete checkpoint {partial}" in caplog.text
    # The only newer one partial: back to the registered checkpoint.
    for f in complete.iterdir():
        f.unlink()
    complete.rmdir()
    assert ck.resume_state(1)["iteration"] == 3


def test_a_damaged_registered_checkpoint_falls_back_to_an_older_complete_one(
    tmp_path, monkeypatch, caplog
):
    ray = FakeRayTrain(tmp_path / "run").install(monkeypatch)
    _report(ray, 3)
    ray.registered = _report(ray, 6)
    state_file = ray.registered / ck.STATE_FILE
    damaged = bytearray(state_file.read_bytes())
    damaged[-30] ^= 0xFF  # same size, one byte flipped
    state_file.write_bytes(bytes(damaged))
    assert ck.resume_state(0)["iteration"] == 3
    assert "state.pt does not match its sha256" in caplog.text


def test_a_registered_checkpoint_from_before_manifests_is_taken(tmp_path, monkeypatch):
    """Written by an earlier version (no manifests): Ray registered it after every upload, so
    it is resumed from; an unregistered one without manifests cannot be checked and is not."""
    ray = FakeRayTrain(tmp_path / "run").install(monkeypatch)
    ray.registered = _report(ray, 3)
    newer = _report(ray, 6)
    for folder in (ray.registered, newer):
        (folder / "manifest_rank0.json").unlink()
    assert ck.resume_state(0)["iteration"] == 3


def test_checkpoints_older_than_the_registered_one_are_not_taken(tmp_path, monkeypatch):
    ray = FakeRayTrain(tmp_path / "run").install(monkeypatch)
    _report(ray, 3)
    ray.registered = _report(ray, 6)
    (tmp_path / "run" / "not_a_checkpoint").mkdir()
    assert ck.resume_state(0)["iteration"] == 6


def test_non_finite_marker_round_trip(tmp_path, monkeypatch):
    FakeRayTrain(tmp_path / "run").install(monkeypatch)
    ck.raise_if_nonfinite(tmp_path / "run")  # no marker: nothing to say
    ck.write_run_file(ck.NONFINITE_FILE, {"iteration": 7, "losses": {"loss_box": 0.25}})
    assert json.loads((tmp_path / "run" / ck.NONFINITE_FILE).read_text()) == {
        "iteration": 7,
        "losses": {"loss_box": 0.25},
    }
    with pytest.raises(ck.NonFiniteLossError) as e:
        ck.raise_if_nonfinite(tmp_path / "run")
    message = str(e.value)
    assert "non-finite loss at iteration 7" in message and "'loss_box': 0.25" in message
    assert str(tmp_path / "run") in message and "train.lr" in message


def test_parameters_digest_covers_parameters_not_buffers():
    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))

    a, b = make(), make()
    assert ck.parameters_digest(a) == ck.parameters_digest(b)
    assert len(ck.parameters_digest(a)) == 64
    b[1].running_mean += 1.0  # each rank's own statistics: not compared
    assert ck.parameters_digest(a) == ck.parameters_digest(b)
    with torch.no_grad():
        b[0].bias[2] += 1e-6
    assert ck.parameters_digest(a) != ck.parameters_digest(b)
    c = make()
    c[0].weight.data = c[0].weight.data.t().contiguous().t()  # same values, other strides
    assert ck.parameters_digest(a) == ck.parameters_digest(c)
