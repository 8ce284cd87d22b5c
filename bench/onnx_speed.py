"""Inference speed on CPU: the exported graph on ONNX Runtime and OpenVINO, fp32 and int8, vs
our eager model vs torchvision.

One process, same weights in all (torchvision's `maskrcnn_resnet50_fpn` random init, loaded into
ours with `load_torchvision`, then exported with `mrcnn.export.to_onnx`), same synthetic scenes,
uint8 images in and pasted masks out for each (end to end: resize, graph, paste):

    torchvision    tv([float images]) (its transform, model and mask paste)
    eager          MaskRCNN.detect(images)
    onnx           OnnxModel(file).detect(images)   (ONNX Runtime CPU provider)
  with --int8 / --openvino:
    onnx_int8      OnnxModel(int8 file): `quantize_int8(toolchain="onnxruntime")` (QDQ)
    openvino       OpenVinoModel(file): the fp32 ONNX file on OpenVINO's CPU plugin
    openvino_int8  OpenVinoModel(int8 IR): `quantize_int8(toolchain="openvino")` (NNCF)

The int8 files are calibrated on `--calib` other synthetic scenes (the weights are random, so
only their speed means anything here; bench/int8_accuracy.py measures what int8 costs in AP).
`--agree N` also matches each int8 file's detections against the fp32 file's on N more scenes
(`mrcnn.export.compare_exported`: matched fraction, box and score error, mask IoU).
For every (size, batch) the runtimes are timed in interleaved rounds (drift on a shared VM hits
all alike); images/s are medians over rounds, ratios are against torchvision and against
`onnx` (fp32 ONNX Runtime). Each (size, batch) runs in a fresh process. For the exported
models the graph's own share of each call (`run`, without resize and paste) is reported too.

    python bench/onnx_speed.py                                  # 512 and 800 px, batch 1 and 4
    python bench/onnx_speed.py --int8 --openvino                # + int8 and OpenVINO columns
    python bench/onnx_speed.py --sizes 512 --batches 1 --rounds 2 --json out.json

--score-thresh 0 (default) keeps D = --detections (default 100, torchvision's maximum) per
image in every model (random weights score every class ~1/91), so the mask head and paste run
on all D: 100 is the worst case, a smaller D stands for a typical photo's few objects.
Each timed call follows a 1 s pause (`PAUSE_S`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import provenance  # noqa: E402
from bench.synthetic import scenes  # noqa: E402
from mrcnn import presets  # noqa: E402
from mrcnn.export.int8 import quantize_int8  # noqa: E402
from mrcnn.export.onnx import to_onnx  # noqa: E402
from mrcnn.export.onnx_model import OnnxModel  # noqa: E402
from mrcnn.modeling.model import build_model  # noqa: E402
from mrcnn.weights import load_torchvision  # noqa: E402

# Idle time before each timed call: the previous runtime's worker threads (OpenMP for torch,
# ONNX Runtime's pool) spin for a while after their work and would take the next one's cores.
PAUSE_S = 1.0


def run_config(
    size: int,
    batch: int,
    rounds: int,
    score_thresh: float,
    tmp: Path,
    warmup: bool = True,
    detections: int = 100,
    int8: bool = False,
    openvino: bool = False,
    calib: int = 8,
    agree: int = 0,
) -> dict:
    torch.manual_seed(0)
    tv = maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        min_size=size,
        max_size=size,
        box_score_thresh=score_thresh,
        box_detections_per_img=detections,
    ).eval()
    cfg = presets.torchvision_r50_fpn(
        image_size=size, box_score_thresh=score_thresh, box_detections_per_img=detections
    )
    ours = build_model(cfg).eval()
    load_torchvision(ours, tv.state_dict())
    t0 = time.perf_counter()
    path = to_onnx(ours, tmp / f"m{size}_b{batch}.onnx", batch_size=batch)
    export_s = time.perf_counter() - t0
    exported = {"onnx": OnnxModel(path)}
    calib_images = list(scenes(calib, size, seed=1)[0])
    quantise_s = {}
    for name, wanted, toolchain in (
        ("onnx_int8", int8, "onnxruntime"),
        ("openvino_int8", int8 and openvino, "openvino"),
    ):
        if wanted:
            t0 = time.perf_counter()
            suffix = ".xml" if toolchain == "openvino" else ".onnx"
            out = quantize_int8(
                path,
                path.with_name(path.stem + "_int8" + suffix),
                calib_images,
                num_images=calib,
                toolchain=toolchain,
            )
            quantise_s[name] = time.perf_counter() - t0
            exported[name] = out
    agreement = {}
    if agree:  # each int8 file's detections against the fp32 file's, on other scenes
        from mrcnn.export.accuracy import compare_exported

        scenes_agree = list(scenes(agree, size, seed=2)[0])
        for name in ("onnx_int8", "openvino_int8"):
            if name in exported:
                agreement[name] = compare_exported(path, exported[name], scenes_agree)
    if openvino:
        from mrcnn.export.openvino_model import OpenVinoModel

        exported["openvino"] = OpenVinoModel(path)
        if "openvino_int8" in exported:
            exported["openvino_int8"] = OpenVinoModel(exported["openvino_int8"])
    if "onnx_int8" in exported:
        exported["onnx_int8"] = OnnxModel(exported["onnx_int8"])
    graph_s: dict[str, list[float]] = {name: [] for name in exported}
    for name, model in exported.items():
        model.run = _timed(model.run, graph_s[name])
    images = list(scenes(batch, size)[0])
    tv_in = [torch.from_numpy(im).permute(2, 0, 1).float().div(255) for im in images]

    @torch.no_grad()
    def run_tv():
        return [len(o["scores"]) for o in tv(tv_in)]

    @torch.no_grad()
    def run_eager():
        return [len(d) for d in ours.detect(images, batch_size=batch)]

    runners = {"torchvision": run_tv, "eager": run_eager}
    for name, model in exported.items():
        runners[name] = lambda model=model: [len(d) for d in model.detect(images)]
    order = ["torchvision", "eager", "onnx", "onnx_int8", "openvino", "openvino_int8"]
    runners = {name: runners[name] for name in order if name in runners}
    counts: dict[str, list[int]] = {}
    if warmup:
        counts = {name: fn() for name, fn in runners.items()}  # detections per image
    for t in graph_s.values():
        t.clear()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            time.sleep(PAUSE_S)
            start = time.perf_counter()
            counts[name] = fn()
            times[name].append(time.perf_counter() - start)
    ips = {name: batch / statistics.median(t) for name, t in times.items()}
    graph_ips = {name: batch / statistics.median(t) for name, t in graph_s.items()}
    return {
        "size": size,
        "batch": batch,
        "images_per_s": ips,
        "ratio_vs_torchvision": {k: v / ips["torchvision"] for k, v in ips.items()},
        "ratio_vs_onnx_fp32": {k: v / ips["onnx"] for k, v in ips.items()},
        "graph_images_per_s": graph_ips,
        "graph_ratio_vs_onnx_fp32": {k: v / graph_ips["onnx"] for k, v in graph_ips.items()},
        "detections_per_image": counts,
        "seconds": times,
        "graph_seconds": graph_s,
        "export_s": export_s,
        "quantise_s": quantise_s,
        "int8_agreement": agreement,
    }


def _timed(run, record: list[float]):
    """`run` that appends the seconds of each call to `record` (the graph's share of detect)."""

    def timed(*args):
        start = time.perf_counter()
        out = run(*args)
        record.append(time.perf_counter() - start)
        return out

    return timed


def _in_child(size: int, batch: int, tmp: Path) -> dict:
    """This script on one (size, batch) in a fresh process (the other arguments as given):
    the six runtimes of one configuration hold several GB, which a long process would keep."""
    out = tmp / f"{size}_{batch}.json"
    argv = sys.argv[1:]
    for flag in ("--sizes", "--batches", "--json"):  # drop the flag and its values
        if flag in argv:
            i = argv.index(flag)
            j = i + 1
            while j < len(argv) and not argv[j].startswith("--"):
                j += 1
            del argv[i:j]
    cmd = [sys.executable, __file__, *argv, "--sizes", str(size), "--batches", str(batch)]
    subprocess.run([*cmd, "--json", str(out)], check=True)
    return json.loads(out.read_text())["results"][0]


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 800])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-warmup", action="store_true", help="time the first call too")
    ap.add_argument("--score-thresh", type=float, default=0.0)
    ap.add_argument(
        "--detections", type=int, default=100, help="detections per image D (all three models)"
    )
    ap.add_argument("--int8", action="store_true", help="add int8 (ONNX Runtime; + OpenVINO)")
    ap.add_argument("--openvino", action="store_true", help="add OpenVINO (fp32; + int8)")
    ap.add_argument("--calib", type=int, default=8, help="calibration images for --int8")
    ap.add_argument(
        "--agree", type=int, default=0, help="with --int8: int8 vs fp32 detections on N scenes"
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    commit = provenance.commit()
    load_before = os.getloadavg()
    configs = [(size, batch) for size in args.sizes for batch in args.batches]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size, batch in configs:
            if len(configs) > 1:  # each in its own process: memory and threads start afresh
                results.append(_in_child(size, batch, Path(tmp)))
                continue
            r = run_config(
                size,
                batch,
                args.rounds,
                args.score_thresh,
                Path(tmp),
                not args.no_warmup,
                args.detections,
                args.int8,
                args.openvino,
                args.calib,
                args.agree,
            )
            results.append(r)
            ips, ratio = r["images_per_s"], r["ratio_vs_torchvision"]
            cols = "  ".join(
                f"{k} {v:.3g} ({ratio[k]:.2f}x"
                + (
                    f", graph {r['graph_ratio_vs_onnx_fp32'][k]:.2f}x onnx)"
                    if k in r["graph_ratio_vs_onnx_fp32"]
                    else ")"
                )
                for k, v in ips.items()
            )
            print(
                f"{size:4d} px  batch {batch}  images/s  {cols}"
                f"  detections {r['detections_per_image']}",
                flush=True,
            )
            for name, a in r["int8_agreement"].items():
                print(
                    f"      {name} vs fp32 on {a['num_images']} scenes: matched "
                    f"{a['matched']} of {a['expected']} ({a['matched_fraction']:.3f}), max box "
                    f"diff {a['max_box_diff']:.3g} px, max score diff {a['max_score_diff']:.3g}, "
                    f"mean mask IoU {a['mean_mask_iou']:.3f}",
                    flush=True,
                )
    load_after = os.getloadavg()
    summary = {
        "commit": commit,
        "machine": platform.platform(),
        "cpu": provenance.cpu_name(),
        "cpu_flags": provenance.cpu_flags(),
        "load_before": load_before,
        "load_after": load_after,
        "cpus": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "openvino": _version("openvino") if args.openvino else None,
        "score_thresh": args.score_thresh,
        "detections_per_img": args.detections,
        "rounds": args.rounds,
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}))
    assert np.isfinite([r["images_per_s"]["onnx"] for r in results]).all()


if __name__ == "__main__":
    main()
