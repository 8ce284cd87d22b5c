"""`predict`: run a registered (or local) model on image files -> overlays + COCO results.

    python -m pipeline.predict --model models:/mrcnn-shapes@champion --input photos/ a.jpg \\
        --out predictions/

`--model` is `models:/NAME@ALIAS`, `models:/NAME/VERSION` (or `/latest`), pulled from the
registry of `mlflow.tracking_uri` in params.yaml; or a local folder, either in
`mrcnn.weights.save` format (config.json + model.safetensors, e.g. `models/final`) or a
downloaded MLflow model (with its `MLmodel` file). From the registry only the weights folder is
downloaded and `mrcnn.weights.load` rebuilds the model: the same weights and code the pyfunc
uses, without MLflow's per-call DataFrame round trip.

`--input` takes files and folders (searched recursively for .jpg .jpeg .png .bmp .webp .tif
.tiff; 8/16-bit, gray, RGBA and palette images are converted to RGB, EXIF orientation is
applied so phone photos come out upright). Writes into `--out`:
    overlays/<input tree>/<stem>.png   each image with its detections drawn (`mrcnn.visualize`),
                          mirroring the input folders (`photos/a/x.jpg` -> `photos/a/x.png`)
    results.json          COCO results: [{"image_id", "file_name", "category_id",
                          "bbox": [x, y, w, h], "score", "segmentation": RLE}, ...]
    images.json           the model used, every image (id, file_name, path, size, detections,
                          tiled), the files skipped and why, and whether the run completed
`image_id` numbers the inputs 1..N in the order listed (folders sorted). `category_id` is the
model's label unless the saved model's config.json holds a `class_map` (label -> category id).

Nothing done is lost: a file that cannot be read is reported (log, summary line, images.json)
and skipped (`--strict` stops at the first one instead), and whatever ends the run (an error,
Ctrl-C), results.json and images.json are written with what was done (`"complete": false`).

Large images: `--tile 1024 --tile-overlap 0.2` runs the model on overlapping tiles of the
original pixels and merges them (`mrcnn.tiling`); by default images whose longer side is 3x the
model input or more are tiled at the model's input size (`--tile 0` turns tiling off).

Registry models use the tracking URI from `--tracking-uri`, else `MLFLOW_TRACKING_URI`, else
`mlflow.tracking_uri` of `--params`; with none of these predict says where it looked (it never
creates an empty store).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

from mrcnn.images import ImageReadError, read_image
from pipeline.params import MlflowParams, PredictParams, load_section
from pipeline.prediction_outputs import ImageInput, PredictionWriter, collect_inputs
from pipeline.training.runtime import resolve_device

log = logging.getLogger(__name__)

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))?/?$")
HOW_TO_CREATE = (
    "Create one with `dvc repro` (train, evaluate, export) or `python -m pipeline.export` "
    "after training."
)


class ModelNotFoundError(LookupError):
    """`--model` names nothing loadable; the message lists what exists and how to create it."""

    def __str__(self) -> str:  # LookupError's default repr-quotes the message
        return str(self.args[0]) if self.args else ""


def run(
    model: str,
    inputs: list[Path],
    out_dir: Path,
    params: PredictParams,
    *,
    tracking_uri: str | None = None,
    strict: bool = False,
    tile: int | None = None,
    tile_overlap: float = 0.2,
    skip_bad: bool | None = None,
) -> dict[str, Any]:
    """Predict on every image of `inputs`; returns what `images.json` holds.

    strict:   stop at the first unreadable file (default: report it and go on)
    tile:     None: tile images >= 3x the model input (at the input size); 0: never; N: tile
              every image larger than N px at N px
    skip_bad: accepted for old callers; skipping is the default now (see `strict`)
    """
    from mrcnn import weights

    del skip_bad
    files = collect_inputs(inputs)
    with tempfile.TemporaryDirectory(prefix="mrcnn-model-") as tmp:
        weights_dir, source = resolve_model(model, tracking_uri, Path(tmp))
        net = weights.load(weights_dir, resolve_device(params.device, "predict.device"))
        class_map = read_class_map(weights_dir, net.num_classes)
    if params.score_thresh >= 0:
        net.roi_heads.score_thresh = params.score_thresh
    state = PredictionWriter(out_dir, net, class_map, source)
    progress = tqdm(total=len(files), desc="predict", unit="img", disable=None)
    try:
        pending: list[tuple[int, ImageInput, np.ndarray]] = []
        for image_id, item in enumerate(files, 1):
            try:
                image = read_image(item.path, orient=True)
            except ImageReadError as e:
                state.skip(item, e)
                if strict:
                    state.finish_batch(pending)
                    raise
                progress.update(1)
                continue
            tile_size = _tile_size(image, int(net.image_size), tile)
            if tile_size:
                state.detect_tiled(
                    image_id, item, image, tile_size, tile_overlap, params.batch_size
                )
            else:
                pending.append((image_id, item, image))
                if len(pending) == params.batch_size:
                    state.finish_batch(pending)
            progress.update(1)
        state.finish_batch(pending)
        state.complete = True
    except BaseException as e:
        state.stopped = f"{type(e).__name__}: {e}"
        raise
    finally:
        progress.close()
        summary = state.write()
    if not state.images:
        raise ImageReadError(f"none of the {len(files)} input files could be read as an image")
    return summary


def _tile_size(image: np.ndarray, image_size: int, tile: int | None) -> int:
    """The tile side for this image, or 0 for one ordinary pass."""
    from mrcnn.tiling import should_tile

    h, w = image.shape[:2]
    if tile is None:
        return image_size if should_tile(h, w, image_size) else 0
    return tile if tile > 0 and max(h, w) > tile else 0


def resolve_model(spec: str, tracking_uri: str | None, workdir: Path) -> tuple[Path, dict]:
    """`--model` -> (folder in `mrcnn.weights.save` format, description of the source).

    Registry models are downloaded into `workdir` (only the weights folder).
    """
    m = _MODELS_URI.match(spec)
    if m:
        return _pull_registered(m["name"], m["alias"], m["version"], tracking_uri, workdir)
    if spec.startswith(("models:/", "runs:/")):
        raise ModelNotFoundError(
            f"cannot read --model {spec!r}: use models:/NAME@ALIAS, models:/NAME/VERSION or a "
            "local folder"
        )
    return _local_model(Path(spec)), {"path": str(Path(spec).resolve())}


def _local_model(path: Path) -> Path:
    from mrcnn.weights import CONFIG_FILE, WEIGHTS_FILE

    if not path.exists():
        raise ModelNotFoundError(f"model folder {path} does not exist. {HOW_TO_CREATE}")
    if (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        return path
    if (path / "MLmodel").is_file():  # a downloaded MLflow model
        return path / _weights_subpath(path / "MLmodel")
    raise ModelNotFoundError(
        f"{path} is not a saved model: expected {CONFIG_FILE} + {WEIGHTS_FILE} "
        "(mrcnn.weights.save) or an MLflow model folder with an MLmodel file"
    )


def _weights_subpath(mlmodel: Path) -> str:
    """The weights folder of a logged model, from its MLmodel file (artifact key "model")."""
    doc = yaml.safe_load(mlmodel.read_text()) or {}
    try:
        return doc["flavors"]["python_function"]["artifacts"]["model"]["path"]
    except (KeyError, TypeError):
        raise ModelNotFoundError(
            f"{mlmodel} is not a model logged by pipeline.export (no 'model' artifact)"
        ) from None


def _pull_registered(
    name: str, alias: str | None, version: str | None, uri: str | None, workdir: Path
) -> tuple[Path, dict]:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipeline.tracking.store import redact

    if uri:
        mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    where = redact(mlflow.get_tracking_uri())
    try:
        registered = client.get_registered_model(name)
    except MlflowException as e:
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
        version = aliases[alias]
    else:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        if version in (None, "latest"):
            if not versions:
                raise ModelNotFoundError(f"registered model '{name}' has no versions")
            version = str(versions[-1])
        elif not version.isdigit() or int(version) not in versions:
            raise ModelNotFoundError(
                f"registered model '{name}' has no version {version!r} (versions: "
                f"{', '.join(map(str, versions)) or 'none'})"
            )
    base = f"models:/{name}/{version}"
    mlmodel = mlflow.artifacts.download_artifacts(f"{base}/MLmodel", dst_path=str(workdir))
    sub = _weights_subpath(Path(mlmodel))
    local = mlflow.artifacts.download_artifacts(f"{base}/{sub}", dst_path=str(workdir))
    log.info("pulled %s v%s%s from %s", name, version, f" (@{alias})" if alias else "", where)
    source = {"registered_model": name, "version": int(version), "alias": alias, "uri": base}
    return Path(local), source


def read_class_map(weights_dir: Path, num_classes: int) -> dict[int, int] | None:
    """{label: dataset category id} from the saved model's config.json class map (the shape of
    `mrcnn.data.read_class_map`, covering every foreground label 1..K-1), or None without one."""
    from mrcnn.data import category_ids
    from mrcnn.data import read_class_map as parse
    from mrcnn.weights import CONFIG_FILE

    raw = json.loads((weights_dir / CONFIG_FILE).read_text()).get("class_map")
    if raw is None:
        return None
    try:
        return category_ids(parse(raw, num_classes))
    except ValueError as e:
        raise ValueError(f"class_map in {weights_dir / CONFIG_FILE}: {e}") from None


def main(argv: list[str] | None = None) -> None:
    from pipeline.tracking.store import TrackingError, check_tracking_uri

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="models:/NAME@ALIAS or a model folder")
    parser.add_argument("--input", required=True, nargs="+", type=Path, help="files or folders")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--params", default="params.yaml", help="default: %(default)s")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad file")
    parser.add_argument("--skip-bad", action="store_true", help=argparse.SUPPRESS)  # default now
    parser.add_argument("--score-thresh", type=float, help="overrides predict.score_thresh")
    parser.add_argument(
        "--tile", type=int, help="tile side in pixels (0: never tile; default: automatic)"
    )
    parser.add_argument("--tile-overlap", type=float, default=0.2, help="default: %(default)s")
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, params.yaml)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        if not 0 <= args.tile_overlap < 1:
            raise ValueError(f"--tile-overlap must be in [0, 1), got {args.tile_overlap}")
        params = _params(args.params, PredictParams, "predict")
        if args.score_thresh is not None:
            params.score_thresh = args.score_thresh
        uri = None
        if args.model.startswith("models:/"):
            uri = registry_uri(args.tracking_uri, args.params)
            check_tracking_uri(uri)
        run(
            args.model,
            args.input,
            args.out,
            params,
            tracking_uri=uri,
            strict=args.strict,
            tile=args.tile,
            tile_overlap=args.tile_overlap,
        )
    except (ModelNotFoundError, ImageReadError, FileNotFoundError, TrackingError, ValueError) as e:
        log.error("%s", e)
        sys.exit(1)


def registry_uri(flag: str | None, params_path: str) -> str:
    """The tracking URI for a registry model: `--tracking-uri`, else `MLFLOW_TRACKING_URI`, else
    params.yaml's `mlflow.tracking_uri` (relative paths from the project root). Without any of
    them raises `FileNotFoundError` saying where it looked (no empty store is created)."""
    from pipeline.tracking.store import tracking_uri

    if flag:
        return flag
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if not Path(params_path).is_file():
        raise FileNotFoundError(
            f"no model registry to pull from: no --tracking-uri, no MLFLOW_TRACKING_URI and no "
            f"params file at {Path(params_path).resolve()}. Run from the project folder, pass "
            "--params PROJECT/params.yaml or --tracking-uri URI, or give --model a model folder"
        )
    mlflow_params = load_section(params_path, "mlflow", MlflowParams)
    return tracking_uri(params_path, mlflow_params.tracking_uri)


def _params(path: str, cls: type, section: str) -> Any:
    """The section from the params file; defaults when there is no params file at all (predict
    also runs outside the project)."""
    if not Path(path).is_file():
        log.info("no %s: using default %s settings", path, section)
        return cls()
    return load_section(path, section, cls)


if __name__ == "__main__":
    main()
