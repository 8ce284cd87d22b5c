"""Stage `export`: log the trained model to MLflow, register it, move `champion` on improvement.

    python -m pipeline.export [--params params.yaml] [--model DIR] [--out DIR] ...

1. Reads the final model (`mrcnn.weights.save` format), `metrics/eval.json` and, if present,
   `metrics/train_run.json` (its `mlflow_run_id` is the run the model is logged into; without
   it, or when the store has no such run, a new run named "export" is started and the log says
   so).
2. Logs the model without pickle and registers a new version of `export.registered_model`,
   with a description (data, preset, AP) and a few tags (`pipeline.tracking.registry`). Weights
   already registered (same sha256) are not registered again: that version gets the new
   metrics and the aliases. `export.register: false` (and, by default, `dvc exp run`) logs
   the model to its run without registering it.
3. Moves alias `champion` to the version only when its `export.champion_metric` (default
   `segm.AP`) is strictly greater than the current champion's and above
   `export.champion_floor` (also for the first version); otherwise it gets `challenger`.
4. With `export.portable: true`, writes `models/export/model.onnx`, the whole inference graph
   (`mrcnn.export.to_onnx`), checks it against eager PyTorch on up to 8 val images (the shards'
   val split; seeded images when there is none) and logs it to the run; a file whose
   detections do not match is removed and the export fails. The registered model carries the
   checked file too (artifact `onnx`), and runs it when `export.pyfunc_backend` is onnxruntime
   (or openvino: the same file on OpenVINO, fp32).
   A model without a mask head gets no file (the graph outputs masks): a warning, and
   `export.json` says `"portable": {"skipped": ...}`.
5. With `export.int8: true`, quantises model.onnx with `export.int8_toolchain` to
   `models/export/model_int8.xml` + `.bin` (openvino) or `model_int8.onnx` (onnxruntime),
   measures its and fp32's AP on the val shards and their speed, and refuses it past
   `export.int8_max_ap_drop` (`pipeline.int8_export`); export.json's `int8` section says so.
   The toolchain's packages (and openvino for `export.pyfunc_backend: openvino`) are checked
   first, before any other work.
6. Writes `models/export/export.json`: version, alias, URIs, metric, decision.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrcnn.data.layout import MANIFEST, SPLITS, annotation_file
from mrcnn.fileio import file_digest, write_json_atomic
from pipeline import cli, layout
from pipeline.params import Params, load
from pipeline.serve_params import ExportParams
from pipeline.tracking import active, registry, store
from pipeline.tracking.store import Tracking

log = logging.getLogger(__name__)

PORTABLE_FILE = "model.onnx"
CHECK_IMAGES = 8  # val images the ONNX file is checked on


@dataclass(frozen=True)
class ExportPaths:
    """What export reads and writes."""

    model_dir: Path
    eval_metrics: Path
    train_run: Path  # train_run.json: the MLflow run of the training
    train_metrics: Path
    out_dir: Path
    tracking: Tracking  # the MLflow store (and its registry) and experiment
    params_file: Path | None = None  # its shards / model / train sections: provenance tag
    manifests: tuple[tuple[str, Path], ...] = ()  # (split, manifest.json)
    annotations: Path | None = None  # the original val annotations (export.int8 AP)


@dataclass(frozen=True)
class Trained:
    """What export reads about the trained model: its metrics, training run and heads."""

    model: Any  # the `MaskRCNN` of paths.model_dir
    heads: Any  # its `pipeline.tracking.pyfunc.Heads`
    evals: dict[str, Any]  # eval.json
    value: float  # eval.json's export.champion_metric
    train_run: dict[str, Any]  # train_run.json ({} without one)
    train: dict[str, Any]  # train.json ({} without one)


def run(params: Params, paths: ExportPaths) -> dict[str, Any]:
    """Log, register and alias the model (`export` section) -> what `export.json` holds."""
    p = params.export
    check_runtimes(p)
    trained = read_trained(paths, p)
    sha256, tags, description = describe(trained, paths, p)
    register, register_why = registry.should_register(p.register)
    train_run_id = trained.train_run.get("mlflow_run_id")
    t = paths.tracking
    with store.start_run(
        t.uri,
        t.experiment,
        run_name="export",
        run_id=train_run_id,
        artifact_location=t.artifact_location,
    ) as logged:
        run_id = logged.info.run_id
        into_training_run = run_id == train_run_id
        if not into_training_run:
            why = (
                f"training run {train_run_id} is not in the store" if train_run_id else "no run id"
            )
            log.warning("logging the model into a new run %s (%s)", run_id, why)
        portable, onnx_file = write_portable(trained, paths, p, run_id, tags)
        int8 = write_int8(onnx_file, paths, p, tags)
        name = p.registered_model
        version, new_version, logged_uri, alias, previous = publish(
            trained, paths, p, (sha256, tags, description), onnx_file, register, int8_file(int8)
        )
        if version is None:
            log.info("not registered: %s", register_why)
            active.set_tags({"export.registered": f"no: {register_why}"})
    result = {
        "registered_model": name,
        "registered": version is not None,
        "why": register_why,
        "new_version": new_version,
        "version": int(version) if version is not None else None,
        "alias": alias,
        "model_uri": f"models:/{name}/{version}" if version else None,
        "alias_uri": f"models:/{name}@{alias}" if alias else None,
        "logged_model_uri": logged_uri,
        "run_id": run_id,
        "logged_into_training_run": into_training_run,
        "tracking_uri": store.redact(t.uri),
        "metric": {"name": p.champion_metric, "value": trained.value},
        "previous_champion": previous,
        "portable": portable,
        "int8": int8,
        "tags": tags,
        "description": description,
    }
    write_json_atomic(paths.out_dir / "export.json", result)
    if version is not None:
        log.info(
            "%s version %s is %s (%s = %.4f; previous champion %s)",
            *(name, version, alias, p.champion_metric, trained.value, previous),
        )
    return result


def publish(
    trained: Trained,
    paths: ExportPaths,
    p: ExportParams,
    version_info: tuple[str, dict[str, str], str],
    onnx_file: Path | None,
    register: bool,
    int8_file: Path | None = None,
) -> tuple[str | None, bool, str | None, str | None, dict[str, Any] | None]:
    """Into the active run: log the model unless these weights (sha256) are registered already,
    register a new version (when `register`) or update the existing one, move the alias ->
    (version, new_version, logged model URI, alias, previous champion); version None when not
    registered."""
    sha256, tags, description = version_info
    name = p.registered_model
    version = registry.find_version(name, sha256) if register else None
    new_version = register and version is None
    logged_uri = None
    if version is None:  # weights not registered yet (or not registering): log them
        logged_uri = registry.log_model(
            paths.model_dir,
            heads=trained.heads,
            onnx_file=onnx_file,
            backend=p.pyfunc_backend,
            int8_file=int8_file,
        ).model_uri
    if new_version:
        version = registry.register(name, logged_uri, tags, description)
    elif version is not None:
        log.info("these weights are %s version %s already: aliases only", name, version)
        registry.update_version(name, version, tags, description)
    if version is None:
        return None, new_version, logged_uri, None, None
    alias, previous = registry.assign_alias(
        name, version, p.champion_metric, trained.value, p.champion_floor
    )
    active.set_tags(
        {"export.registered_model": name, "export.version": version, "export.alias": alias}
    )
    return version, new_version, logged_uri, alias, previous


def read_trained(paths: ExportPaths, p: ExportParams) -> Trained:
    """The model and its metrics; refuses an onnxruntime pyfunc for heads the graph lacks."""
    from mrcnn import weights
    from pipeline.tracking import pyfunc

    evals = read_json(paths.eval_metrics, "run `python -m pipeline.evaluate` (or `dvc repro`)")
    value = registry.metric_value(evals, p.champion_metric, paths.eval_metrics)
    train_run = read_json(paths.train_run) if paths.train_run.is_file() else {}
    train = read_json(paths.train_metrics) if paths.train_metrics.is_file() else {}
    if not train_run:
        log.warning("%s not found: the model gets a run of its own", paths.train_run)
    # Fails early, with a clear message, on a bad folder; NCHW: the layout the graph traces.
    model = weights.load(paths.model_dir, channels_last=False)
    heads = pyfunc.model_heads(model)
    if p.pyfunc_backend != "torch" and heads != pyfunc.Heads():
        raise registry.ExportError(
            f"export.pyfunc_backend: {p.pyfunc_backend} serves boxes and masks only, and this "
            f"model has {heads}: set export.pyfunc_backend: torch"
        )
    return Trained(model, heads, evals, value, train_run, train)


def describe(
    trained: Trained, paths: ExportPaths, p: ExportParams
) -> tuple[str, dict[str, str], str]:
    """(sha256 of the weights, the version's tags, its description). The preset is the one
    training recorded in the model's config.json (none for a model saved before it did)."""
    from mrcnn import weights

    sha256 = file_digest(paths.model_dir / weights.WEIGHTS_FILE)
    info = {
        "data": trained.train_run.get("data_source", ""),
        "preset": str(weights.read_meta(paths.model_dir).get("preset", "")),
        "train.run": trained.train_run.get("run_name", ""),
        "train.iterations": str(trained.train.get("iterations", "")),
        registry.WEIGHTS_TAG: sha256,
    }
    tags = registry.version_tags(
        trained.evals, p.champion_metric, info, paths.manifests, paths.params_file
    )
    return sha256, tags, registry.describe(trained.evals, info, paths.manifests)


def write_portable(
    trained: Trained, paths: ExportPaths, p: ExportParams, run_id: str, tags: dict[str, str]
) -> tuple[dict[str, Any] | None, Path | None]:
    """With `export.portable`: the checked ONNX file, logged to the run (its checks added to
    `tags`) -> (what export.json says of it, the file); (None, None) without."""
    from mrcnn import export as portable_export

    (paths.out_dir / PORTABLE_FILE).unlink(missing_ok=True)  # never leave a stale file
    heads = trained.heads
    if not p.portable:
        return None, None
    if not heads.masks:
        why = "the graph outputs masks and this model has no mask head"
        log.warning("export.portable: %s not written: %s", PORTABLE_FILE, why)
        return {"skipped": why}, None
    portable = portable_export.export_portable(
        trained.model, paths.out_dir / PORTABLE_FILE, val_images(paths.manifests, CHECK_IMAGES)
    )
    onnx_file = Path(portable["file"])
    portable["sha256"] = file_digest(onnx_file)
    portable["heads_not_in_graph"] = [
        name
        for name, present in (
            ("keypoints", heads.keypoints > 0),
            ("mask_scores", heads.mask_scores),
        )
        if present
    ]
    if portable["heads_not_in_graph"]:
        log.warning(
            "%s holds boxes, scores, labels and masks only: this model's %s are not in "
            "it (the torch backend serves them)",
            PORTABLE_FILE,
            " and ".join(portable["heads_not_in_graph"]),
        )
    active.log_artifact(onnx_file, artifact_path="portable")
    tags["portable.onnx"] = f"runs:/{run_id}/portable/{PORTABLE_FILE}"
    tags["portable.check"] = portable["checked"]
    if portable["matched_fraction"] is not None:
        tags["portable.matched_fraction"] = f"{portable['matched_fraction']:.4f}"
        tags["portable.max_box_diff"] = f"{portable['max_box_diff']:.3g}"
    return portable, onnx_file


def write_int8(
    onnx_file: Path | None, paths: ExportPaths, p: ExportParams, tags: dict[str, str]
) -> dict[str, Any] | None:
    """With `export.int8`: `pipeline.int8_export.write_int8` beside the checked ONNX file (its
    verdict added to `tags`) -> export.json's `int8` section; None without."""
    from pipeline import int8_export

    int8_export.remove_int8(paths.out_dir)
    if not p.int8:
        return None
    if onnx_file is None:
        log.warning("export.int8: no %s to quantise (see portable)", PORTABLE_FILE)
        return {"skipped": f"no {PORTABLE_FILE}"}
    shards = paths.manifests[0][1].parent.parent if paths.manifests else paths.out_dir
    section = int8_export.write_int8(
        onnx_file, paths.out_dir, shards, paths.annotations or Path("-"), p
    )
    tags["int8.accepted"] = str(section["accepted"]).lower()
    for t in ("bbox", "segm"):
        tags[f"int8.{t}_AP"] = f"{section[f'{t}_AP']:.4f}"
    return section


def check_runtimes(p: ExportParams) -> None:
    """`ExportError` (one line: what is missing, how to install it or what to switch to) when
    `export.int8_toolchain`'s packages (with `export.int8`) or openvino (with
    `export.pyfunc_backend: openvino`: the logged model pins the version it was exported with)
    are not installed."""
    from mrcnn.export.int8 import check_toolchain
    from mrcnn.export.openvino_model import INSTALL, OpenVinoMissingError, missing_packages

    if p.pyfunc_backend == "openvino" and missing_packages(("openvino",)):
        raise registry.ExportError(
            f"export.pyfunc_backend: openvino needs openvino, not installed here: {INSTALL} "
            "(or set export.pyfunc_backend: onnxruntime)"
        )
    if not p.int8:
        return
    try:
        check_toolchain(p.int8_toolchain)
    except OpenVinoMissingError as e:
        raise registry.ExportError(
            f"export.int8_toolchain: {e} (or set export.int8_toolchain: onnxruntime)"
        ) from None


def int8_file(section: dict[str, Any] | None) -> Path | None:
    """The int8 model to log with the model (an `.onnx`, or an OpenVINO IR `.xml` with its
    `.bin` beside it): only one that `write_int8` accepted."""
    return Path(section["file"]) if section and section.get("accepted") else None


def val_images(manifests: tuple[tuple[str, Path], ...], limit: int) -> list | None:
    """Up to `limit` val images (uint8 H x W x 3, the real image inside each padded frame), or
    None when there are no val shards."""
    from mrcnn.data.shards import ShardDataset

    for split, manifest in manifests:
        if split == "val" and manifest.is_file():
            ds = ShardDataset(manifest.parent)
            out = []
            for i in range(min(limit, len(ds))):
                sample = ds[i]
                y1, x1, y2, x2 = (int(v) for v in sample.window)
                out.append(sample.image[y1:y2, x1:x2])
            return out or None
    return None


def read_json(path: Path, how_to_create: str = "") -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist" + (f"; {how_to_create}" if how_to_create else "")
        )
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    cli.run_main(args, lambda: run(*inputs(args)), (registry.ExportError, store.TrackingError))


