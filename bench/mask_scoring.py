"""Mask Scoring R-CNN on shapes: segm AP with vs without the MaskIoU head, same budget.

Both models train from the same seed on the same shards with the shapes recipe of params.yaml
(shapes_small, AdamW lr 1e-3, weight decay 1e-4, cosine with 50 warmup iterations, batch 8,
grad clip 10, horizontal flips), then detect on the val split. Prints, per variant, COCO bbox /
segm AP and training time, and for the mask-scoring model how well scores predict mask quality:
the Pearson correlation with the true IoU (each detection's mask against the best same-class
ground-truth mask) of (a) the predicted IoU and (b) the class score (what plain Mask R-CNN uses).

    python bench/mask_scoring.py                            # 400 train / 100 val, 300 iterations
    python bench/mask_scoring.py --iterations 800 --num-train 1000 --num-val 250
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO

from mrcnn import presets
from mrcnn.data import ShardDataset
from mrcnn.data.coco import class_map, load_coco_split
from mrcnn.data.loader import TrainLoader, eval_batches
from mrcnn.data.shapes import ShapesSpec, write_split
from mrcnn.data.writer import ShardOptions, build_split
from mrcnn.evaluation.coco_eval import coco_evaluate
from mrcnn.evaluation.coco_results import to_coco_results
from mrcnn.modeling.model import build_model
from mrcnn.solver import Schedule, build_optimizer, lr_scheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import provenance  # noqa: E402


def make_data(root: Path, num_train: int, num_val: int) -> None:
    spec = ShapesSpec(num_train=num_train, num_val=num_val)
    for split in ("train", "val"):
        write_split(spec, root / "raw", split)
        parsed = load_coco_split(root / "raw" / "annotations" / f"instances_{split}.json")
        build_split(
            parsed.records,
            root / "raw" / split,
            root / "shards" / split,
            class_map([parsed.categories]),
            ShardOptions(image_size=128, mini_mask_shape=28),
            num_workers=1,
        )


def train(mask_scoring: bool, train_ds: ShardDataset, iterations: int) -> tuple[object, float]:
    torch.manual_seed(0)
    model = build_model(presets.shapes_small(num_classes=4, mask_scoring=mask_scoring))
    model.train()
    opt = build_optimizer(model, "adamw", 1e-3, 1e-4)
    sched = lr_scheduler(opt, Schedule(lr=1e-3, iterations=iterations, warmup_iters=50))
    loader = iter(TrainLoader(train_ds, 8, seed=0, max_gt=16))
    t0 = time.perf_counter()
    for it in range(iterations):
        losses = model(next(loader))
        loss = model.total_loss(losses)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        if it % 50 == 0 or it == iterations - 1:
            parts = " ".join(f"{k[5:]}={v.item():.3f}" for k, v in losses.items())
            print(f"  [{'scoring' if mask_scoring else 'plain'}] it {it}: {parts}", flush=True)
    return model.eval(), time.perf_counter() - t0


def evaluate(model, val_ds: ShardDataset, coco_gt: COCO) -> dict:
    results, pairs = [], []  # pairs: (class score, predicted IoU or nan, true IoU)
    with torch.no_grad():
        for batch in eval_batches(val_ds, 8):
            dets = model.postprocess(model.predict(batch), batch)
            for image_id, det in zip(batch.image_ids.tolist(), dets, strict=True):
                results += to_coco_results(det, image_id)
                anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id]))
                for i in range(len(det)):
                    same = [a for a in anns if a["category_id"] == int(det.labels[i])]
                    true = max((_iou(det.masks[i], coco_gt.annToMask(a)) for a in same), default=0)
                    pred = (
                        det.mask_scores[i] / max(det.scores[i], 1e-12)
                        if det.mask_scores is not None
                        else np.nan
                    )
                    pairs.append((float(det.scores[i]), float(pred), true))
    scores = coco_evaluate(coco_gt, results)
    p = np.asarray(pairs).reshape(-1, 3)
    out = {
        "bbox_AP": scores.metrics["bbox"]["AP"],
        "segm_AP": scores.metrics["segm"]["AP"],
        "detections": len(p),
        "corr_class_score_vs_true_iou": float(np.corrcoef(p[:, 0], p[:, 2])[0, 1]),
    }
    if not np.isnan(p[:, 1]).any():
        out["corr_pred_iou_vs_true_iou"] = float(np.corrcoef(p[:, 1], p[:, 2])[0, 1])
        out["mean_abs_err_pred_iou"] = float(np.abs(p[:, 1] - p[:, 2]).mean())
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--num-train", type=int, default=400)
    ap.add_argument("--num-val", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    commit = provenance.commit()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {commit}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with contextlib.redirect_stderr(io.StringIO()):  # progress bars
            make_data(root, args.num_train, args.num_val)
        train_ds = ShardDataset(root / "shards" / "train")
        val_ds = ShardDataset(root / "shards" / "val")
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO(str(root / "raw" / "annotations" / "instances_val.json"))
        summary = {}
        for mask_scoring in (False, True):
            name = "mask_scoring" if mask_scoring else "plain"
            model, seconds = train(mask_scoring, train_ds, args.iterations)
            summary[name] = {"train_s": round(seconds, 1), **evaluate(model, val_ds, coco_gt)}
            print(name, json.dumps(summary[name]), flush=True)
    print(json.dumps({"args": vars(args), **summary}, indent=2))


if __name__ == "__main__":
    main()
