"""Stage `shards`: `data/raw/<source>/` -> `data/shards/{train,val}/` (see `mrcnn.data.shards`).

Every split present in the raw folder is resized and padded (`shards.image_size`,
`shards.resize_mode`), its boxes computed from the masks, its masks stored as mini-masks
(`shards.mini_mask_shape`), its category ids mapped to contiguous labels 1..K (one map for all
splits, recorded in each manifest), and written as tar shards with an index, a manifest and a
report of every skipped record. Uses all cores; an interrupted run resumes.

    python -m pipeline.shards [--params params.yaml]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from mrcnn.data.coco import class_map, load_coco_split
from mrcnn.data.writer import ShardOptions, build_split
from pipeline.params import SPLITS, DataParams, ShardsParams, load_section, to_dict

logger = logging.getLogger(__name__)


def run(params: ShardsParams, raw_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Build the shards of every split found in `raw_dir` -> per-split counts."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    ann_files = {s: raw_dir / "annotations" / f"instances_{s}.json" for s in SPLITS}
    splits = [s for s in SPLITS if ann_files[s].is_file()]
    if not splits:
        raise FileNotFoundError(f"no annotations/instances_{{train,val}}.json under {raw_dir}; "
                                "run `python -m pipeline.download` first")  # fmt: skip
    for stale in sorted(set(SPLITS) - set(splits)):  # e.g. train from an earlier source
        if (out_dir / stale).exists():
            logger.warning("removing %s: %s has no %s split", out_dir / stale, raw_dir, stale)
            shutil.rmtree(out_dir / stale)
    parsed = {s: load_coco_split(ann_files[s]) for s in splits}
    classes = class_map([parsed[s].categories for s in splits])
    summary: dict[str, Any] = {}
    for split in splits:
        keep_negatives = (
            params.keep_negatives_train if split == "train" else params.keep_negatives_val
        )
        options = ShardOptions(
            image_size=params.image_size,
            resize_mode=params.resize_mode,
            min_size=params.min_size,
            mini_mask_shape=params.mini_mask_shape,
            image_format=params.image_format,
            jpeg_quality=params.jpeg_quality,
            samples_per_shard=params.samples_per_shard,
            keep_negatives=keep_negatives,
            min_box_size=params.min_box_size,
        )
        source = {
            "annotations": str(ann_files[split]),
            "annotations_sha256": _sha256(ann_files[split]),
            "images": str(raw_dir / split),
        }
        manifest = build_split(
            parsed[split].records,
            raw_dir / split,
            out_dir / split,
            classes,
            options,
            source_skipped=parsed[split].skipped,
            source_counts={
                "images": parsed[split].num_images,
                "annotations": parsed[split].num_annotations,
            },  # fmt: skip
            num_workers=params.num_workers,
            extra_manifest={"params": to_dict(params), "source": source},
        )
        summary[split] = manifest["counts"]
    return summary


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml", help="params file (sections data, shards)")
    ap.add_argument("--raw", type=Path, help="raw COCO-layout folder (default data/raw/<source>)")
    ap.add_argument("--out", type=Path, default=Path("data/shards"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    data = load_section(args.params, "data", DataParams)
    params = load_section(args.params, "shards", ShardsParams)
    raw = args.raw or Path("data/raw") / data.source
    print(json.dumps(run(params, raw, args.out), indent=1))


if __name__ == "__main__":
    main()
