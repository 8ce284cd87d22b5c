"""`predict`: run a registered (or local) model on image files -> overlays + COCO results.

    python -m pipeline.predict --model models:/mrcnn-shapes@champion --input photos/ a.jpg \\
        --out predictions/

`--model` is `models:/NAME@ALIAS`, `models:/NAME/VERSION` (or `/latest`), pulled from the registry
of `mlflow.tracking_uri` in params.yaml; or a local folder, either in `mrcnn.weights.save` format
(config.json + model.safetensors, e.g. `models/final`) or a downloaded MLflow model (with its
`MLmodel` file); or a whole-model ONNX file (`models/export/model.onnx`), or the int8 model
(`models/export/model_int8.xml`, OpenVINO IR, or `model_int8.onnx`). `--backend torch` rebuilds
the network from the weights (`mrcnn.weights.load`), `--backend onnxruntime` runs the ONNX file
(`mrcnn.export.onnx_model.OnnxModel`, the same detections within the export's parity tolerances),
`--backend openvino` runs that ONNX file on OpenVINO (`OpenVinoModel`, fp32, the `openvino`
extra; the same detections within those tolerances), `--backend int8` the int8 model
(`export.int8`; OpenVINO IR on `OpenVinoModel`, the `openvino` extra); the default `auto` takes
onnxruntime for an .onnx file, int8 for an .xml, the registered model's own
`export.pyfunc_backend`, else torch (`pipeline.predict_model`). From the registry only the files
that backend needs are downloaded: the same files and code the pyfunc uses, without MLflow's
per-call DataFrame round trip.

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

Nothing done is lost: a file that cannot be read (empty, truncated, not an image whatever its
name) is skipped, named in one log line with its reason and listed in images.json's `skipped`
(`path`, `file_name`, `reason`, `error`), and the run goes on and exits 0 (`--strict` stops at
the first one instead); only when no input at all can be read does it exit 1, in one line. Files
of a folder without an image suffix are named in one line, not read. Whatever ends the run (an
error, Ctrl-C), results.json and images.json are written with what was done (`"complete":
false`). Errors are one line; `--debug` shows the traceback.

Large images: `--tile 1024 --tile-overlap 0.2` runs the model on overlapping tiles of the original
pixels and merges them (`mrcnn.inference.tiling`), and says so per image. Without `--tile`, every
image is resized to the model input in one pass, as the registered model and `mlflow models
serve` do (the same image and settings give the same detections everywhere); images 3x the
model input or more are named in one line suggesting `--tile`.

Registry models use the tracking URI from `--tracking-uri`, else `MLFLOW_TRACKING_URI`, else
`mlflow.tracking_uri` of `--params`; with none of these predict says where it looked (it never
creates an empty store).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mrcnn.data.image_file import ImageReadError, read_image
from mrcnn.export.openvino_model import OpenVinoMissingError
from pipeline.cli import one_line
from pipeline.device import resolve_device
from pipeline.paramfile import load_section
from pipeline.params import MlflowParams
from pipeline.predict_model import BACKENDS, load_predictor, locate
from pipeline.prediction_outputs import ImageInput, PredictionWriter, collect_inputs
from pipeline.serve_params import PredictParams
from pipeline.tracking.pull import ModelNotFoundError

log = logging.getLogger(__name__)

LARGE_FACTOR = 3  # images this many model inputs wide or more get the --tile hint


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
    backend: str = "auto",
) -> dict[str, Any]:
    """Predict on every image of `inputs`; returns what `images.json` holds.

    strict:   stop at the first unreadable file (default: report it and go on)
    tile:     None or 0: never tile (one pass per image, as the pyfunc and the server; images
              >= 3x the model input are named in a hint); N: tile every image larger than N px
              at N px
    skip_bad: accepted for old callers; skipping is the default now (see `strict`)
    backend:  "auto" or one of `mrcnn.export.MODEL_BACKENDS` (`pipeline.predict_model`)
    """
    del skip_bad
    files = collect_inputs(inputs)
    with tempfile.TemporaryDirectory(prefix="mrcnn-model-") as tmp:
        found = locate(model, tracking_uri, Path(tmp), backend)
        device = resolve_device(params.device, "predict.device")
        net, class_map = load_predictor(found, device, params.score_thresh)
    state = PredictionWriter(out_dir, net, class_map, found.source, params.keypoint_thresh)
    progress = tqdm(total=len(files), desc="predict", unit="img", disable=None)
    large: list[str] = []  # images much larger than the model input, not tiled
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
            tile_size = _tile_size(image, tile)
            if not tile_size and max(image.shape[:2]) >= LARGE_FACTOR * net.image_size:
                large.append(item.path.name)
            if tile_size:
                log.info("%s: tiled at %d px (--tile)", item.path.name, tile_size)
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
        _hint_tiling(large, int(net.image_size))
    except BaseException as e:
        state.stopped = f"{type(e).__name__}: {e}"
        raise
    finally:
        progress.close()
        summary = state.write()
    if not state.images:
        raise ImageReadError(f"none of the {len(files)} input files could be read as an image")
    return summary


def _tile_size(image: np.ndarray, tile: int | None) -> int:
    """The tile side for this image (`--tile N`: images larger than N px), or 0 for one ordinary
    pass (the default: tiling is the user's choice, never a silent one)."""
    return tile if tile and max(image.shape[:2]) > tile else 0


def _hint_tiling(large: list[str], image_size: int) -> None:
    """One line naming the images much larger than the model input that were resized whole."""
    if large:
        names = ", ".join(large[:3]) + (f" and {len(large) - 3} more" if len(large) > 3 else "")
        log.info(
            "%d image(s) are %gx the model input (%d px) or more (%s): each was resized whole; "
            "--tile %d runs the model on tiles of the original pixels instead (slower; finds "
            "small objects)",
            len(large),
            LARGE_FACTOR,
            image_size,
            names,
            image_size,
        )


def main(argv: list[str] | None = None) -> None:
    from pipeline.tracking.store import TrackingError, check_tracking_uri

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        required=True,
        help="models:/NAME@ALIAS, a model folder, a .onnx file or an int8 .xml (OpenVINO IR)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="torch (the weights), onnxruntime or openvino (the ONNX file on ONNX Runtime or "
        "on OpenVINO, fp32) or int8 (the int8 model, export.int8); auto: onnxruntime for a "
        ".onnx file, int8 for an .xml, the registered model's own backend, else torch "
        "(default: %(default)s)",
    )
    parser.add_argument("--input", required=True, nargs="+", type=Path, help="files or folders")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--params", default="params.yaml", help="default: %(default)s")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad file")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--skip-bad", action="store_true", help=argparse.SUPPRESS)  # default now
    parser.add_argument("--score-thresh", type=float, help="overrides predict.score_thresh")
    parser.add_argument("--tile", type=int, help="tile side in pixels (default and 0: never tile)")
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
            backend=args.backend,
        )
    except (
        ModelNotFoundError,
        ImageReadError,
        FileNotFoundError,
        TrackingError,
        ValueError,
        OpenVinoMissingError,
    ) as e:
        if args.debug:
            raise
        log.error("error: %s (--debug for the traceback)", one_line(e))
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
