"""Stage `inspect`: pictures of the shards, as in matterport's inspect notebooks.

Writes under `reports/inspect/`:
    samples.png              random samples with their masks (mini-masks expanded), boxes, labels
    mini_mask_round_trip.png an instance, its mini-mask, the mini-mask expanded back, and the
                             agreement with the source annotation (pycocotools `annToMask`)
    anchors.png              one image's anchors labelled against its ground truth as the RPN
                             does (IoU >= 0.7 positive, < 0.3 negative, each box's best anchor
                             positive; the rest neutral)
    anchors_per_level.png    a few anchors of each pyramid level P2..P6
    class_distribution.png   instances per class, train and val (from the manifests)

    python -m pipeline.inspect [--params params.yaml]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torchvision.ops import box_iou

from mrcnn import visualize as vis
from mrcnn.anchors import AnchorGenerator
from mrcnn.data import ShardDataset, expand_mini_masks
from pipeline.params import SPLITS, DataParams, InspectParams, load_section

logger = logging.getLogger(__name__)


def label_anchors(
    anchors: torch.Tensor, gt_boxes: torch.Tensor, positive_iou: float, negative_iou: float
) -> torch.Tensor:
    """RPN anchor labels (Faster R-CNN sec. 3.1.2): int8 [A], 1 positive, 0 negative,
    -1 neutral. anchors [A, 4], gt_boxes [G, 4] xyxy."""
    labels = torch.full((anchors.shape[0],), -1, dtype=torch.int8)
    if gt_boxes.numel() == 0:
        labels[:] = 0
        return labels
    iou = box_iou(anchors, gt_boxes)  # [A, G]
    best = iou.max(dim=1).values
    labels[best < negative_iou] = 0
    labels[best >= positive_iou] = 1
    # each ground-truth box's best anchor(s) are positive, even below the threshold
    best_per_gt = iou.max(dim=0).values
    labels[((iou == best_per_gt[None]) & (best_per_gt[None] > 0)).any(dim=1)] = 1
    return labels


def run(
    params: InspectParams, shards_dir: Path, out_dir: Path, raw_dir: Path | None = None
) -> dict[str, Any]:
    """Draw the pictures into `out_dir` (replaced as a whole) -> summary."""
    ds = ShardDataset(Path(shards_dir) / params.split)
    s = ds.image_size
    factor = max(1, 512 // s)  # small frames are enlarged so boxes and text stay readable
    rng = np.random.default_rng(params.seed)
    picks = np.sort(rng.choice(len(ds), min(params.num_samples, len(ds)), replace=False))
    samples = [ds[int(i)] for i in picks]
    tmp = Path(out_dir).with_name(f".{Path(out_dir).name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    summary: dict[str, Any] = {"samples": [x.image_id for x in samples]}

    tiles = []
    for x in samples:
        masks = expand_mini_masks(x.boxes, x.mini_masks, (s, s))  # [N, S, S]
        big_masks = vis.zoom(masks.transpose(1, 2, 0), factor).transpose(2, 0, 1)
        tile = vis.draw_instances(
            zoom_all(x.image, factor), x.boxes * factor, big_masks, x.labels, ds.class_names
        )
        tiles.append(tile)
    _save(tmp / "samples.png", vis.image_grid(tiles, cols=3))

    with_instances = [x for x in samples if len(x.labels)] or [ds[0]]
    x = with_instances[0]
    summary["mini_mask"] = _round_trip(x, ds, raw_dir, tmp / "mini_mask_round_trip.png")

    sizes = params.anchor_sizes or tuple(s / 16 * k for k in (1, 2, 4, 8, 16))
    anchors, counts = AnchorGenerator(sizes, params.anchor_ratios)(s)
    labels = label_anchors(anchors, torch.from_numpy(x.boxes), params.positive_iou,
                           params.negative_iou)  # fmt: skip
    summary["anchors"] = {
        "image_id": x.image_id,
        "sizes": list(sizes),
        "per_level": counts,
        "positive": int((labels == 1).sum()),
        "negative": int((labels == 0).sum()),
        "neutral": int((labels == -1).sum()),
    }
    a = anchors.numpy() * factor
    image = zoom_all(x.image, factor)
    picture = vis.draw_anchors(
        image, a, labels.numpy(), gt_boxes=x.boxes * factor, seed=params.seed
    )
    _save(tmp / "anchors.png", picture)
    picture = vis.draw_anchors_per_level(
        image, a, counts, per_level=params.anchors_per_level, sizes=sizes, seed=params.seed
    )
    _save(tmp / "anchors_per_level.png", picture)

    per_split = {}
    for split in SPLITS:
        manifest = Path(shards_dir) / split / "manifest.json"
        if manifest.is_file():
            per_split[split] = json.loads(manifest.read_text())["counts"]["instances_per_class"]
    fig = vis.new_figure(max(5.0, 0.6 * len(ds.class_names) + 2), 3.5)
    vis.plot_class_distribution(fig.add_subplot(1, 1, 1), per_split)
    fig.tight_layout()
    _save(tmp / "class_distribution.png", vis.figure_to_array(fig))
    summary["class_distribution"] = per_split

    (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
    if Path(out_dir).exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    summary["files"] = sorted(p.name for p in Path(out_dir).iterdir())
    return summary


def zoom_all(image: np.ndarray, factor: int) -> np.ndarray:
    return np.ascontiguousarray(vis.zoom(image, factor))


def _round_trip(x, ds: ShardDataset, raw_dir: Path | None, path: Path) -> dict[str, Any]:
    """Largest instance of sample x: mini-mask round trip, against the source mask if found."""
    if len(x.labels) == 0:
        return {}
    areas = (x.boxes[:, 2] - x.boxes[:, 0]) * (x.boxes[:, 3] - x.boxes[:, 1])
    k = int(np.argmax(areas))
    meta = ds.read_meta(ds_index(ds, x.image_id))
    # Work in the original frame, where the source annotation lives.
    h, w = x.original_size
    image = np.asarray(
        Image.fromarray(np.ascontiguousarray(x.image[: x.window[2], : x.window[3]])).resize((w, h))
    )
    box = x.boxes[k] / x.scale
    ref = None
    ann_file = (
        raw_dir / "annotations" / f"instances_{ds.manifest['split']}.json" if raw_dir else None
    )
    if ann_file is not None and ann_file.is_file():
        coco = COCO(str(ann_file))
        ref = coco.annToMask(coco.loadAnns([meta["annotation_ids"][k]])[0]).astype(bool)
        back = expand_mini_masks(box[None], x.mini_masks[k : k + 1], (h, w))[0]
        iou = float((ref & back).sum() / max(1, (ref | back).sum()))
    else:
        iou = None
    title = f"image {x.image_id}, {ds.class_names[x.labels[k]]}"
    _save(path, vis.draw_mini_mask_round_trip(image, box, x.mini_masks[k], ref, title=title))
    return {"image_id": x.image_id, "annotation_id": meta["annotation_ids"][k], "iou": iou}


def ds_index(ds: ShardDataset, image_id: int) -> int:
    return int(np.flatnonzero(ds.index[:, 1] == image_id)[0])


def _save(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml", help="params file (sections inspect, data)")
    ap.add_argument("--shards", type=Path, default=Path("data/shards"))
    ap.add_argument("--raw", type=Path, help="raw COCO-layout folder (default data/raw/<source>)")
    ap.add_argument("--out", type=Path, default=Path("reports/inspect"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_section(args.params, "inspect", InspectParams)
    raw = args.raw or Path("data/raw") / load_section(args.params, "data", DataParams).source
    print(json.dumps(run(params, args.shards, args.out, raw), indent=1))


if __name__ == "__main__":
    main()
