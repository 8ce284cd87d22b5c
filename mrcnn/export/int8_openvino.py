"""The "openvino" toolchain of `mrcnn.export.quantize_int8`: NNCF post-training quantisation of
the whole model as OpenVINO reads the ONNX file, saved as OpenVINO IR (`.xml` + `.bin`).

NNCF (`nncf.quantize`) inserts FakeQuantize operations on the inputs of the layers it quantises,
with ranges from the calibration batches, and corrects the biases of the quantised layers
(`fast_bias_correction`). OpenVINO's CPU plugin runs them as int8 kernels. Layers kept in float
(`quantize_int8`'s `keep_fp32`) become NNCF's ignored scope: OpenVINO names a Conv / Gemm with a
bias `<ONNX node name>/WithoutBiases` (the bias is a separate Add), a MatMul by its node name.
Needs `nncf` and `openvino` (the `openvino` extra); nncf also imports torch when present.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mrcnn.export.onnx_model import INT8_METADATA
from mrcnn.export.openvino_model import FRAMEWORK_INFO, INSTALL, OpenVinoMissingError

log = logging.getLogger(__name__)

# OpenVINO's op types of ONNX Conv / Gemm / MatMul (`quantize_int8(ops="layers")`).
LAYER_TYPES = ("Convolution", "GroupConvolution", "MatMul")


def quantize_openvino(
    onnx_path: Path,
    out_path: Path,
    feeds: list[dict[str, np.ndarray]],
    kept: list[str],
    info: dict[str, Any],
    layers_only: bool = True,
) -> Path:
    """NNCF on the fp32 ONNX file, calibrated on `feeds` (`calibration_batches`), the nodes
    named in `kept` ignored -> OpenVINO IR at `out_path` with suffix `.xml` (+ `.bin`), the
    metadata carried over with `mrcnn.int8` = `info` added. `layers_only`: quantise only
    the inputs of convolutions and matrix products (`LAYER_TYPES`), else NNCF's default set."""
    try:
        import nncf
        import openvino as ov
    except ImportError as e:
        raise OpenVinoMissingError(
            f"the openvino int8 toolchain needs openvino and nncf, not installed here: {INSTALL}"
        ) from e
    model = ov.Core().read_model(str(onnx_path))
    patterns = [f"^{re.escape(name)}(/WithoutBiases)?$" for name in kept]
    types = []
    if layers_only:  # NNCF quantises the inputs of every op type it may; keep it to layers
        types = sorted({op.get_type_name() for op in model.get_ordered_ops()} - set(LAYER_TYPES))
    with _nncf_warnings_only():
        quantised = nncf.quantize(
            model,
            nncf.Dataset(feeds),
            subset_size=len(feeds),
            ignored_scope=nncf.IgnoredScope(patterns=patterns, types=types, validate=False),
        )
    info = {**info, "nncf": nncf.__version__, "openvino": ov.__version__}
    quantised.set_rt_info(json.dumps(info), [FRAMEWORK_INFO, INT8_METADATA])
    xml = out_path.with_suffix(".xml")
    tmp_dir = xml.parent / (xml.name + ".tmp")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    try:
        # fp32 weights stay fp32 (save_model would halve them to fp16 by default).
        ov.save_model(quantised, str(tmp_dir / xml.name), compress_to_fp16=False)
        # .bin first: an .xml is only ever beside the weights it names.
        (tmp_dir / xml.with_suffix(".bin").name).replace(xml.with_suffix(".bin"))
        (tmp_dir / xml.name).replace(xml)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    log.info(
        "wrote %s (int8, NNCF %s for OpenVINO, calibrated on %d images, seed %d)",
        xml,
        nncf.__version__,
        info["num_images"],
        info["seed"],
    )
    return xml


@contextlib.contextmanager
def _nncf_warnings_only() -> Iterator[None]:
    """NNCF's logger at WARNING while it quantises: at INFO it prints a line for every node it
    leaves in float (hundreds per Mask R-CNN) into the export stage's output."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
