"""Building shards: COCO records -> resized images, boxes, labels, mini-masks -> tar shards.

`build_split` plans fixed groups of `samples_per_shard` source images (in image-id order, so the
plan and every byte of output are the same for the same inputs), builds each group in a process
pool, then writes `index.npy`, `report.json` and `manifest.json` (see `mrcnn.data.shards`).

Each image becomes one sample in `mrcnn.data.example.prepare_example`.

Crash safety: each shard is written to a temporary name, fsynced and renamed, and only then is
its `.json` record written (atomically). A shard counts as done only if its record exists, its
fingerprint (options + class map + the records and the sizes of their image files) matches and
the tar's size and sha256 match the record. A re-run skips done shards and redoes the rest.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mrcnn.data import shard_checks
from mrcnn.data import shards as fmt
from mrcnn.data.class_map import class_map_json
from mrcnn.data.coco import ImageRecord, Skip, group_reasons
from mrcnn.data.example import ShardOptions, prepare_example
from mrcnn.data.layout import MANIFEST
from mrcnn.fileio import file_digest, write_json_atomic

logger = logging.getLogger(__name__)


@dataclass
class ShardTask:
    index: int
    out_dir: str
    image_dir: str
    records: list[ImageRecord]
    labels_by_category: dict[int, int]
    options: ShardOptions
    fingerprint: str


def build_shard(task: ShardTask) -> dict[str, Any]:
    """Build one shard (tar + its json record) atomically -> the record."""
    out_dir = Path(task.out_dir)
    name = fmt.shard_name(task.index)
    members: list[tuple[str, bytes]] = []
    samples: list[dict[str, Any]] = []
    skipped: list[Skip] = []
    converted: list[dict[str, Any]] = []
    labels: Counter[int] = Counter()
    crowd = negatives = 0
    for record in task.records:
        try:
            example, skips = prepare_example(
                record, Path(task.image_dir), task.labels_by_category, task.options
            )
        except Exception as e:  # a record nobody foresaw must not stop the build either
            logger.exception("image %s: unexpected error", record.image_id)
            detail = f"{type(e).__name__}: {e}"
            example, skips = (
                None,
                [Skip("unexpected_error", record.image_id, None, record.file_name, detail)],
            )
        skipped.extend(skips)
        if example is None:
            continue
        samples.append({"key": example.key, "image_id": record.image_id, "first": len(members)})
        members.extend(example.members)
        labels.update(example.labels)
        crowd += example.num_crowd
        negatives += not example.labels
        if example.converted:
            converted.append(
                {
                    "reason": example.converted,
                    "image_id": record.image_id,
                    "file_name": record.file_name,
                }
            )
    tmp = out_dir / f".{name}.tmp-{os.getpid()}"
    ranges = fmt.write_tar(tmp, members)
    for sample in samples:
        first = sample.pop("first")
        sample["members"] = [list(ranges[first + k]) for k in range(3)]
    result = {
        "file": name,
        "fingerprint": task.fingerprint,
        "bytes": tmp.stat().st_size,
        "sha256": file_digest(tmp),
        "samples": samples,
        "labels": {str(k): v for k, v in sorted(labels.items())},
        "crowd": crowd,
        "negatives": negatives,
        "skipped": [s.to_dict() for s in skipped],
        "converted": converted,
    }
    os.replace(tmp, out_dir / name)
    write_json_atomic(out_dir / _record_name(task.index), result, indent=1)
    return result


def build_split(
    records: list[ImageRecord],
    image_dir: Path,
    out_dir: Path,
    classes: list[tuple[int, str]],
    options: ShardOptions,
    *,
    source_skipped: Sequence[Skip] = (),
    source_counts: dict[str, int] | None = None,
    num_workers: int = 0,
    extra_manifest: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build (or resume) one split's shards into `out_dir` -> the manifest.

    records:  the split's images (any order; they are sorted by image id)
    classes:  [(category_id, name)]; contiguous label i + 1 is entry i
    source_skipped: records already rejected while parsing the annotation file (reported)
    num_workers: processes (0 = all cores, 1 = this process)
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".*.tmp*"):  # leftovers of an interrupted run
        stale.unlink()
    for name in (MANIFEST, fmt.INDEX):  # until this build ends, the split is not readable
        (out_dir / name).unlink(missing_ok=True)
    labels_by_category = {cat: i + 1 for i, (cat, _) in enumerate(classes)}
    records = sorted(records, key=lambda r: r.image_id)
    groups = [
        records[i : i + options.samples_per_shard]
        for i in range(0, len(records), options.samples_per_shard)
    ]
    tasks = [
        ShardTask(
            k,
            str(out_dir),
            str(image_dir),
            group,
            labels_by_category,
            options,
            _fingerprint(group, Path(image_dir), labels_by_category, options),
        )
        for k, group in enumerate(groups)
    ]
    _remove_unplanned(out_dir, len(tasks))
    results: dict[int, dict[str, Any]] = {}
    todo = []
    for task in tasks:
        done = _finished_record(out_dir, task)
        if done is None:
            todo.append(task)
        else:
            results[task.index] = done
    if results:
        logger.info(
            "%s: %d of %d shards already built, resuming", out_dir, len(results), len(tasks)
        )
    workers = min(num_workers or os.cpu_count() or 1, max(1, len(todo)))
    bar = tqdm(
        total=len(records),
        initial=len(records) - sum(len(t.records) for t in todo),
        desc=f"shards {out_dir.name}",
        unit="img",
    )
    if workers <= 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # like a pool worker: one core
        try:
            for task in todo:
                results[task.index] = build_shard(task)
                bar.update(len(task.records))
        finally:
            torch.set_num_threads(threads)
    else:
        # fork: workers start at once with everything imported (spawn re-imports torch, seconds
        # per worker). Safe because each worker runs torch single-threaded (`_init_worker`), so
        # it never enters the OpenMP pool it inherited; the DataLoader relies on the same.
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
            futures = {pool.submit(build_shard, t): t for t in todo}
            for fut in cf.as_completed(futures):
                task = futures[fut]
                results[task.index] = fut.result()
                bar.update(len(task.records))
    bar.close()
    manifest = _finish(
        out_dir,
        [results[t.index] for t in tasks],
        classes,
        options,
        list(source_skipped),
        source_counts or {},
        extra_manifest or {},
    )
    seconds = time.perf_counter() - t0
    logger.info(
        "%s: %d samples in %d shards (%.1fs)",
        out_dir,
        manifest["counts"]["images"],
        len(tasks),
        seconds,
    )
    return manifest


def _finish(
    out_dir: Path,
    shard_records: list[dict[str, Any]],
    classes: list[tuple[int, str]],
    options: ShardOptions,
    source_skipped: list[Skip],
    source_counts: dict[str, int],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Aggregate the per-shard records into index.npy, report.json and manifest.json."""
    rows = []
    for k, rec in enumerate(shard_records):
        for s in rec["samples"]:
            (jo, js), (io_, is_), (mo, ms) = s["members"]
            rows.append([k, s["image_id"], jo, js, io_, is_, mo, ms])
    index = np.asarray(rows, dtype=np.int64).reshape(-1, len(fmt.INDEX_COLUMNS))
    tmp = out_dir / f".{fmt.INDEX}.tmp"
    with open(tmp, "wb") as f:
        np.save(f, index)
    os.replace(tmp, out_dir / fmt.INDEX)

    skipped = [s.to_dict() for s in source_skipped]
    skipped += [s for rec in shard_records for s in rec["skipped"]]
    image_level = {
        "invalid_image_entry",
        "duplicate_image_id",
        "missing_image",
        "corrupt_image",
        "image_size_mismatch",
        "no_annotations",
        "no_valid_annotations",
        "unexpected_error",
    }
    skip_objs = [Skip(**s) for s in skipped]
    converted = [c for rec in shard_records for c in rec["converted"]]
    report = {
        "skipped_images": group_reasons([s for s in skip_objs if s.reason in image_level]),
        "skipped_annotations": group_reasons([s for s in skip_objs if s.reason not in image_level]),
        "converted_images": dict(sorted(Counter(c["reason"] for c in converted).items())),
        "ignored_regions": sum(rec["crowd"] for rec in shard_records),  # crowd, once per region
        "negatives_kept": sum(rec["negatives"] for rec in shard_records),
        "skipped": skipped,
        "converted": converted,
    }
    write_json_atomic(out_dir / fmt.REPORT, report, indent=1)

    per_label: Counter[int] = Counter()
    for rec in shard_records:
        per_label.update({int(k): v for k, v in rec["labels"].items()})
    names = ["background"] + [name for _, name in classes]
    manifest = {
        "format": fmt.FORMAT,
        "format_version": fmt.FORMAT_VERSION,
        "split": out_dir.name,
        "image_size": options.image_size,
        "resize_mode": options.resize_mode,
        "mini_mask_shape": options.mini_mask_shape,
        "num_classes": len(names),
        "class_names": names,
        "class_map": class_map_json(classes),
        "counts": {
            "images": int(index.shape[0]),
            "instances": sum(per_label.values()),
            "instances_per_class": {names[k]: per_label.get(k, 0) for k in range(1, len(names))},
            "negatives": report["negatives_kept"],
            "ignored_regions": report["ignored_regions"],
            "skipped_images": sum(report["skipped_images"].values()),
            "skipped_annotations": sum(report["skipped_annotations"].values()),
            "converted_images": len(converted),
            "shards": len(shard_records),
            **{f"source_{k}": v for k, v in source_counts.items()},
        },
        "index": {
            "file": fmt.INDEX,
            "columns": list(fmt.INDEX_COLUMNS),
            "sha256": file_digest(out_dir / fmt.INDEX),
        },
        "shards": [
            {
                "file": r["file"],
                "samples": len(r["samples"]),
                "bytes": r["bytes"],
                "sha256": r["sha256"],
            }
            for r in shard_records
        ],
        "report": fmt.REPORT,
        "params": dataclasses.asdict(options),
        **extra,
    }
    manifest = json.loads(json.dumps(manifest))  # as a reader will load it: lists, str keys
    manifest[shard_checks.MANIFEST_DIGEST] = shard_checks.manifest_digest(manifest)
    write_json_atomic(out_dir / MANIFEST, manifest, indent=1)
    return manifest