def parser() -> argparse.ArgumentParser:
    ap = cli.parser(__doc__)
    ap.add_argument("--model", type=Path, default=layout.MODEL)
    ap.add_argument("--eval-metrics", type=Path, default=layout.EVAL_METRICS)
    ap.add_argument("--train-metrics", type=Path, default=layout.TRAIN_METRICS)
    ap.add_argument("--train-run", type=Path, default=layout.TRAIN_RUN)
    ap.add_argument("--shards", type=Path, default=layout.SHARDS)
    ap.add_argument("--out", type=Path, default=layout.EXPORT)
    return ap


def inputs(args: argparse.Namespace) -> tuple[Params, ExportPaths]:
    """The params file and the command line's paths (relative ones from the project root); the
    tracking store is checked here, before any work."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    params = load(args.params)
    root = layout.project_root(args.params)
    shards = layout.under(root, args.shards)
    tracking = store.locate(args.params, params.mlflow)
    store.check_tracking_uri(tracking.uri)
    return params, ExportPaths(
        model_dir=layout.under(root, args.model),
        eval_metrics=layout.under(root, args.eval_metrics),
        train_run=layout.under(root, args.train_run),
        train_metrics=layout.under(root, args.train_metrics),
        out_dir=layout.under(root, args.out),
        tracking=tracking,
        params_file=Path(args.params).resolve(),
        manifests=tuple((s, shards / s / MANIFEST) for s in SPLITS),
        annotations=annotation_file(layout.raw_dir(root, params.data.source), "val"),
    )


if __name__ == "__main__":
    main()
