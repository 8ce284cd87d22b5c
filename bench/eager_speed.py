"""Eager inference on CPU, ours vs torchvision, interleaved (issue 19's 1.5x goal).

Same random weights in both (torchvision's `maskrcnn_resnet50_fpn`, loaded into ours with
`load_torchvision`), the same synthetic scenes, score threshold 0 so both keep D = 100
detections per image and run the mask head on them, masks pasted (end to end). One warm-up
call each, then `--rounds` rounds calling every variant once in turn after a 1 s pause (drift
on a shared VM hits all alike); the median of each.

    tv           torchvision as it comes (NCHW)
    tv_cl        torchvision in channels_last
    ours         MaskRCNN.detect, NCHW (as `build_model` gives it)
    ours_cl      ... with `use_channels_last()` (as `mrcnn.weights.load` gives it on CPU)
    ours_compiled   with --compile: channels_last + `compile_static()` (inductor, with its
                 `freezing`: frozen batch norm folded into the convolutions, weights prepacked)

    python bench/eager_speed.py                       # 512 px, batch 2
    python bench/eager_speed.py --compile --profile   # + compiled variant, + op tables

Each variant's detections are checked against torchvision's: the fraction of torchvision's
boxes found in ours with the same label within 0.01 px (near-tied scores of random weights may
swap a detection at the cut-off).

--profile prints torch.profiler's op table (self CPU time) of one call of ours and torchvision.
Results: docs/benchmarks.md ("Model").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import provenance  # noqa: E402
from bench.synthetic import scenes  # noqa: E402
from mrcnn import presets  # noqa: E402
from mrcnn.modeling.model import build_model  # noqa: E402
from mrcnn.weights import load_torchvision  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="add the compiled variant")
    ap.add_argument("--profile", action="store_true", help="op tables of ours and torchvision")
    args = ap.parse_args()
    size, batch = args.size, args.batch

    def torchvision() -> torch.nn.Module:
        torch.manual_seed(0)
        return maskrcnn_resnet50_fpn(
            weights=None,
            weights_backbone=None,
            min_size=size,
            max_size=size,
            box_score_thresh=0.0,
            box_detections_per_img=100,
        ).eval()

    cfg = presets.torchvision_r50_fpn(
        image_size=size, box_score_thresh=0.0, box_detections_per_img=100
    )

    def ours() -> torch.nn.Module:
        model = build_model(cfg).eval()
        load_torchvision(model, tv.state_dict())
        return model

    tv, tv_cl = torchvision(), torchvision()
    tv_cl.to(memory_format=torch.channels_last)
    models = {"ours": ours(), "ours_cl": ours().use_channels_last()}
    if args.compile:
        import torch._inductor.config as inductor

        inductor.freezing = True
        models["ours_compiled"] = ours().use_channels_last().compile_static()
    images = list(scenes(batch, size)[0])
    tv_in = [torch.from_numpy(im).permute(2, 0, 1).float().div(255) for im in images]
    runs = {"tv": lambda: tv(tv_in), "tv_cl": lambda: tv_cl(tv_in)}
    for name, model in models.items():
        runs[name] = lambda model=model: model.detect(images, batch_size=batch)

    with torch.no_grad():
        outputs = {}
        for name, fn in runs.items():
            start = time.perf_counter()
            outputs[name] = fn()
            print(f"warm-up {name}: {time.perf_counter() - start:.1f} s", flush=True)
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, fn in runs.items():
                time.sleep(1.0)
                start = time.perf_counter()
                fn()
                seconds[name].append(time.perf_counter() - start)
        median = {name: statistics.median(s) for name, s in seconds.items()}
        print(f"{size} px, batch {batch}, {torch.get_num_threads()} threads, {args.rounds} rounds")
        for name, s in median.items():
            print(f"  {name:14s} {s:6.3f} s/batch   torchvision / this {median['tv'] / s:.2f}x")
        # Detections in any order: each of torchvision's found in ours (same label, 0.01 px).
        ref = [
            SimpleNamespace(boxes=o["boxes"].numpy(), labels=o["labels"].numpy())
            for o in outputs["tv"]
        ]
        for name in models:
            found = [_found(a, b) for a, b in zip(ref, outputs[name], strict=True)]
            print(f"  {name}: fraction of torchvision's boxes it has within 0.01 px: {found}")
        if args.profile:
            for name in ("ours", "tv"):
                with torch.profiler.profile() as prof:
                    runs[name]()
                print(f"== {name}")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    print(f"commit {provenance.commit()}")


def _found(a, b, tol: float = 0.01) -> float:
    """Fraction of detections `a` whose box (same label) is in `b` within `tol` px."""
    ba, bb = np.asarray(a.boxes, np.float64), np.asarray(b.boxes, np.float64)
    if len(ba) == 0:
        return 1.0
    diff = np.abs(ba[:, None, :] - bb[None, :, :]).max(axis=2)  # [Na, Nb]
    same = np.asarray(a.labels)[:, None] == np.asarray(b.labels)[None, :]
    return round(float(((diff <= tol) & same).any(axis=1).mean()), 3)


if __name__ == "__main__":
    main()
