"""Loader images/s with shards on local disk, in S3 (ranged GETs), and in S3 with the per-node
cache (cold: downloads each shard once; warm: the cached copies), back to back in one process.

The S3 server is moto's (tests/services.py) on 127.0.0.1: the S3 numbers measure the client path
(s3fs, one ranged GET per sample) plus a Python server on the same cores, not a real store's
network latency, which makes uncached reads slower still and the cache worth more.

    python bench/storage_speed.py [--images 64] [--size 512] [--batch-size 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.data_speed import make_dataset  # noqa: E402
from mrcnn.data import ShardDataset, TrainLoader, storage  # noqa: E402
from mrcnn.data.coco import class_map, load_coco_split  # noqa: E402
from mrcnn.data.writer import ShardOptions, build_split  # noqa: E402
from tests import services  # noqa: E402


def images_per_s(ds: ShardDataset, batch_size: int) -> float:
    """One pass over the split through `TrainLoader` (read + flip + collate), in-process."""
    loader = TrainLoader(ds, batch_size, seed=0)
    batches = len(ds) // batch_size
    it = iter(loader)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="storage_speed_") as tmp:
        tmp = Path(tmp)
        make_dataset(tmp / "raw", args.images)
        parsed = load_coco_split(tmp / "raw" / "annotations" / "instances_train.json")
        opts = ShardOptions(image_size=args.size, mini_mask_shape=28, samples_per_shard=16)
        local = tmp / "shards" / "train"
        build_split(
            parsed.records, tmp / "raw" / "train", local, class_map([parsed.categories]), opts
        )
        s3 = services.start_s3(tmp)
        os.environ.update(s3.env)
        try:
            url = s3.make_bucket("bench") + "/shards/train"
            storage.upload_split(local, url)
            results: dict[str, list[float]] = {"local": [], "s3": [], "s3_cold": [], "s3_warm": []}
            for r in range(args.repeats):
                results["local"].append(images_per_s(ShardDataset(local), args.batch_size))
                results["s3"].append(images_per_s(ShardDataset(url), args.batch_size))
                cache = tmp / f"cache{r}"
                results["s3_cold"].append(
                    images_per_s(ShardDataset(url, cache_dir=cache), args.batch_size)
                )
                results["s3_warm"].append(
                    images_per_s(ShardDataset(url, cache_dir=cache), args.batch_size)
                )
        finally:
            s3.stop()
        mb = sum(s["bytes"] for s in ShardDataset(local).manifest["shards"]) / 2**20
    best = {k: max(v) for k, v in results.items()}
    print(
        f"device: {os.cpu_count()}-core CPU; {args.images} images at {args.size} px, "
        f"{mb:.1f} MB of shards, batch {args.batch_size}, 1 torch thread, best of {args.repeats}"
    )
    for key, label in [
        ("local", "local folder"),
        ("s3", "S3, ranged GET per sample"),
        ("s3_cold", "S3 + cache, cold (downloads)"),
        ("s3_warm", "S3 + cache, warm"),
    ]:
        print(f"{label:32s} {best[key]:7.1f} img/s  ({best[key] / best['local']:.2f}x local)")


if __name__ == "__main__":
    main()
