"""Post-training int8 quantisation of the exported whole model, calibrated on images.

    quantize_int8("model.onnx", "model_int8.onnx", images, num_images=200, seed=0)
    OnnxModel("model_int8.onnx").detect([image])        # same contract, no torch

The fp32 file from `mrcnn.export.to_onnx` goes in; an int8 file with the same inputs, outputs
and `mrcnn.*` metadata comes out (plus `mrcnn.int8`: how it was made). Calibration runs the
fp32 graph on `num_images` of `calibration_images`, drawn without replacement by `seed`,
resized and padded as `detect` does (`OnnxModel.prepare`), and records each activation's range.

Two toolchains (docs/export.md, "int8 and the CPU runtime", compares them):
- "onnxruntime": `onnxruntime.quantization.quantize_static`, QDQ format, uint8 activations
  (asymmetric, MinMax ranges by default), int8 weights per output channel. `reduce_range`
  (7-bit weights) avoids the int16 saturation of the u8 x s8 multiply on x86 CPUs without
  VNNI; the default asks the CPU (`cpu_has_vnni`). The file runs with `OnnxModel`.
- "openvino": NNCF's `nncf.quantize` on the model as OpenVINO reads it, saved as OpenVINO IR
  (`out_path` with suffix `.xml`, weights in the `.bin` beside it); runs with
  `mrcnn.export.openvino_model.OpenVinoModel` (`mrcnn/export/int8_openvino.py`).

What stays in float (`keep_fp32`, names from `FP32_ROLES`): only Conv / Gemm / MatMul are
quantised, so the box decoding, NMS, RoIAlign, sigmoid and everything after them stay fp32 in
both toolchains. Of the quantised layers, those whose outputs are the model's
accuracy-sensitive numbers can be kept fp32 too: the RPN's objectness and box deltas, the box
predictor's class scores and box deltas, the mask logits (the label's 1 x 1 conv and the
sub-pixel deconv before it). They are cheap (a few % of the FLOPs); `KEEP_FP32` is what the
measurement in docs/export.md chose.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mrcnn.data.resize import prepare_images
from mrcnn.export import INT8_TOOLCHAINS
from mrcnn.export.onnx_model import INPUT_NAMES, INT8_METADATA, METADATA_PREFIX, read_settings

log = logging.getLogger(__name__)

TOOLCHAINS = INT8_TOOLCHAINS
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_NUM_IMAGES = 200
# `ops`: "layers" quantises only these (the layers with weights: nearly all the FLOPs);
# "toolchain" lets the toolchain choose (its default set: also Add, MaxPool, Resize, ...).
QUANTISED_OPS = ("Conv", "Gemm", "MatMul")
OPS = ("layers", "toolchain")

# Layers that may be kept in float, by role -> how they are found in the exported graph (node
# names come from the module path: `to_onnx` traces `MaskRCNN`'s own modules).
FP32_ROLES = {
    "rpn_outputs": "the RPN head's 1 x 1 objectness and box-delta convs (every level)",
    "box_outputs": "the box predictor's class-score and box-delta layers (Gemm)",
    "mask_logits": "the mask head's label logits (MatMul) and the sub-pixel deconv before it",
}
KEEP_FP32: tuple[str, ...] = ("rpn_outputs", "box_outputs", "mask_logits")


def check_toolchain(toolchain: str) -> None:
    """Raise `OpenVinoMissingError` (one line: what is missing, how to install it) when the
    packages of `toolchain` ("openvino": openvino and nncf) are not installed; found packages
    are not imported here. "onnxruntime" needs onnx and onnxruntime, the `export` extra."""
    from mrcnn.export.openvino_model import INSTALL, OpenVinoMissingError, missing_packages

    if toolchain not in TOOLCHAINS:
        raise ValueError(f"toolchain must be one of {TOOLCHAINS}, got {toolchain!r}")
    if toolchain == "openvino":
        missing = missing_packages(("openvino", "nncf"))
        if missing:
            raise OpenVinoMissingError(
                f"the openvino int8 toolchain needs {' and '.join(missing)}, not installed here: "
                f"{INSTALL}"
            )


def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has an 8-bit dot-product instruction (AVX-512 VNNI or AVX-VNNI);
    False where /proc/cpuinfo cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    return "avx512_vnni" in flags or "avx_vnni" in flags


def select_calibration(count: int, num_images: int, seed: int) -> list[int]:
    """Indices of the calibration images: `num_images` of `count` without replacement, drawn by
    `seed` (numpy's PCG64), in increasing order; all of them when `num_images` >= `count`."""
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if count < 1:
        raise ValueError("no calibration images: pass a non-empty sequence of uint8 H x W x 3")
    if num_images >= count:
        return list(range(count))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(count, size=num_images, replace=False))


