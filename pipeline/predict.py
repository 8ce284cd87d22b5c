"""`predict`: run a registered (or local) model on image files -> overlays + COCO results.

    python -m pipeline.predict --model models:/mrcnn-shapes@champion --input photos/ a.jpg \\
        --out predictions/

`--model` is `models:/NAME@ALIAS`, `models:/NAME/VERSION` (or `/latest`), pulled from the
registry of `mlflow.tracking_uri` in params.yaml; or a local folder, either in
`mrcnn.weights.save` format (config.json + model.safetensors, e.g. `models/final`) or a
downloaded MLflow model (with its `MLmodel` file). From the registry only the weights folder is
downloaded and `mrcnn.weights.load` rebuilds the model: the same weights and code the pyfunc
uses, without MLflow's per-call DataFrame round trip.

`--input` takes files and folders (searched recursively for .jpg .jpeg .png .bmp .webp). Writes
into `--out`:
    overlays/<name>.png   each image with its detections drawn (`mrcnn.visualize`)
    results.json          COCO results: [{"image_id", "file_name", "category_id",
                          "bbox": [x, y, w, h], "score", "segmentation": RLE}, ...]
    images.json           the model used, every image (id, file_name, path, size, detections)
                          and the files skipped with `--skip-bad`
`image_id` numbers the inputs 1..N in the order listed (folders sorted). `category_id` is the
model's label unless the saved model's config.json holds a `class_map` (label -> category id).
An unreadable image stops the run with an error naming it, unless `--skip-bad` is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

from mrcnn.coco_results import to_coco_results
from mrcnn.fileio import save_png_atomic, write_json_atomic
from mrcnn.images import IMAGE_SUFFIXES, ImageReadError, read_image
from pipeline.params import MlflowParams, PredictParams, load_section, resolve_device

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


@dataclass(frozen=True)
class ImageInput:
    path: Path
    name: str  # relative name used in outputs: "folder/sub/a.jpg" or "a.jpg"


def run(
    model: str,
    inputs: list[Path],
    out_dir: Path,
    params: PredictParams,
    *,
    tracking_uri: str | None = None,
    skip_bad: bool = False,
) -> dict[str, Any]:
    """Predict on every image of `inputs`; returns what `images.json` holds."""
    from mrcnn import weights
    from mrcnn.visualize import draw_instances

    files = collect_inputs(inputs)
    with tempfile.TemporaryDirectory(prefix="mrcnn-model-") as tmp:
        weights_dir, source = resolve_model(model, tracking_uri, Path(tmp))
        net = weights.load(weights_dir, resolve_device(params.device, "predict.device"))
        class_map = read_class_map(weights_dir, net.num_classes)
    if params.score_thresh >= 0:
        net.roi_heads.score_thresh = params.score_thresh
    class_names = net.class_names or None

    overlays = out_dir / "overlays"
    overlays.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    progress = tqdm(total=len(files), desc="predict", unit="img", disable=None)
    for start in range(0, len(files), params.batch_size):
        chunk, arrays = [], []
        for item in files[start : start + params.batch_size]:
            try:
                arrays.append(read_image(item.path))
                chunk.append((len(images) + len(chunk) + len(skipped) + 1, item))
            except ImageReadError as e:
                if not skip_bad:
                    raise
                log.warning("skipped: %s", e)
                skipped.append({"path": str(item.path), "error": str(e)})
        for (image_id, item), image, det in zip(chunk, arrays, _detect(net, arrays), strict=True):
            picture = draw_instances(
                image, det.boxes, det.masks, det.labels, class_names, det.scores
            )
            save_png_atomic(picture, overlays / (item.name + ".png"))
            results += to_coco_results(det, image_id, class_map, file_name=item.name)
            h, w = image.shape[:2]
            images.append(
                {
                    "id": image_id,
                    "file_name": item.name,
                    "path": str(item.path),
                    "height": h,
                    "width": w,
                    "detections": len(det),
                }
            )
        progress.update(len(files[start : start + params.batch_size]))
    progress.close()
    if not images:
        raise ImageReadError(f"none of the {len(files)} input files could be read as an image")
    summary = {
        "model": source,
        "score_thresh": float(net.roi_heads.score_thresh),
        "num_images": len(images),
        "num_detections": len(results),
        "images": images,
        "skipped": skipped,
    }
    write_json_atomic(out_dir / "results.json", results, indent=None)
    write_json_atomic(out_dir / "images.json", summary)
    log.info(
        "%d images, %d detections -> %s (%d skipped)",
        len(images),
        len(results),
        out_dir,
        len(skipped),
    )
    return summary


def _detect(net: Any, arrays: list[np.ndarray]) -> list[Any]:
    return net.detect(arrays, batch_size=len(arrays)) if arrays else []


def collect_inputs(inputs: list[Path]) -> list[ImageInput]:
    """Files as given, folders searched recursively for image suffixes (sorted); output names
    are made unique ("a.jpg", "a_2.jpg") so no overlay overwrites another."""
    found: list[ImageInput] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not files:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            base = path.resolve().name
            found += [ImageInput(p, f"{base}/{p.relative_to(path).as_posix()}") for p in files]
        elif path.is_file():
            found.append(ImageInput(path, path.name))
        else:
            raise FileNotFoundError(f"input {path} does not exist")
    if not found:
        raise FileNotFoundError("no input images given")
    seen: dict[str, int] = {}
    unique = []
    for item in found:
        n = seen.get(item.name, 0) + 1
        seen[item.name] = n
        if n > 1:
            stem, dot, suffix = item.name.rpartition(".")
            item = ImageInput(item.path, f"{stem}_{n}{dot}{suffix}" if dot else f"{suffix}_{n}")
        unique.append(item)
    return unique


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
    from pipeline.tracking.store import TrackingError, check_tracking_uri, tracking_uri

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="models:/NAME@ALIAS or a model folder")
    parser.add_argument("--input", required=True, nargs="+", type=Path, help="files or folders")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--params", default="params.yaml", help="default: %(default)s")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable images")
    parser.add_argument("--score-thresh", type=float, help="overrides predict.score_thresh")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        params = _params(args.params, PredictParams, "predict")
        if args.score_thresh is not None:
            params.score_thresh = args.score_thresh
        uri = None
        if args.model.startswith("models:/"):
            mlflow_params = _params(args.params, MlflowParams, "mlflow")
            uri = tracking_uri(args.params, mlflow_params.tracking_uri)
            check_tracking_uri(uri)
        run(args.model, args.input, args.out, params, tracking_uri=uri, skip_bad=args.skip_bad)
    except (ModelNotFoundError, ImageReadError, FileNotFoundError, TrackingError) as e:
        log.error("%s", e)
        sys.exit(1)


def _params(path: str, cls: type, section: str) -> Any:
    """The section from the params file; defaults when there is no params file at all (predict
    also runs outside the project)."""
    if not Path(path).is_file():
        log.info("no %s: using default %s settings", path, section)
        return cls()
    return load_section(path, section, cls)


if __name__ == "__main__":
    main()
