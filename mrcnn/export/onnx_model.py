"""`OnnxModel`: an exported Mask R-CNN (`mrcnn.export.to_onnx`) on ONNX Runtime.

Same `detect(images)` as `MaskRCNN`: images are resized and padded as the shards are, run through
the ONNX graph in its fixed batch size, and the detections are mapped back to each image's pixels
with masks pasted on the host (`mrcnn.inference.postprocess`, as the eager model does). This module
imports only numpy, Pillow and onnxruntime (no torch), so a serving process can stay small:

    from mrcnn.export.onnx_model import OnnxModel
    model = OnnxModel("model.onnx")
    detections = model.detect([image])   # uint8 H x W x 3 -> list[mrcnn.Detections]

The settings `detect` needs (input side, resize mode, mask threshold, class names, batch size)
travel in the ONNX file's metadata (`metadata_props`, keys `mrcnn.*`), written by `to_onnx`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mrcnn.data.resize import prepare_images
from mrcnn.inference.detections import Detections
from mrcnn.inference.images import check_images
from mrcnn.inference.postprocess import to_detections

log = logging.getLogger(__name__)

INPUT_NAMES = ("images", "windows")
OUTPUT_NAMES = ("boxes", "scores", "labels", "valid", "mask_probs")
METADATA_PREFIX = "mrcnn."
# How an int8 file was made (`mrcnn.export.int8.quantize_int8`), JSON; absent in fp32 files.
INT8_METADATA = METADATA_PREFIX + "int8"


def read_settings(meta: Mapping[str, str], path: Path) -> dict[str, Any]:
    """The `mrcnn.*` metadata of an exported file -> {key without the prefix: value}.

    Raises `ValueError` when the keys `detect` cannot do without are missing."""
    missing = [k for k in ("image_size", "batch_size") if METADATA_PREFIX + k not in meta]
    if missing:
        raise ValueError(
            f"{path} has no {', '.join(METADATA_PREFIX + k for k in missing)} "
            "metadata: it was not written by mrcnn.export.to_onnx"
        )
    # Only our keys: other tools add their own (ONNX Runtime's quantizer: `onnx.infer`).
    return {
        k[len(METADATA_PREFIX) :]: json.loads(v)
        for k, v in meta.items()
        if k.startswith(METADATA_PREFIX)
    }


class ExportedGraph:
    """What every runtime of the exported graph shares: the settings from the file's metadata,
    `prepare` (resize + pad into the fixed batch) and `detect` (run, then paste on the host).
    A runtime subclass opens the file and implements `run`.

    Attributes (from the file's metadata): `image_size` S, `batch_size` B of the graph,
    `resize_mode`, `min_size`, `mask_thresh`, `num_classes`, `class_names`,
    `detections_per_img` D, `settings` (all of them, e.g. `config`, and `int8` for a
    quantised file).
    """

    def __init__(self, path: Path, settings: Mapping[str, Any]) -> None:
        self.path = path
        self.settings = dict(settings)
        self.image_size: int = settings["image_size"]
        self.batch_size: int = settings["batch_size"]
        self.resize_mode: str = settings.get("resize_mode", "square")
        self.min_size: int = settings.get("min_size", 800)
        self.mask_thresh: float = settings.get("mask_thresh", 0.5)
        self.num_classes: int = settings.get("num_classes", 0)
        self.class_names: tuple[str, ...] = tuple(settings.get("class_names", ()))
        self.detections_per_img: int = settings.get("detections_per_img", 0)

    def run(self, images: np.ndarray, windows: np.ndarray) -> dict[str, np.ndarray]:
        """The raw graph on one prepared batch of exactly `batch_size` images: uint8
        [B, 3, S, S] + float32 [B, 4] -> {name in `OUTPUT_NAMES`: array}."""
        raise NotImplementedError

    def prepare(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Resize + pad up to `batch_size` images into the graph's fixed batch (missing images
        are all-zero with an empty window) -> images uint8 [B, 3, S, S], windows float32 [B, 4],
        scales float32 [B] (`mrcnn.data.resize.prepare_images`)."""
        return prepare_images(
            images, self.image_size, self.resize_mode, self.min_size, self.batch_size
        )

    def detect(
        self, images: Sequence[np.ndarray], batch_size: int | None = None
    ) -> list[Detections]:
        """Detect objects in uint8 `H x W x 3` RGB images of any size (as `MaskRCNN.detect`).

        The graph's batch size is fixed when it is exported; images go through it `batch_size`
        at a time (the file's own, whatever is passed here; a short last batch is padded).
        """
        images = check_images(images)
        if batch_size is not None and batch_size != self.batch_size:
            log.debug("%s runs batches of %d (fixed at export)", self.path.name, self.batch_size)
        results: list[Detections] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            pixels, windows, scales = self.prepare(chunk)
            out = self.run(pixels, windows)
            n = len(chunk)
            results += to_detections(
                out["boxes"][:n],
                out["scores"][:n],
                out["labels"][:n],
                out["valid"][:n],
                out["mask_probs"][:n],
                windows[:n],
                scales[:n],
                [im.shape[:2] for im in chunk],
                self.mask_thresh,
            )
        return results


class OnnxModel(ExportedGraph):
    """A whole-model ONNX file (`mrcnn.export.to_onnx`, or its int8 version from
    `mrcnn.export.quantize_int8`) run by ONNX Runtime.

    Args:
        path: the `.onnx` file.
        providers: ONNX Runtime execution providers, best first (default: CPU only).
        intra_op_threads: threads per operator (0 = ONNX Runtime's default, all cores).

    Attributes: those of `ExportedGraph` (from the file's metadata), and `session`.

    `detect(images)` takes what `MaskRCNN.detect` takes and returns the same `Detections`;
    `run(images, windows)` runs the raw graph: uint8 [B, 3, S, S] + float32 [B, 4] ->
    {boxes [B, D, 4], scores [B, D], labels [B, D], valid [B, D], mask_probs [B, D, M, M]}.
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int = 0,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - onnxruntime is in the `export` extra
            raise RuntimeError("OnnxModel needs onnxruntime: pip install -e '.[export]'") from e
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX file at {path} (write one with to_onnx)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=list(providers)
        )
        meta = self.session.get_modelmeta().custom_metadata_map
        super().__init__(path, read_settings(meta, path))

    def run(self, images: np.ndarray, windows: np.ndarray) -> dict[str, np.ndarray]:
        """The raw graph on one prepared batch of exactly `batch_size` images."""
        feeds = {"images": images.astype(np.uint8), "windows": windows.astype(np.float32)}
        return dict(zip(OUTPUT_NAMES, self.session.run(list(OUTPUT_NAMES), feeds), strict=True))
