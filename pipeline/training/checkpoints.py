"""The checkpoint / resume protocol of a training run.

A checkpoint is a directory that every rank reports together through `ray.train.report` (a
barrier): rank 0 writes `state.pt` (model, optimizer, scheduler, iteration, resume count; the
EMA (`ema`), the loss window since the last log step (`loss_window`), the patience state, the
training seconds and why the run stopped, if it did), each rank its RNG state `rng_rank<r>.pt`
and the Ray node it ran on, `node_rank<r>.txt` (a run that lost a node shows where each
stretch of it trained), on the last iteration a digest of its parameters
`weights_rank<r>.sha256` (DDP keeps them equal; the tests compare them) and of its EMA's
(`ema_rank<r>.sha256`), and last its manifest `manifest_rank<r>.json`
(`pipeline.training.checkpoint_files`). Ray Train merges them into one directory under the
run's storage; a run started again with the same name resumes from the newest complete one
(`resume_state`), so it continues exactly where that checkpoint was taken: same weights,
optimizer, schedule, EMA, sampling RNG, data position and loss window as a run never
interrupted (tests/pipeline/stages/test_train_resume.py compares them bit for bit).

What the driver must learn without a checkpoint (a non-finite loss) travels as a JSON file in
the run directory (`write_run_file`): Ray Train V2's `Result.metrics` only holds the metrics of
the latest checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from pipeline.training import checkpoint_files
from pipeline.training.checkpoint_files import STATE_FILE, has_manifest, incomplete, write_manifest

logger = logging.getLogger(__name__)

NONFINITE_FILE = "nonfinite.json"  # rank 0 writes it into the run directory on a NaN/inf loss


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the run stopped before using it."""


def report_checkpoint(
    state: dict[str, Any],
    metrics: dict[str, Any],
    rank: int,
    digest: str | None = None,
    ema_digest: str | None = None,
    world: int = 1,
) -> None:
    """Every rank reports (a barrier); rank 0 writes the weights, each rank its RNG state (and
    on the last one a digest of its parameters, and of its EMA's when it keeps one), then its
    manifest; each rank uploads its own files, manifest last (`checkpoint_files.upload`)."""
    import ray
    import ray.train

    with tempfile.TemporaryDirectory() as d:
        if rank == 0:
            torch.save(state, Path(d) / STATE_FILE)
        torch.save(torch.get_rng_state(), Path(d) / f"rng_rank{rank}.pt")
        if ema_digest:
            (Path(d) / f"ema_rank{rank}.sha256").write_text(ema_digest)
        if digest:
            (Path(d) / f"weights_rank{rank}.sha256").write_text(digest)
        node = ray.get_runtime_context().get_node_id()  # where this rank trained up to here
        (Path(d) / f"node_rank{rank}.txt").write_text(node)
        write_manifest(Path(d), rank, world)
        checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=checkpoint, **_uploader(rank, metrics["iteration"]))


def _uploader(rank: int, iteration: int) -> dict[str, Any]:
    """`ray.train.report`'s keyword for our upload (`checkpoint_upload_fn`, in Ray Train V2
    since late 2025; tested with 2.60); an older Ray uploads the files itself, in its own
    order, without the tests' upload faults (the manifests still tell a partial folder)."""
    import inspect

    import ray.train

    if "checkpoint_upload_fn" not in inspect.signature(ray.train.report).parameters:
        return {}

    def upload(checkpoint: Any, name: str) -> Any:
        storage = ray.train.get_context().get_storage()
        fs, dest = storage.storage_filesystem, f"{storage.experiment_fs_path}/{name}"
        checkpoint_files.upload(Path(checkpoint.path), fs, dest, rank, iteration)
        return ray.train.Checkpoint(dest, filesystem=fs)

    return {"checkpoint_upload_fn": upload}


def resume_state(rank: int) -> dict[str, Any] | None:
    """The training state to resume from (with this rank's RNG state under "rng"), or None:
    the newest *complete* checkpoint of the run (`checkpoint_files.incomplete`), a partial one
    skipped with a warning.

    Usually that is Ray's latest registered checkpoint. But the Ray Train controller collects
    the workers' reports every 2 s (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S), so a worker that dies
    just after `report` leaves a complete checkpoint on storage that Ray never registered; a
    newer such folder is used instead of losing those iterations, on local storage and in
    object storage alike (listed through Ray's own pyarrow filesystem of the run). Every rank
    checks the same folders and so picks the same one."""
    import ray.train

    registered = ray.train.get_checkpoint()
    name = Path(registered.path).name if registered is not None else None
    for candidate in _checkpoints_newest_first(registered):
        with candidate.as_directory() as d:
            folder = Path(d)
            trusted = Path(candidate.path).name == name and not has_manifest(folder)
            problem = None if trusted else incomplete(folder)  # trusted: from before manifests
            if problem is None:
                return _read_checkpoint(folder, rank)
        logger.warning("skipping incomplete checkpoint %s: %s", candidate.path, problem)
    return None


def _checkpoints_newest_first(registered: Any) -> list:
    """The run's `ray.train.Checkpoint`s on storage, newest first by name (Ray stamps names
    with the time), `registered` among them; only `registered` where the run's storage cannot
    be listed."""
    import pyarrow.fs
    import ray.train

    try:  # a DeveloperAPI of Ray Train: without it, only the registered checkpoint is used
        storage = ray.train.get_context().get_storage()
        fs, experiment = storage.storage_filesystem, storage.experiment_fs_path
    except AttributeError:
        return [registered] if registered is not None else []
    infos = fs.get_file_info(pyarrow.fs.FileSelector(experiment, allow_not_found=True))
    found = {
        i.base_name: ray.train.Checkpoint(i.path, filesystem=fs)
        for i in infos
        if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith("checkpoint_")
    }
    if registered is not None:
        found[Path(registered.path).name] = registered
    return [found[k] for k in sorted(found, reverse=True)]


def _read_checkpoint(d: Path, rank: int) -> dict[str, Any]:
    state = load_state(d / STATE_FILE)
    rng = d / f"rng_rank{rank}.pt"
    if rng.exists():
        state["rng"] = torch.load(rng, weights_only=True)
    return state


def load_state(path: Path) -> dict[str, Any]:
    """A training checkpoint (tensors and plain values only: loaded with weights_only=True)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def write_run_file(name: str, data: dict[str, Any]) -> None:
    """A JSON file in this run's Ray Train storage directory (local or remote)."""
    import ray.train

    storage = ray.train.get_context().get_storage()
    path = f"{storage.experiment_fs_path}/{name}"
    with storage.storage_filesystem.open_output_stream(path) as f:
        f.write(json.dumps(data).encode())


def raise_if_nonfinite(run_dir: Path | str) -> None:
    """Raise `NonFiniteLossError` when a worker wrote the non-finite marker of `run_dir` (a
    folder or a URL)."""
    from mrcnn.data import storage

    try:
        info = json.loads(storage.read_text(storage.join(run_dir, NONFINITE_FILE)))
    except FileNotFoundError:
        return
    raise NonFiniteLossError(
        f"non-finite loss at iteration {info['iteration']}: {info['losses']}; training stopped, "
        f"the last good checkpoint is kept in {run_dir} (lower train.lr, raise "
        "train.warmup_iters or set train.grad_clip)"
    )


def parameters_digest(model: torch.nn.Module) -> str:
    """sha256 of every learnable parameter. (BatchNorm's running statistics are buffers that
    each rank updates from its own images, so they are left out.)"""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode() + p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
