"""Stage `download`: a COCO-layout folder `data/raw/<source>/` from the configured source.

    data/raw/<source>/{train,val}/                       images
    data/raw/<source>/annotations/instances_{train,val}.json

Sources (`params.yaml`, section `data`):
    shapes  the synthetic shapes dataset, generated (`mrcnn.data.shapes`); the default
    coco    COCO 2017 from `data.coco_base_url` (archives cached in `data/downloads/`,
            resumable and md5-verified, see `pipeline.fetch`)
    local   your labelled folder (`data.local_dir`) in any format `pipeline.formats` reads
            (`data.local_format`: auto | coco | coco_single | labelme | via | yolo | masks),
            converted with a report of every record left out (`conversion_report.json`)

The folder appears complete or not at all: everything is built beside it and renamed into
place. A finished download is not repeated.

    python -m pipeline.download [--params params.yaml] [--splits val]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mrcnn.data import shapes
from mrcnn.data.coco import count_annotations
from mrcnn.data.layout import SPLITS, annotation_file, image_dir
from mrcnn.fileio import write_json_atomic
from pipeline import cli, formats, layout
from pipeline.fetch import RemoteFile, download_file, extract_zip
from pipeline.formats.builder import summary_line
from pipeline.paramfile import to_dict
from pipeline.params import DataParams, Params, load

logger = logging.getLogger(__name__)

# The official COCO 2017 archives: path under the base URL, size in bytes, md5.
COCO_FILES = {
    "train": RemoteFile("zips/train2017.zip", 19_336_861_798, "cced6f7f71b7629ddf16f17bbcfab6b2"),
    "val": RemoteFile("zips/val2017.zip", 815_585_330, "442b8da7639aecaf257c1dceb8ba8c80"),
    "annotations": RemoteFile(
        "annotations/annotations_trainval2017.zip", 252_907_541, "f4bbac642086de4f52a3fdda2de5fa2c"
    ),
}
STAMP = "download.json"


@dataclass(frozen=True)
class DownloadPaths:
    """What download reads and writes."""

    out: Path = layout.RAW  # writes <out>/<data.source>/
    cache: Path = layout.DOWNLOADS  # the COCO archives, kept for a resumed or repeated download
    # The COCO archives to fetch: paths under `data.coco_base_url`, with size and md5.
    coco_files: Mapping[str, RemoteFile] = field(default_factory=lambda: dict(COCO_FILES))


def run(params: Params, paths: DownloadPaths) -> dict[str, Any]:
    """Materialise `<paths.out>/<data.source>` (the splits of `data.splits`) -> summary (per
    split: images, instances, ignored regions)."""
    data = params.data
    splits = tuple(data.splits)
    if not splits or not set(splits) <= set(SPLITS):
        raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {splits}")
    target = Path(paths.out) / data.source
    if data.source == "shapes":
        _shapes(data, target, splits)
    elif data.source == "coco":
        _coco(data, target, splits, Path(paths.cache), paths.coco_files)
    else:
        _local(data, target, splits)
    return summarize(data.source, target, splits)


def summarize(source: str, target: Path, splits: tuple[str, ...]) -> dict[str, Any]:
    """What a downloaded folder holds: per split, images, instances and ignored regions (crowd
    annotations, the copies of one region counted once: `count_annotations`)."""
    summary: dict[str, Any] = {"source": source, "root": str(target), "splits": {}}
    for split in splits:
        ann = json.loads(annotation_file(target, split).read_text())
        summary["splits"][split] = {
            "images": len(ann["images"]),
            **count_annotations(ann["annotations"]),
        }
    return summary


def _shapes(params: DataParams, target: Path, splits: tuple[str, ...]) -> None:
    stamp = {"source": "shapes", "spec": to_dict(params.shapes), "splits": list(splits)}
    if _read_stamp(target) == stamp:
        logger.info("%s is up to date", target)
        return
    tmp = _fresh_tmp(target)
    for split in splits:
        counts = shapes.write_split(params.shapes, tmp, split)
        logger.info(
            "shapes %s: %d images, %d instances", split, counts["images"], counts["annotations"]
        )
    _commit(tmp, target, stamp)


def _coco(
    params: DataParams,
    target: Path,
    splits: tuple[str, ...],
    cache_dir: Path,
    files: Mapping[str, RemoteFile],
) -> None:
    """Download, verify and extract COCO 2017 into the common layout."""
    base = params.coco_base_url.rstrip("/")
    target.mkdir(parents=True, exist_ok=True)
    missing_ann = [s for s in splits if not annotation_file(target, s).is_file()]
    if missing_ann:
        spec = files["annotations"]
        archive = download_file(
            f"{base}/{spec.path}", cache_dir / spec.name, size=spec.size, md5=spec.md5
        )
        wanted = {s: annotation_file("", archive_split(s)).as_posix() for s in missing_ann}
        tmp = target / ".annotations.extracting"
        extract_zip(archive, tmp, members=lambda name: name in wanted.values())
        for s, member in wanted.items():
            if not (tmp / member).is_file():
                raise FileNotFoundError(f"{archive.name} has no {member}")
            annotation_file(target, s).parent.mkdir(exist_ok=True)
            os.replace(tmp / member, annotation_file(target, s))
        shutil.rmtree(tmp)
    for split in splits:
        if image_dir(target, split).is_dir():
            logger.info("%s already extracted", image_dir(target, split))
            continue
        spec = files[split]
        archive = download_file(
            f"{base}/{spec.path}", cache_dir / spec.name, size=spec.size, md5=spec.md5
        )
        tmp = target / f".{split}.extracting"
        extract_zip(archive, tmp)
        inner = image_dir(tmp, archive_split(split))
        if not inner.is_dir():
            raise FileNotFoundError(f"{archive.name} has no top-level folder {inner.name}/")
        os.replace(inner, image_dir(target, split))  # atomic: the split folder appears complete
        shutil.rmtree(tmp)
        if not params.keep_archives:
            archive.unlink()
    _write_stamp(target, {"source": "coco", "base_url": base, "splits": sorted(splits)})


def archive_split(split: str) -> str:
    """The name of `split` inside COCO 2017's archives, which have our layout otherwise:
    `val2017/` and `annotations/instances_val2017.json`."""
    return f"{split}2017"


def _local(params: DataParams, target: Path, splits: tuple[str, ...]) -> None:
    """Convert the user's folder (`data.local_format`, detected when `auto`) into the COCO
    layout, with its conversion report (`pipeline.formats`); skipped when nothing changed."""
    src = Path(params.local_dir)
    if not src.exists():
        raise FileNotFoundError(f"data.local_dir={src} does not exist")
    stamp = {
        "source": "local",
        "local_dir": str(src),
        "local_format": params.local_format,
        "val_fraction": params.val_fraction,
        "files": _fingerprint(src),
    }
    old = _read_stamp(target) or {}
    if {k: old.get(k) for k in stamp} == stamp:
        logger.info("%s is up to date with %s", target, src)
        return
    tmp = target.with_name(f".{target.name}.converting")
    summary = formats.convert(src, tmp, params.local_format, val_fraction=params.val_fraction)
    _commit(tmp, target, {**stamp, "format": summary["format"], "splits": list(splits)})
    logger.info("%s", summary_line(summary, target))  # the report where it is now, not in tmp


def _fingerprint(src: Path) -> list[int]:
    """[files, bytes, newest mtime in ns] under `src`: what tells a changed dataset."""
    files = [p for p in ([src] if src.is_file() else src.rglob("*")) if p.is_file()]
    stats = [p.stat() for p in files]
    return [
        len(stats),
        sum(s.st_size for s in stats),
        max((s.st_mtime_ns for s in stats), default=0),
    ]


def _fresh_tmp(target: Path) -> Path:
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _commit(tmp: Path, target: Path, stamp: dict[str, Any]) -> None:
    (tmp / STAMP).write_text(json.dumps(stamp, indent=1))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def _read_stamp(target: Path) -> dict[str, Any] | None:
    try:
        return json.loads((target / STAMP).read_text())
    except (OSError, ValueError):
        return None


def _write_stamp(target: Path, stamp: dict[str, Any]) -> None:
    write_json_atomic(target / STAMP, stamp, indent=1)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    cli.run_main(args, lambda: cli.show(run(*inputs(args))))


def parser() -> argparse.ArgumentParser:
    ap = cli.parser(__doc__)
    ap.add_argument("--splits", nargs="+", choices=SPLITS, help="override data.splits")
    ap.add_argument("--out", default=layout.RAW, type=Path, help="writes OUT/<source>/")
    ap.add_argument("--cache", default=layout.DOWNLOADS, type=Path, help="COCO archives")
    return ap


def inputs(args: argparse.Namespace) -> tuple[Params, DownloadPaths]:
    """The params file (`--splits` overriding `data.splits`) and the paths of the command line."""
    params = load(args.params)
    if args.splits:
        params = replace(params, data=replace(params.data, splits=tuple(args.splits)))
    root = layout.project_root(args.params)
    return params, DownloadPaths(
        out=layout.under(root, args.out), cache=layout.under(root, args.cache)
    )


if __name__ == "__main__":
    main()