def _fingerprint(
    records: list[ImageRecord],
    image_dir: Path,
    labels_by_category: dict[int, int],
    options: ShardOptions,
) -> str:
    """sha256 of everything a shard's bytes depend on (file sizes stand in for pixels)."""
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [fmt.FORMAT_VERSION, dataclasses.asdict(options), sorted(labels_by_category.items())]
        ).encode()
    )
    for r in records:
        path = image_dir / r.file_name
        size = path.stat().st_size if path.is_file() else -1
        entry = [r.image_id, r.file_name, r.height, r.width, r.annotations, size]
        h.update(json.dumps(entry, sort_keys=True).encode())
    return h.hexdigest()


def _record_name(index: int) -> str:
    return fmt.shard_name(index).replace(".tar", ".json")


def _finished_record(out_dir: Path, task: ShardTask) -> dict[str, Any] | None:
    """The shard's record if the shard is complete and built from the same inputs."""
    rec_path = out_dir / _record_name(task.index)
    tar_path = out_dir / fmt.shard_name(task.index)
    try:
        rec = json.loads(rec_path.read_text())
    except (OSError, ValueError):
        return None
    if rec.get("fingerprint") != task.fingerprint or not tar_path.is_file():
        return None
    if tar_path.stat().st_size != rec.get("bytes") or file_digest(tar_path) != rec.get("sha256"):
        logger.warning("%s does not match its record; rebuilding it", tar_path)
        return None
    return rec


def _remove_unplanned(out_dir: Path, num_shards: int) -> None:
    """Drop shards (and records) beyond the plan, e.g. from an earlier, larger build."""
    for path in list(out_dir.glob("shard-*.tar")) + list(out_dir.glob("shard-*.json")):
        try:
            k = int(path.stem.split("-")[1])
        except (IndexError, ValueError):
            continue
        if k >= num_shards:
            path.unlink()


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core; intra-op threads would oversubscribe
