"""The export stage's int8 step (`export.int8: true`): quantise, measure, accept or refuse.

    section = write_int8(onnx_file, out_dir, shards_dir, annotations, p)

1. `mrcnn.export.quantize_int8` with `export.int8_toolchain` turns the checked fp32
   `model.onnx` into the int8 model beside it: `model_int8.xml` + `model_int8.bin` (openvino:
   NNCF, OpenVINO IR) or `model_int8.onnx` (onnxruntime: static QDQ), calibrated on
   `export.int8_calibration_images` train images (the real image inside each padded shard
   frame; seed 0).
2. The fp32 file (on ONNX Runtime) and the int8 model (on its toolchain's runtime,
   `mrcnn.export.open_exported`) are evaluated on the val shards (`export.int8_eval_images`,
   0 = all) against the original COCO annotations with the evaluate stage's COCOeval
   (`mrcnn.evaluation`), and timed on the same val images (median seconds per image of
   `detect`, this machine).
3. `mrcnn.export.check_ap_drop` with `export.int8_max_ap_drop`: past it, one warning line says
   why and the int8 model is not logged to the run (its files stay on disk for inspection,
   with `"accepted": false` in export.json). Accepted, its files are logged to the run under
   `portable/`.

-> export.json's `int8` section: {"file" (the .xml or .onnx), "toolchain", "accepted", "why",
"bbox_AP", "segm_AP", "fp32_bbox_AP", "fp32_segm_AP", "bbox_AP_drop", "segm_AP_drop",
"max_ap_drop", "seconds_per_image", "fp32_seconds_per_image", "speedup_vs_fp32",
"num_eval_images", "calibration_images"}; the numbers also go to the MLflow run as `int8.*`
metrics.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from mrcnn.data.layout import SPLITS
from pipeline.tracking import active

log = logging.getLogger(__name__)

INT8_FILE = "model_int8.onnx"  # toolchain onnxruntime
INT8_IR = "model_int8.xml"  # toolchain openvino; its weights are `model_int8.bin` beside it
INT8_FILES = {"onnxruntime": INT8_FILE, "openvino": INT8_IR}
SPEED_IMAGES = 8  # val images each file is timed on
SEED = 0  # which train images calibrate (mrcnn.export.int8.select_calibration)


class _Crops:
    """The real images inside a shard split's padded frames, read on demand (uint8 H x W x 3)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> np.ndarray:
        sample = self.dataset[i]
        y1, x1, y2, x2 = (int(v) for v in sample.window)
        return sample.image[y1:y2, x1:x2]


def write_int8(
    onnx_file: Path, out_dir: Path, shards_dir: Path, annotations: Path, p: Any
) -> dict[str, Any]:
    """`p`: the `export` params. -> export.json's `int8` section (see the module docstring)."""
    from pycocotools.coco import COCO

    from mrcnn.data.shards import ShardDataset
    from mrcnn.export import Int8AccuracyError, check_ap_drop, int8_accuracy, quantize_int8
    from mrcnn.export.int8 import check_toolchain

    remove_int8(out_dir)  # never leave a stale file, of either toolchain
    check_toolchain(p.int8_toolchain)
    int8_file = out_dir / INT8_FILES[p.int8_toolchain]
    for split in SPLITS:
        if not (shards_dir / split).is_dir():
            raise FileNotFoundError(f"export.int8 needs the {split} shards: {shards_dir / split}")
    if not annotations.is_file():
        raise FileNotFoundError(f"export.int8 needs the val annotations: {annotations}")
    calibration = _Crops(ShardDataset(shards_dir / "train"))
    int8_file = quantize_int8(
        onnx_file,
        int8_file,
        calibration,
        num_images=p.int8_calibration_images,
        seed=SEED,
        toolchain=p.int8_toolchain,
    )
    val = ShardDataset(shards_dir / "val")
    n = len(val) if p.int8_eval_images <= 0 else min(p.int8_eval_images, len(val))
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints
        coco_gt = COCO(str(annotations))
    report = int8_accuracy(onnx_file, int8_file, coco_gt=coco_gt, dataset=val, max_images=n)
    crops = _Crops(val)
    images = [crops[i] for i in range(min(SPEED_IMAGES, len(val)))]
    fp32_s, int8_s = seconds_per_image(onnx_file, images), seconds_per_image(int8_file, images)
    section: dict[str, Any] = {
        "file": str(int8_file),
        "toolchain": p.int8_toolchain,
        "accepted": True,
        "why": "",
        **{k: float(v) for k, v in report.items() if k != "agreement"},
        "max_ap_drop": p.int8_max_ap_drop,
        "seconds_per_image": int8_s,
        "fp32_seconds_per_image": fp32_s,
        "speedup_vs_fp32": fp32_s / int8_s if int8_s > 0 else 0.0,
        "num_eval_images": n,
        "calibration_images": min(p.int8_calibration_images, len(calibration)),
    }
    try:
        check_ap_drop(report, p.int8_max_ap_drop)
    except Int8AccuracyError as e:
        section.update(accepted=False, why=str(e))
        log.warning("%s", e)
    active.log_metrics(
        {
            f"int8.{k}": section[k]
            for k in ("bbox_AP", "segm_AP", "bbox_AP_drop", "segm_AP_drop", "speedup_vs_fp32")
        }
    )
    active.set_tags({"export.int8": "accepted" if section["accepted"] else section["why"]})
    if section["accepted"]:
        for path in model_files(int8_file):
            active.log_artifact(path, artifact_path="portable")
        log.info(
            "%s: bbox AP %.4f (fp32 %.4f), segm AP %.4f (fp32 %.4f), %.2fx fp32's speed",
            *(int8_file.name, section["bbox_AP"], section["fp32_bbox_AP"]),
            *(section["segm_AP"], section["fp32_segm_AP"], section["speedup_vs_fp32"]),
        )
    return section


def model_files(model_file: Path) -> list[Path]:
    """The files of an exported model: an `.onnx` file alone, an OpenVINO IR `.xml` with the
    `.bin` beside it."""
    return (
        [model_file, model_file.with_suffix(".bin")]
        if model_file.suffix == ".xml"
        else [model_file]
    )


def remove_int8(out_dir: Path) -> None:
    """Remove the int8 model files of either toolchain from `out_dir`."""
    for name in INT8_FILES.values():
        for path in model_files(out_dir / name):
            path.unlink(missing_ok=True)


def seconds_per_image(model_file: Path, images: list[np.ndarray]) -> float:
    """Median wall seconds of `detect` on one image (resize, graph, paste) with the file on its
    runtime (`open_exported`: ONNX Runtime, OpenVINO for an `.xml`), after one warm-up call;
    0.0 without images."""
    from mrcnn.export import open_exported

    if not images:
        return 0.0
    model = open_exported(model_file)
    model.detect(images[:1])
    times = []
    for image in images:
        start = time.perf_counter()
        model.detect([image])
        times.append(time.perf_counter() - start)
    return float(np.median(times))
