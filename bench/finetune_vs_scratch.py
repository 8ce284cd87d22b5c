"""Fine-tuning from a checkpoint vs training from scratch, at equal iterations, on a small dataset.

The workflow people use Mask R-CNN for (start from COCO weights, train on a few hundred images of
their own classes), shrunk to what a CPU can run, with no downloads:

  source   a shapes_small model trained on the synthetic shapes dataset (3 classes: square,
           circle, triangle; `--source-images` images, `--source-iters` iterations), saved with
           `mrcnn.weights.save`: our stand-in for "COCO weights"
  target   "your own data": a different shapes draw (seed 1), with fewer images
           (`--target-images`) and another class set, 1 class `shape`, so the class count
           differs and `mrcnn.weights.load_init` re-initialises the class-specific predictors
  runs     scratch (random init) and finetune (`load_init` from source), same seed, schedule,
           augmentation and `--iters`; val segm / bbox AP on `--val-images` target images;
           with `--ema-decay D` each run is also evaluated on its EMA of the weights
           (`pipeline.training.ema.ModelEma`, what `train.ema_decay` keeps), `--runs` picks runs

    python bench/finetune_vs_scratch.py [--source-iters 600] [--iters 200] [--target-images 60]
        [--ema-decay 0.999] [--runs scratch,finetune]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrcnn import presets, weights  # noqa: E402
from mrcnn.data import Augmentation, ShardDataset, TrainLoader  # noqa: E402
from mrcnn.data.coco import class_map, load_coco_split  # noqa: E402
from mrcnn.data.image_file import read_image  # noqa: E402
from mrcnn.data.shapes import ShapesSpec, write_split  # noqa: E402
from mrcnn.data.writer import ShardOptions, build_split  # noqa: E402
from mrcnn.evaluation.coco_eval import coco_evaluate  # noqa: E402
from mrcnn.evaluation.coco_results import to_coco_results  # noqa: E402
from mrcnn.modeling.model import build_model  # noqa: E402
from mrcnn.solver import Schedule, build_optimizer, lr_scheduler  # noqa: E402
from pipeline.training.ema import ModelEma  # noqa: E402


def make_data(root: Path, spec: ShapesSpec, one_class: bool) -> Path:
    """Shapes in the COCO layout + shards at 128 px -> the shards folder."""
    for split in ("train", "val"):
        write_split(spec, root / "raw", split)
        ann = root / "raw" / "annotations" / f"instances_{split}.json"
        if one_class:  # "your own classes": every shape is one class
            doc = json.loads(ann.read_text())
            for a in doc["annotations"]:
                a["category_id"] = 1
            doc["categories"] = [{"id": 1, "name": "shape", "supercategory": ""}]
            ann.write_text(json.dumps(doc))
        parsed = load_coco_split(ann)
        with contextlib.redirect_stderr(io.StringIO()):
            build_split(
                parsed.records,
                root / "raw" / split,
                root / "shards" / split,
                class_map([parsed.categories]),
                ShardOptions(image_size=128, mini_mask_shape=28, samples_per_shard=512),
                num_workers=1,
            )
    return root / "shards"


def train(
    model, shards: Path, iters: int, lr: float, seed: int, ema_decay: float = 0.0
) -> tuple[float, ModelEma | None]:
    """AdamW + cosine, batch 8, flip + scale jitter -> (seconds, the EMA of the weights, updated
    after every step as the training loop does, or None when `ema_decay` is 0)."""
    torch.manual_seed(seed)
    ema = ModelEma(model, ema_decay) if ema_decay else None
    model.train()
    opt = build_optimizer(model, "adamw", lr, 1e-4)
    sched = lr_scheduler(opt, Schedule(lr=lr, iterations=iters, warmup_iters=min(50, iters // 5)))
    loader = TrainLoader(
        ShardDataset(shards / "train"),
        8,
        seed=seed,
        augment=Augmentation(scale_range=(0.8, 1.2)),
        max_gt=16,
    )
    t0 = time.perf_counter()
    for it, batch in zip(range(iters), loader, strict=False):
        loss = model.total_loss(model(batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        if ema is not None:
            ema.update(model)
        if it % 50 == 0:
            print(f"    it {it:4d} loss {loss.item():.3f}", flush=True)
    return time.perf_counter() - t0, ema


def evaluate(model, raw: Path, n: int) -> dict[str, float]:
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(raw / "annotations" / "instances_val.json"))
    ids = sorted(gt.getImgIds())[:n]
    model.eval()
    results = []
    for start in range(0, len(ids), 16):
        chunk = ids[start : start + 16]
        images = [read_image(raw / "val" / gt.imgs[i]["file_name"]) for i in chunk]
        for image_id, det in zip(chunk, model.detect(images, batch_size=16), strict=True):
            results += to_coco_results(det, image_id)
    with contextlib.redirect_stdout(io.StringIO()):
        scores = coco_evaluate(gt, results, image_ids=ids)
    return {t: round(float(scores.metrics[t]["AP"]), 3) for t in ("segm", "bbox")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source-images", type=int, default=1000)
    ap.add_argument("--source-iters", type=int, default=600)
    ap.add_argument("--target-images", type=int, default=60)
    ap.add_argument("--val-images", type=int, default=100)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ema-decay", type=float, default=0.0, help="also evaluate the EMA; 0 = off")
    ap.add_argument("--runs", default="scratch,finetune", help="comma-separated: scratch, finetune")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    np.random.seed(0)
    with tempfile.TemporaryDirectory(prefix="finetune-bench-") as tmp:
        tmp = Path(tmp)
        src_spec = ShapesSpec(num_train=args.source_images, num_val=1, seed=0)
        tgt_spec = ShapesSpec(num_train=args.target_images, num_val=args.val_images, seed=1)
        src = make_data(tmp / "source", src_spec, one_class=False)
        tgt = make_data(tmp / "target", tgt_spec, one_class=True)
        print(f"source: {args.source_iters} iterations on {args.source_images} images", flush=True)
        source = build_model(presets.shapes_small(num_classes=4))
        t, _ = train(source, src, args.source_iters, args.lr, seed=0)
        print(f"  {t:.0f} s", flush=True)
        weights.save(source, tmp / "source_model")
        rows = {}
        for name in args.runs.split(","):
            torch.manual_seed(1)
            model = build_model(presets.shapes_small(num_classes=2))
            if name == "finetune":
                skipped = weights.load_init(model, tmp / "source_model")
                print(f"  re-initialised: {skipped}")
            print(f"{name}: {args.iters} iterations on {args.target_images} images", flush=True)
            t, ema = train(model, tgt, args.iters, args.lr, seed=1, ema_decay=args.ema_decay)
            rows[name] = {**evaluate(model, tmp / "target" / "raw", args.val_images), "s": round(t)}
            print(f"  {rows[name]}", flush=True)
            if ema is not None:
                rows[f"{name}_ema"] = evaluate(ema.module, tmp / "target" / "raw", args.val_images)
                print(f"  EMA {args.ema_decay}: {rows[f'{name}_ema']}", flush=True)
    print(json.dumps({"args": vars(args), "results": rows}, indent=1))


if __name__ == "__main__":
    main()
