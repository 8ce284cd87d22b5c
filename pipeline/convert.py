"""Convert a labelled dataset to the COCO layout the pipeline reads.

    python -m pipeline.convert --format labelme IN OUT [--val-fraction 0.2]

Formats: auto (default: detected), coco, coco_single, labelme, via, yolo, masks (see
`pipeline.formats`). Writes OUT/{train,val}/, OUT/annotations/instances_{train,val}.json and
OUT/conversion_report.json; prints one summary line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.formats import FORMATS, convert
from pipeline.formats.builder import summary_line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", type=Path, help="the dataset folder (or the json, for coco_single)")
    ap.add_argument("out", type=Path, help="the COCO-layout folder to write")
    ap.add_argument("--format", default="auto", choices=FORMATS)
    ap.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of images for val when the format has no split (by image)",
    )
    ap.add_argument(
        "--default-class",
        default="object",
        help="class name for formats without one (VIA regions, masks)",
    )
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = convert(
            args.src,
            args.out,
            args.format,
            val_fraction=args.val_fraction,
            default_class=args.default_class,
        )
    except (OSError, ValueError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_line(summary, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
