"""Inference speed on CPU: ONNX Runtime (our exported graph) vs our eager model vs torchvision.

One process, same weights in all three (torchvision's `maskrcnn_resnet50_fpn` random init,
loaded into ours with `load_torchvision`, then exported with `mrcnn.export.to_onnx`), same
synthetic scenes, uint8 images in and pasted masks out for each:

    torchvision  tv([float images]) (its transform, model and mask paste)
    eager        MaskRCNN.detect(images)
    onnx         OnnxModel(file).detect(images)   (ONNX Runtime CPU provider)

For every (size, batch) the three are timed in interleaved rounds (drift on a shared VM hits all
three alike); images/s are medians over rounds, ratios are against torchvision.

    python bench/onnx_speed.py                                  # 512 and 800 px, batch 1 and 4
    python bench/onnx_speed.py --sizes 512 --batches 1 --rounds 2 --json out.json

--score-thresh 0 (default) keeps D = --detections (default 100, torchvision's maximum) per
image in every model (random weights score every class ~1/91), so the mask head and paste run
on all D: 100 is the worst case, a smaller D stands for a typical photo's few objects.
Each timed call follows a 1 s pause (`PAUSE_S`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
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
    onnx = OnnxModel(path)
    images = list(scenes(batch, size)[0])
    tv_in = [torch.from_numpy(im).permute(2, 0, 1).float().div(255) for im in images]

    @torch.no_grad()
    def run_tv():
        return [len(o["scores"]) for o in tv(tv_in)]

    @torch.no_grad()
    def run_eager():
        return [len(d) for d in ours.detect(images, batch_size=batch)]

    def run_onnx():
        return [len(d) for d in onnx.detect(images)]

    runners = {"torchvision": run_tv, "eager": run_eager, "onnx": run_onnx}
    counts: dict[str, list[int]] = {}
    if warmup:
        counts = {name: fn() for name, fn in runners.items()}  # detections per image
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            time.sleep(PAUSE_S)
            start = time.perf_counter()
            counts[name] = fn()
            times[name].append(time.perf_counter() - start)
    ips = {name: batch / statistics.median(t) for name, t in times.items()}
    return {
        "size": size,
        "batch": batch,
        "images_per_s": ips,
        "ratio_vs_torchvision": {k: v / ips["torchvision"] for k, v in ips.items()},
        "detections_per_image": counts,
        "seconds": times,
        "export_s": export_s,
    }


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
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    commit = provenance.commit()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for batch in args.batches:
                r = run_config(
                    size,
                    batch,
                    args.rounds,
                    args.score_thresh,
                    Path(tmp),
                    not args.no_warmup,
                    args.detections,
                )
                results.append(r)
                ips, ratio = r["images_per_s"], r["ratio_vs_torchvision"]
                print(
                    f"{size:4d} px  batch {batch}  images/s  torchvision {ips['torchvision']:.3g}"
                    f"  eager {ips['eager']:.3g} ({ratio['eager']:.2f}x)"
                    f"  onnx {ips['onnx']:.3g} ({ratio['onnx']:.2f}x)"
                    f"  detections {r['detections_per_image']}",
                    flush=True,
                )
    summary = {
        "commit": commit,
        "machine": platform.platform(),
        "cpus": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
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
