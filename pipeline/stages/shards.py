"""Stage `shards`: `data/raw/<source>/` -> `data/shards/{train,val}/` (see `mrcnn.data.shards`).

Every split present in the raw folder is resized and padded (`shards.image_size`,
`shards.resize_mode`), its boxes computed from the masks, its masks stored as mini-masks
(`shards.mini_mask_shape`), its category ids mapped to contiguous labels 1..K (one class map for
all splits, recorded in each manifest), and written as tar shards with an index, a manifest and
a report of every skipped record. Uses all cores by default (`shards.num_workers: -1`); an
interrupted run resumes. Prints one line per split (images, instances, ignored regions, what was
left out); the counts are in each split's manifest.json, every record left out in its
report.json.

`--out s3://bucket/prefix` (any fsspec URL) builds each split in a local staging folder (one per
URL under the system temp dir, so an interrupted build resumes there too), then uploads it with
`mrcnn.data.storage.upload_split` (shards, index, report, the manifest last) and removes the
staging copy. The val split also gets a copy of its COCO annotations (`annotations.json`, the
file the manifest's `source.annotations_sha256` names), so periodic validation on a cluster
and the evaluate stage read them from the bucket like the shards
(`pipeline.training.periodic_eval`). The manifest is the same as a local build's. An outage of
the store during the upload is retried for `MRCNN_STORAGE_RETRY_S` seconds (default 120,
`mrcnn.data.retries`); past that the stage stops with one line and the staging folder stays,
so the same command later uploads it again without rebuilding.

    python -m pipeline.shards [--params params.yaml] [--raw DIR] [--out DIR | --out URL]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrcnn.data import retries, storage
from mrcnn.data.coco import class_map, load_coco_split
from mrcnn.data.layout import SPLITS, annotation_file, image_dir
from mrcnn.data.shards import GROUND_TRUTH, REPORT
from mrcnn.data.writer import build_split
from mrcnn.fileio import file_digest
from pipeline import cli, layout
from pipeline.formats.builder import plural
from pipeline.paramfile import to_dict, worker_processes
from pipeline.params import Params, ShardsParams, load

logger = logging.getLogger(__name__)


# The splits uploaded by `--out URL` with their COCO annotations (`GROUND_TRUTH`): val only, what
# periodic validation needs (train annotations can be large and nothing remote reads them).
GROUND_TRUTH_SPLITS = ("val",)


@dataclass(frozen=True)
class ShardsPaths:
    """What shards reads and writes."""

    raw: Path  # the raw COCO-layout folder, data/raw/<data.source>
    out: Path | str = layout.SHARDS  # a folder, or a URL such as s3://bucket/prefix


def run(params: Params, paths: ShardsPaths) -> dict[str, Any]:
    """Build the shards of every split found in `paths.raw` into `paths.out` (`shards`
    section) -> per-split counts."""
    raw = Path(paths.raw)
    if storage.is_url(paths.out):
        return _run_to_url(params.shards, raw, str(paths.out))
    return _build(params.shards, raw, Path(str(paths.out).removeprefix("file://")))


def staging_dir(url: str) -> Path:
    """The local folder where the splits for `url` are built before upload (stable per URL, so
    a build interrupted before its upload resumes)."""
    key = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"mrcnn-shards-{key}"


def _run_to_url(params: ShardsParams, raw_dir: Path, url: str) -> dict[str, Any]:
    staging = staging_dir(url)
    summary = _build(params, raw_dir, staging)
    fs, root = storage.filesystem(url)
    root = root.rstrip("/")
    for stale in sorted(set(SPLITS) - set(summary)):
        where = f"{url}/{stale}"
        if retries.call(where, "checking", fs.exists, f"{root}/{stale}"):
            logger.warning("removing %s: %s has no %s split", where, raw_dir, stale)
            retries.call(where, "removing", fs.rm, f"{root}/{stale}", recursive=True)
    for split in summary:
        local = staging / split
        if split in GROUND_TRUTH_SPLITS:
            shutil.copyfile(annotation_file(raw_dir, split), local / GROUND_TRUTH)
        storage.upload_split(local, storage.join(url, split))
    shutil.rmtree(staging, ignore_errors=True)
    return summary


def _build(params: ShardsParams, raw_dir: Path, out_dir: Path) -> dict[str, Any]:
    ann_files = {s: annotation_file(raw_dir, s) for s in SPLITS}
    splits = [s for s in SPLITS if ann_files[s].is_file()]
    if not splits:
        raise FileNotFoundError(
            f"no {annotation_file('', '{train,val}')} under {raw_dir}; "
            "run `python -m pipeline.download` first"
        )
    for stale in sorted(set(SPLITS) - set(splits)):  # e.g. train from an earlier source
        if (out_dir / stale).exists():
            logger.warning("removing %s: %s has no %s split", out_dir / stale, raw_dir, stale)
            shutil.rmtree(out_dir / stale)
    parsed = {s: load_coco_split(ann_files[s]) for s in splits}
    classes = class_map([parsed[s].categories for s in splits])
    summary: dict[str, Any] = {}
    for split in splits:
        source = {
            "annotations": str(ann_files[split]),
            "annotations_sha256": file_digest(ann_files[split]),
            "images": str(image_dir(raw_dir, split)),
        }
        counts = {  # the raw file's, as `count_annotations` tells them (an ignored region once)
            "images": parsed[split].num_images,
            "instances": parsed[split].num_instances,
            "ignored_regions": parsed[split].num_ignored_regions,
        }
        manifest = build_split(
            parsed[split].records,
            image_dir(raw_dir, split),
            out_dir / split,
            classes,
            params.options(split),
            source_skipped=parsed[split].skipped,
            source_counts=counts,
            num_workers=max(1, worker_processes(params.num_workers)),  # 1: this process
            extra_manifest={"params": to_dict(params), "source": source},
        )
        summary[split] = manifest["counts"]
    return summary


def summary_lines(summary: dict[str, Any], out: Path | str) -> list[str]:
    """One line per split of `run`'s counts (the manifests and reports hold the rest)."""
    lines = []
    for split, c in summary.items():
        left = c["skipped_images"] + c["skipped_annotations"]
        where = storage.join(str(out), split)
        lines.append(
            f"{split}: {c['images']} images, {c['instances']} instances, "
            f"{plural(c['ignored_regions'], 'ignored region')}"
            + (f", {c['negatives']} without objects" if c["negatives"] else "")
            + (
                f"; left out {c['skipped_images']} images, {c['skipped_annotations']} "
                f"annotations ({where}/{REPORT})"
                if left
                else "; nothing left out"
            )
            + f" -> {where}"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    cli.run_main(args, lambda: run_and_say(*inputs(args)), (retries.StorageUnavailableError,))


def run_and_say(params: Params, paths: ShardsPaths) -> dict[str, Any]:
    """`run`, then one summary line per split on stdout (the JSON stays in its files)."""
    summary = run(params, paths)
    sys.stdout.write("".join(line + "\n" for line in summary_lines(summary, paths.out)))
    return summary


def parser() -> argparse.ArgumentParser:
    ap = cli.parser(__doc__)
    ap.add_argument(
        "--raw", type=Path, help=f"raw COCO-layout folder (default {layout.RAW}/<source>)"
    )
    ap.add_argument(
        "--out",
        default=str(layout.SHARDS),
        help="a folder or a URL (s3://bucket/prefix; credentials and AWS_ENDPOINT_URL from the "
        "environment) (default %(default)s)",
    )
    return ap


def inputs(args: argparse.Namespace) -> tuple[Params, ShardsPaths]:
    params = load(args.params)
    root = layout.project_root(args.params)
    raw = layout.under(root, args.raw) if args.raw else layout.raw_dir(root, params.data.source)
    return params, ShardsPaths(raw=raw, out=layout.place(root, args.out))


if __name__ == "__main__":
    main()