def calibration_batches(
    images: Sequence[np.ndarray], num_images: int, seed: int, settings: dict[str, Any]
) -> list[dict[str, np.ndarray]]:
    """The graph's feeds for calibration: the selected images (`select_calibration`) resized
    and padded in the file's batch size -> [{"images": uint8 [B, 3, S, S], "windows": float32
    [B, 4]}, ...]. A short last batch is filled with the first images again (not with blank
    padding, which would pull the activation ranges towards zero)."""
    chosen = [images[i] for i in select_calibration(len(images), num_images, seed)]
    b = settings["batch_size"]
    while len(chosen) % b:
        chosen.append(chosen[len(chosen) % b])
    feeds = []
    for start in range(0, len(chosen), b):
        pixels, windows, _ = prepare_images(
            chosen[start : start + b],
            settings["image_size"],
            settings.get("resize_mode", "square"),
            settings.get("min_size", 800),
            b,
        )
        feeds.append(dict(zip(INPUT_NAMES, (pixels, windows), strict=True)))
    return feeds


def fp32_nodes(nodes: Iterable[Any], roles: Iterable[str]) -> list[str]:
    """Names of the graph's nodes (ONNX `NodeProto`s: `.name`, `.op_type`, `.input`,
    `.output`) that `roles` (keys of `FP32_ROLES`) keep in float."""
    nodes = list(nodes)
    roles = list(roles)
    unknown = sorted(set(roles) - set(FP32_ROLES))
    if unknown:
        raise ValueError(f"unknown keep_fp32 role(s) {unknown}; known: {sorted(FP32_ROLES)}")
    keep: list[str] = []
    if "rpn_outputs" in roles:
        keep += [
            n.name
            for n in nodes
            if n.op_type == "Conv"
            and ("/rpn/head/cls_logits" in n.name or "/rpn/head/bbox_pred" in n.name)
        ]
    if "box_outputs" in roles:
        keep += [
            n.name
            for n in nodes
            if n.op_type in ("Gemm", "MatMul")
            and ("/box_head/cls_score" in n.name or "/box_head/bbox_pred" in n.name)
        ]
    if "mask_logits" in roles:
        keep += _mask_logit_nodes(nodes)
    return keep


def _mask_logit_nodes(nodes: list[Any]) -> list[str]:
    """The mask head's label logits: the graph's MatMul whose operand is the sub-pixel deconv's
    output (`MaskHead.label_probs`: Conv -> Relu -> Reshape -> MatMul), and that Conv."""
    producer = {out: n for n in nodes for out in n.output}
    found = []
    for n in nodes:
        if n.op_type != "MatMul" or "/box_head/" in n.name:
            continue
        found.append(n.name)
        for tensor in n.input:  # walk up through shape-only ops to the conv
            node = producer.get(tensor)
            while node is not None and node.op_type in ("Relu", "Reshape", "Flatten"):
                node = producer.get(node.input[0])
            if node is not None and node.op_type == "Conv":
                found.append(node.name)
    return found


