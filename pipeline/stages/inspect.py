"""Stage `inspect`: pictures of the shards, as in matterport's inspect notebooks.

Writes under `reports/inspect/`:
    samples.png              random samples with their masks (mini-masks expanded), boxes, labels
    mini_mask_round_trip.png an instance, its mini-mask, the mini-mask expanded back, and the
                             agreement with the source annotation (pycocotools `annToMask`)
    anchors.png              one image's anchors (the `model` section's) labelled against its
                             ground truth as the RPN does (`mrcnn.layers.matcher`, the model's
                             thresholds; each box's best anchor positive; the rest neutral)
    anchors_per_level.png    a few anchors of each pyramid level P2..P6
    class_distribution.png   instances per class, train and val (from the manifests)

    python -m pipeline.inspect [--params params.yaml]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO

from mrcnn import visualize as vis
from mrcnn.config import Config
from mrcnn.data import ShardDataset, expand_mini_masks
from mrcnn.data.layout import MANIFEST, SPLITS, annotation_file
from mrcnn.fileio import replace_dir
from mrcnn.layers.matcher import BELOW_LOW, batched_iou, match
from mrcnn.modeling.anchors import AnchorGenerator
from pipeline import cli, layout
from pipeline.params import InspectParams, Params, load
from pipeline.tracking import runs, store
from pipeline.tracking.store import Tracking, TrackingError

logger = logging.getLogger(__name__)


def label_anchors(anchors: torch.Tensor, gt_boxes: torch.Tensor, cfg: Config) -> torch.Tensor:
    """The RPN's anchor labels for one image, from `mrcnn.layers.matcher` with the model's
    thresholds (`model.rpn.fg_iou_thresh` / `bg_iou_thresh`, each box's best anchors positive):
    int8 [A], 1 positive, 0 negative, -1 neutral. anchors [A, 4], gt_boxes [G, 4] xyxy."""
    if gt_boxes.numel() == 0:  # nothing to match: every anchor is background
        return torch.zeros(anchors.shape[0], dtype=torch.int8)
    gt = gt_boxes.float()[None]  # [1, G, 4]
    valid = torch.ones(gt.shape[:2], dtype=torch.bool)
    iou = batched_iou(gt, anchors[None])  # [1, G, A]
    fg, bg = cfg.rpn.fg_iou_thresh, cfg.rpn.bg_iou_thresh
    matched = match(iou, valid, fg, bg, allow_low_quality=True)[0]  # [A]
    labels = torch.full(matched.shape, -1, dtype=torch.int8)
    labels[matched == BELOW_LOW] = 0
    labels[matched >= 0] = 1
    return labels


@dataclass(frozen=True)
class InspectPaths:
    """What inspect reads and writes."""

    shards: Path = layout.SHARDS  # the split folders (the `inspect.split` one is drawn)
    out: Path = layout.INSPECT_REPORTS  # replaced as a whole
    raw: Path | None = None  # the raw COCO-layout folder: the source masks of the round trip
    tracking: Tracking | None = None  # the pictures go to a run of their own; None: not logged


def run(params: Params, paths: InspectPaths) -> dict[str, Any]:
    """Draw the pictures into `paths.out` and log them to MLflow -> summary. The anchors are the
    model's (the `model` section), labelled as its RPN labels them."""
    if paths.tracking is not None:
        store.check_tracking_uri(paths.tracking.uri)  # before drawing anything
    ds = ShardDataset(Path(paths.shards) / params.inspect.split)
    cfg = params.model_config(
        num_classes=ds.num_classes, image_size=ds.image_size, class_names=tuple(ds.class_names)
    )
    summary = draw(params.inspect, cfg, ds, paths)
    if paths.tracking is not None:
        t = paths.tracking
        summary["mlflow_run_id"] = runs.log_inspection(
            Path(paths.out), params.data.source, t.uri, t.experiment, t.artifact_location
        )
    return summary


def draw(
    params: InspectParams, cfg: Config, ds: ShardDataset, paths: InspectPaths
) -> dict[str, Any]:
    """Every picture of `ds` into `paths.out` (built beside it, then swapped in) -> summary."""
    out_dir = Path(paths.out)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    factor = max(1, 512 // ds.image_size)  # small frames are enlarged: boxes, text readable
    rng = np.random.default_rng(params.seed)
    picks = np.sort(rng.choice(len(ds), min(params.num_samples, len(ds)), replace=False))
    samples = [ds[int(i)] for i in picks]
    summary: dict[str, Any] = {"samples": [x.image_id for x in samples]}
    _save(tmp / "samples.png", samples_picture(samples, ds, factor))
    with_instances = [s for s in samples if len(s.labels)] or [ds[0]]
    x = with_instances[0]  # drawn with its anchors and mini-mask
    summary["mini_mask"] = _round_trip(x, ds, paths.raw, tmp / "mini_mask_round_trip.png")
    summary["anchors"] = anchor_pictures(x, cfg, params, ds.image_size, factor, tmp)
    summary["class_distribution"] = class_distribution(Path(paths.shards), ds, tmp)
    (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
    replace_dir(tmp, out_dir)
    summary["files"] = sorted(p.name for p in out_dir.iterdir())
    return summary


def samples_picture(samples: list, ds: ShardDataset, factor: int) -> np.ndarray:
    """The samples with their masks (mini-masks expanded), boxes and labels, in a grid."""
    s = ds.image_size
    tiles = []
    for x in samples:
        masks = expand_mini_masks(x.boxes, x.mini_masks, (s, s))  # [N, S, S]
        big_masks = vis.zoom(masks.transpose(1, 2, 0), factor).transpose(2, 0, 1)
        tile = vis.draw_instances(
            zoom_all(x.image, factor), x.boxes * factor, big_masks, x.labels, ds.class_names
        )
        tiles.append(tile)
    return vis.image_grid(tiles, cols=3)


def anchor_pictures(
    x: Any, cfg: Config, params: InspectParams, size: int, factor: int, out: Path
) -> dict[str, Any]:
    """anchors.png (sample `x`'s anchors as its RPN labels them) and anchors_per_level.png ->
    the counts."""
    sizes = cfg.anchors.sizes
    anchors, counts = AnchorGenerator(sizes, cfg.anchors.ratios, cfg.anchors.stride)(size)
    labels = label_anchors(anchors, torch.from_numpy(x.boxes), cfg)
    a = anchors.numpy() * factor
    image = zoom_all(x.image, factor)
    picture = vis.draw_anchors(
        image, a, labels.numpy(), gt_boxes=x.boxes * factor, seed=params.seed
    )
    _save(out / "anchors.png", picture)
    picture = vis.draw_anchors_per_level(
        image, a, counts, per_level=params.anchors_per_level, sizes=sizes, seed=params.seed
    )
    _save(out / "anchors_per_level.png", picture)
    return {
        "image_id": x.image_id,
        "sizes": list(sizes),
        "ratios": list(cfg.anchors.ratios),
        "fg_iou_thresh": cfg.rpn.fg_iou_thresh,
        "bg_iou_thresh": cfg.rpn.bg_iou_thresh,
        "per_level": counts,
        "positive": int((labels == 1).sum()),
        "negative": int((labels == 0).sum()),
        "neutral": int((labels == -1).sum()),
    }


def class_distribution(shards: Path, ds: ShardDataset, out: Path) -> dict[str, Any]:
    """class_distribution.png: instances per class of every split (from the manifests)."""
    per_split = {}
    for split in SPLITS:
        manifest = shards / split / MANIFEST
        if manifest.is_file():
            per_split[split] = json.loads(manifest.read_text())["counts"]["instances_per_class"]
    fig = vis.new_figure(max(5.0, 0.6 * len(ds.class_names) + 2), 3.5)
    vis.plot_class_distribution(fig.add_subplot(1, 1, 1), per_split)
    fig.tight_layout()
    _save(out / "class_distribution.png", vis.figure_to_array(fig))
    return per_split


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
    ann_file = annotation_file(raw_dir, ds.manifest["split"]) if raw_dir else None
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
    args = parser().parse_args(argv)
    cli.run_main(args, lambda: cli.show(run(*inputs(args))), (TrackingError,))


def parser() -> argparse.ArgumentParser:
    ap = cli.parser(__doc__)
    ap.add_argument("--shards", type=Path, default=layout.SHARDS)
    ap.add_argument("--raw", type=Path, help=f"raw folder (default {layout.RAW}/<source>)")
    ap.add_argument("--out", type=Path, default=layout.INSPECT_REPORTS)
    return ap


def inputs(args: argparse.Namespace) -> tuple[Params, InspectPaths]:
    params = load(args.params)
    raw = args.raw or layout.RAW / params.data.source
    tracking = store.locate(args.params, params.mlflow)
    return params, InspectPaths(args.shards, args.out, raw, tracking)


if __name__ == "__main__":
    main()
