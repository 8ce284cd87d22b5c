"""What int8 costs in AP: a briefly trained shapes model, fp32 vs int8 toolchains, side by side.

    shapes   the synthetic shapes dataset (`mrcnn.data.shapes`, seed 0: `--train-images` +
             `--val-images` at 128 px, 3 classes), written and sharded in `--workdir`
    model    `presets.shapes_small(num_classes=4)` trained `--iters` iterations (AdamW 1e-3,
             cosine, batch 8, as bench/finetune_vs_scratch.py), saved in `--workdir` and reused
    files    the fp32 ONNX file (`to_onnx`, batch `--batch`) and one int8 file per variant
             (`quantize_int8`, calibrated on `--calib` training images, seed `--seed`)
    scores   bbox / segm AP on the val split (`evaluate_exported`) and agreement with fp32 on
             `--agree` val images (`compare_exported`), per (variant, runtime)

Variants: `ort` / `ov` (ONNX Runtime QDQ / NNCF + OpenVINO, `ops="layers"`: Conv / Gemm /
MatMul in int8) with the heads' output layers kept in float (`KEEP_FP32`), `*-all` with none
kept, `*-toolchain` with the toolchain's own op set (`ops="toolchain"`), `ort-<role>` with only
that role kept, `ort-on-ov` ONNX Runtime's QDQ file on OpenVINO; `fp32-ov` runs the fp32 file
on OpenVINO.

    python bench/int8_accuracy.py --workdir /tmp/int8-acc [--iters 800] [--variants ort ov]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import provenance  # noqa: E402
from bench.finetune_vs_scratch import make_data, train  # noqa: E402
from mrcnn import presets, weights  # noqa: E402
from mrcnn.data import ShardDataset  # noqa: E402
from mrcnn.data.shapes import ShapesSpec  # noqa: E402
from mrcnn.export.accuracy import compare_exported, evaluate_exported, open_exported  # noqa: E402
from mrcnn.export.int8 import FP32_ROLES, KEEP_FP32, quantize_int8  # noqa: E402
from mrcnn.export.onnx import to_onnx  # noqa: E402
from mrcnn.modeling.model import build_model  # noqa: E402

VARIANTS = {  # name -> (toolchain, keep_fp32, ops, runtime)
    "ort": ("onnxruntime", KEEP_FP32, "layers", "onnxruntime"),
    "ort-all": ("onnxruntime", (), "layers", "onnxruntime"),
    "ort-toolchain": ("onnxruntime", KEEP_FP32, "toolchain", "onnxruntime"),
    **{f"ort-{role}": ("onnxruntime", (role,), "layers", "onnxruntime") for role in FP32_ROLES},
    "ort-on-ov": ("onnxruntime", KEEP_FP32, "layers", "openvino"),
    "ov": ("openvino", KEEP_FP32, "layers", "openvino"),
    "ov-all": ("openvino", (), "layers", "openvino"),
    "ov-toolchain": ("openvino", KEEP_FP32, "toolchain", "openvino"),
    "ov-toolchain-all": ("openvino", (), "toolchain", "openvino"),
}


def trained_model(workdir: Path, iters: int, spec: ShapesSpec):
    shards = workdir / "shapes" / "shards"
    if not (shards / "val").exists():
        make_data(workdir / "shapes", spec, one_class=False)
    saved = workdir / f"model_{iters}"
    if not saved.exists():
        torch.manual_seed(0)
        model = build_model(presets.shapes_small(num_classes=4))
        print(f"training {iters} iterations: {train(model, shards, iters, 1e-3, seed=0):.0f} s")
        weights.save(model.eval(), saved)
    return weights.load(saved), shards


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--iters", type=int, default=800)
    ap.add_argument("--train-images", type=int, default=1000)
    ap.add_argument("--val-images", type=int, default=250)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--calib", type=int, default=200, help="calibration images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--agree", type=int, default=50, help="val images for the agreement")
    ap.add_argument("--variants", nargs="+", default=["ort", "ort-all", "ov", "ov-all"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    spec = ShapesSpec(num_train=args.train_images, num_val=args.val_images, seed=0)
    model, shards = trained_model(args.workdir, args.iters, spec)
    fp32 = to_onnx(model, args.workdir / f"fp32_b{args.batch}.onnx", batch_size=args.batch)
    train_set, val_set = ShardDataset(shards / "train"), ShardDataset(shards / "val")
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(args.workdir / "shapes" / "raw" / "annotations" / "instances_val.json"))

    def real(sample):  # the image inside its padded frame, as detect() takes it
        y1, x1, y2, x2 = sample.window
        return sample.image[y1:y2, x1:x2]

    class Images:  # a lazy sequence: quantize_int8 reads only the images it chose
        def __init__(self, ds):
            self.ds = ds

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            return real(self.ds[i])

    agree_images = [real(val_set[i]) for i in range(args.agree)]
    rows = {}
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        rows["fp32"] = evaluate_exported(fp32, val_set, gt)
    print(f"fp32 {rows['fp32']}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    runs = [("fp32-ov", fp32, "openvino")] if "fp32-ov" in args.variants else []
    for name in args.variants:
        if name == "fp32-ov":
            continue
        toolchain, keep, ops, runtime = VARIANTS[name]
        suffix = ".xml" if toolchain == "openvino" else ".onnx"
        t0 = time.perf_counter()
        out = quantize_int8(
            fp32,
            args.workdir / f"int8_{name}_b{args.batch}{suffix}",
            Images(train_set),
            num_images=args.calib,
            seed=args.seed,
            toolchain=toolchain,
            keep_fp32=keep,
            ops=ops,
        )
        print(f"{name}: quantised in {time.perf_counter() - t0:.0f} s", flush=True)
        runs.append((name, out, runtime))
    reference = open_exported(fp32)
    for name, path, runtime in runs:
        m = open_exported(path, runtime)
        with contextlib.redirect_stdout(io.StringIO()):
            aps = evaluate_exported(m, val_set, gt)
        agreement = compare_exported(reference, m, agree_images)
        rows[name] = {**aps, "agreement": agreement}
        drops = {t: round(rows["fp32"][f"{t}_AP"] - aps[f"{t}_AP"], 4) for t in ("bbox", "segm")}
        matched = agreement["matched_fraction"]  # None: no detection on either side
        compared = (
            "nothing compared (no detections)"
            if matched is None
            else f"matched {matched:.3f} max box {agreement['max_box_diff']:.2f} "
            f"mean mask IoU {agreement['mean_mask_iou'] or 0.0:.3f}"  # None: no pair matched
        )
        print(f"{name} on {runtime}: {aps} drop {drops} {compared}", flush=True)
    summary = {
        "commit": provenance.commit(),
        "cpu": provenance.cpu_name(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "results": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