def quantize_int8(
    onnx_path: str | Path,
    out_path: str | Path,
    calibration_images: Sequence[np.ndarray],
    *,
    num_images: int = DEFAULT_NUM_IMAGES,
    seed: int = 0,
    toolchain: str = "onnxruntime",
    keep_fp32: Iterable[str] = KEEP_FP32,
    ops: str = "layers",
    per_channel: bool = True,
    reduce_range: bool | None = None,
    calibration_method: str = "minmax",
) -> Path:
    """Quantise the whole-model fp32 ONNX file `onnx_path` to int8, calibrated on images.

    Args:
        onnx_path: a file from `mrcnn.export.to_onnx` (fp32, any batch size).
        out_path: where the int8 model goes, written atomically. "onnxruntime": an `.onnx`
            file; "openvino": OpenVINO IR (`out_path` with suffix `.xml`, plus its `.bin`).
        calibration_images: uint8 `H x W x 3` RGB images of any size (e.g. training images;
            only the chosen ones are read, so a lazy sequence works).
        num_images: how many to calibrate on (a few hundred; all when fewer are given).
        seed: which ones (`select_calibration`); same seed and images -> the same file.
        toolchain: "onnxruntime" (QDQ ONNX, runs with `OnnxModel`) or "openvino" (NNCF,
            OpenVINO IR, runs with `OpenVinoModel`).
        keep_fp32: roles (`FP32_ROLES`) whose layers stay in float.
        ops: "layers" (only Conv / Gemm / MatMul inputs in int8) or "toolchain" (the
            toolchain's default set, which adds element-wise ops, pooling and resizing).
        per_channel: one weight scale per output channel (onnxruntime; NNCF always does).
        reduce_range: 7-bit weights (onnxruntime); None: when the CPU has no VNNI.
        calibration_method: "minmax", "percentile" or "entropy" (onnxruntime).

    -> the written path. Its metadata holds the fp32 file's `mrcnn.*` settings and
    `mrcnn.int8` = {"toolchain", "num_images", "seed", "keep_fp32", "kept_fp32_nodes", ...}.
    """
    import onnx

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if toolchain not in TOOLCHAINS:
        raise ValueError(f"toolchain must be one of {TOOLCHAINS}, got {toolchain!r}")
    if ops not in OPS:
        raise ValueError(f"ops must be one of {OPS}, got {ops!r}")
    if calibration_method not in CALIBRATION_METHODS:
        raise ValueError(
            f"calibration_method must be one of {CALIBRATION_METHODS}, got {calibration_method!r}"
        )
    if toolchain == "openvino":  # before the calibration work, not after it
        check_toolchain(toolchain)
    fp32 = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in fp32.metadata_props}
    settings = read_settings(meta, onnx_path)
    keep_fp32 = list(keep_fp32)
    kept = fp32_nodes(fp32.graph.node, keep_fp32)
    feeds = calibration_batches(calibration_images, num_images, seed, settings)
    info: dict[str, Any] = {
        "toolchain": toolchain,
        "num_images": min(num_images, len(calibration_images)),
        "seed": seed,
        "keep_fp32": keep_fp32,
        "kept_fp32_nodes": kept,
        "ops": ops,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if toolchain == "openvino":
        from mrcnn.export.int8_openvino import quantize_openvino

        return quantize_openvino(
            onnx_path, out_path, feeds, kept, info, layers_only=ops == "layers"
        )
    if reduce_range is None:
        reduce_range = not cpu_has_vnni()
    info.update(
        per_channel=per_channel,
        reduce_range=reduce_range,
        calibration_method=calibration_method,
    )
    with tempfile.TemporaryDirectory(prefix="mrcnn-int8-") as tmp:
        quantised = _quantize_onnxruntime(
            onnx_path,
            Path(tmp),
            feeds,
            kept,
            QUANTISED_OPS if ops == "layers" else None,
            per_channel,
            reduce_range,
            calibration_method,
        )
        model = onnx.load(str(quantised))
    del model.metadata_props[:]  # the quantizer's own keys go; ours come back, plus int8
    for key, value in {**meta, INT8_METADATA: json.dumps(info)}.items():
        if key.startswith(METADATA_PREFIX):
            model.metadata_props.add(key=key, value=value)
    tmp_out = out_path.with_name(out_path.name + ".tmp")
    onnx.save(model, str(tmp_out))
    tmp_out.replace(out_path)
    log.info(
        "wrote %s (int8, onnxruntime QDQ, calibrated on %d images, seed %d, %d layers kept fp32)",
        out_path,
        info["num_images"],
        seed,
        len(kept),
    )
    return out_path


def _quantize_onnxruntime(
    onnx_path: Path,
    tmp: Path,
    feeds: list[dict[str, np.ndarray]],
    kept: list[str],
    op_types: Sequence[str] | None,
    per_channel: bool,
    reduce_range: bool,
    calibration_method: str,
) -> Path:
    """ONNX Runtime's pre-processing (constant folding, shape inference) and static QDQ
    quantisation into `tmp` -> the quantised file."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    pre = tmp / "pre.onnx"
    # Symbolic shape inference cannot follow NonZero / NonMaxSuppression sizes; ONNX's own
    # shape inference and ORT's basic optimisations (constant folding) are what is needed.
    quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
    import onnx

    names = {n.name for n in onnx.load(str(pre), load_external_data=False).graph.node}
    lost = [name for name in kept if name not in names]
    if lost:  # the pre-processing renamed a layer that was to stay fp32
        raise RuntimeError(f"layers to keep in fp32 not found after pre-processing: {lost}")
    out = tmp / "int8.onnx"
    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[calibration_method]
    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=None if op_types is None else list(op_types),
        nodes_to_exclude=kept,
        per_channel=per_channel,
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=method,
    )
    return out
