"""Data throughput: shard building (images/s per core) and the training loader (images/s).

Makes a COCO-like dataset in a temporary folder (640 x 480 / 480 x 640 JPEGs of textured
images with 3..12 realistic polygon instances each), builds shards at `--size` (1024 by
default, square mode, 56 x 56 mini-masks, JPEG q95), then times:

  build    one process, one torch thread: images/s per core (the stage runs one process per core)
  decode   `ShardDataset[i]` alone, one process
  loader   `TrainLoader` (read + flip + collate into a `Batch`) with 0 and N worker processes

    python bench/data_speed.py [--images 96] [--size 1024] [--batch-size 8] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrcnn.data import ShardDataset, TrainLoader  # noqa: E402
from mrcnn.data.coco import class_map, load_coco_split  # noqa: E402
from mrcnn.data.writer import ShardOptions, build_split  # noqa: E402


def make_dataset(root: Path, n: int, seed: int = 0) -> None:
    """n COCO-style JPEGs with polygon instances, in the layout `download` writes."""
    import json

    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, anns = [], []
    for i in range(n):
        h, w = (480, 640) if i % 4 else (640, 480)
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        base = rng.uniform(40, 215, 3)
        gy, gx = rng.uniform(-60, 60, (2, 3))
        img = base + yy[..., None] * gy + xx[..., None] * gx
        img = img + rng.normal(0, 10, (h // 4 + 1, w // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)[:h, :w]
        img = img + rng.normal(0, 4, (h, w, 3))  # fine detail, as in photos
        name = f"{i + 1:012d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            root / "train" / name, quality=90
        )
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        for _ in range(int(rng.integers(3, 13))):
            r = float(rng.uniform(0.04, 0.3) * min(h, w))
            cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
            k = int(rng.integers(12, 40))
            ang = np.sort(rng.uniform(0, 2 * math.pi, k))
            rad = r * rng.uniform(0.6, 1.0, k)
            poly = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).reshape(-1)
            cat = int(rng.integers(1, 81))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": cat,
                    "segmentation": [poly.round(2).tolist()],
                    "iscrowd": 0,
                }
            )
    cats = [{"id": c, "name": f"class{c}"} for c in range(1, 81)]
    doc = {"images": images, "annotations": anns, "categories": cats}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(doc))


def cpu_seconds() -> float:
    """CPU time of this process (all its threads), user + system."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def time_loader(
    ds: ShardDataset, batch_size: int, workers: int, batches: int
) -> tuple[float, float]:
    """-> (images/s wall clock, CPU ms per image spent in this process)."""
    loader = TrainLoader(ds, batch_size, seed=0, num_workers=workers)
    it = iter(loader)
    for _ in range(max(2, workers * 2)):  # warm-up: worker start and prefetch
        next(it)
    t0, c0 = time.perf_counter(), cpu_seconds()
    for _ in range(batches):
        batch = next(it)
    dt, dc = time.perf_counter() - t0, cpu_seconds() - c0
    assert batch.images.shape == (batch_size, 3, ds.image_size, ds.image_size)
    del it
    return batches * batch_size / dt, 1000 * dc / (batches * batch_size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=24)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="data_speed_") as tmp:
        raw, out = Path(tmp) / "raw", Path(tmp) / "shards" / "train"
        make_dataset(raw, args.images)
        parsed = load_coco_split(raw / "annotations" / "instances_train.json")
        opts = ShardOptions(image_size=args.size, mini_mask_shape=56, samples_per_shard=32)
        t0, c0 = time.perf_counter(), cpu_seconds()
        build_split(
            parsed.records, raw / "train", out, class_map([parsed.categories]), opts, num_workers=1
        )
        build_wall = args.images / (time.perf_counter() - t0)
        build_cpu = 1000 * (cpu_seconds() - c0) / args.images
        ds = ShardDataset(out)
        shard_mb = sum(s["bytes"] for s in ds.manifest["shards"]) / 2**20
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        decode = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for i in range(len(ds)):
                ds[i]
            decode.append(len(ds) / (time.perf_counter() - t0))
        torch.set_num_threads(threads)
        loader = {
            w: [time_loader(ds, args.batch_size, w, args.batches) for _ in range(args.repeats)]
            for w in args.workers
        }

    print(
        f"device: {cores}-core CPU, torch {torch.__version__}; {args.images} images 640x480 -> "
        f"{args.size} px, {shard_mb / args.images * 1024:.0f} KB/sample in shards; "
        f"best of {args.repeats}"
    )
    print(
        f"shard build       : {build_wall:6.1f} images/s per core "
        f"({build_cpu:.0f} CPU ms/image; 1 process, 1 torch thread)"
    )
    print(f"ShardDataset[i]   : {max(decode):6.1f} images/s (1 process)")
    for w, runs in loader.items():
        rate, cpu = max(runs)
        where = "in-process" if w == 0 else f"{w} workers"
        print(
            f"TrainLoader (B={args.batch_size}) : {rate:6.1f} images/s ({where}; "
            f"{cpu:.1f} CPU ms/image in the main process)"
        )
    if 0 in loader:
        cpu = min(c for _, c in loader[0])
        print(
            f"extrapolated x16  : ~{16 * 1000 / cpu:.0f} images/s (16 x the in-process CPU "
            "cost per image; an extrapolation, not a measurement)"
        )


if __name__ == "__main__":
    main()
