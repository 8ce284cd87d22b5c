"""The pipeline's training loop, in process, on synthetic shapes: loss curve and images/s.

What the `train` stage's worker loop does on one GPU (`pipeline/training/loop.py: train_loop`),
without Ray, MLflow or shards: `build_model` (+ `use_channels_last` / `compile_static`), the solver
(`scale_schedule`, `build_optimizer`, fused on CUDA, `lr_scheduler`), `TrainLoader` over an
in-memory set of shapes images at `--size` px (pinned batches, `non_blocking` copies), bf16
autocast on CUDA, gradient clipping. Recipe defaults come from
`pipeline.train_params.TrainParams` when it imports (else the same values written below).
Each iteration is the loop's own `pipeline.training.step.TrainStep`, and the losses stay on the
device in its `LossWindow` (one host sync every `--log-every` iterations, for the progress line
and the non-finite check), as the loop runs; `--sync-every-iter` reads them every iteration.

It also records where the step synchronises with the host: one iteration runs under
`torch.cuda.set_sync_debug_mode("warn")` and every warning's file:line is kept (CUDA only).

    python bench/train_gpu.py --device cuda --size 1024 --batch 8 --iters 200 --json train.json
    python bench/train_gpu.py --device cpu --size 128 --iters 3            # smoke test

JSON: config, per-iteration losses (`loss_curve`, every term), images/s (after the first
`--warmup` iterations), ms per iteration, peak GPU memory, `loss_fell` (mean of the last tenth
below the first tenth), the host-sync sites, and `error` if the run broke off.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
import traceback
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mrcnn import presets  # noqa: E402
from mrcnn.data import TrainLoader  # noqa: E402
from mrcnn.data.minimask import boxes_from_masks, make_mini_masks  # noqa: E402
from mrcnn.data.shapes import ShapesSpec, generate_image  # noqa: E402
from mrcnn.data.shards import Sample  # noqa: E402
from mrcnn.fileio import write_json_atomic  # noqa: E402
from mrcnn.modeling.model import build_model  # noqa: E402
from mrcnn.solver import build_optimizer, lr_scheduler, scale_schedule  # noqa: E402
from pipeline.training.step import LossWindow, TrainStep  # noqa: E402

logger = logging.getLogger("train_gpu")

# The loop's recipe (params.yaml `train`), used when pipeline.train_params does not import.
FALLBACK_RECIPE = {
    "optimizer": "adamw",
    "lr": 1e-3,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "schedule": "cosine",
    "warmup_iters": 50,
    "steps": (0.75, 1.0),
    "grad_clip": 10.0,
    "reference_batch": 8,
    "max_gt": 16,
    "hflip": True,
    "seed": 0,
}


def recipe() -> tuple[dict[str, Any], str]:
    """The training recipe defaults and where they came from."""
    try:
        from pipeline.train_params import TrainParams

        p = TrainParams()
        return {k: getattr(p, k) for k in FALLBACK_RECIPE}, "pipeline.train_params.TrainParams"
    except Exception as e:  # the pipeline is being restructured; the values are the same
        logger.warning("pipeline.train_params unavailable (%s); using the built-in recipe", e)
        return dict(FALLBACK_RECIPE), "bench/train_gpu.py FALLBACK_RECIPE"


class ShapesInMemory:
    """`n` shapes images at `size` px as `Sample`s (what `TrainLoader` reads from shards).

    Shape sizes scale with the image (the 128 px dataset's 10..30 px half-extents x size/128)."""

    def __init__(self, n: int, size: int, mini_mask: int = 56, seed: int = 0) -> None:
        k = size / 128
        spec = ShapesSpec(
            num_train=n,
            num_val=0,
            image_size=size,
            min_size=max(2, round(10 * k)),
            max_size=max(2, round(30 * k)),
            seed=seed,
        )
        self.samples = []
        for i in range(n):
            g = generate_image(spec, "train", i)
            boxes = boxes_from_masks(g.masks).astype(np.float32)
            self.samples.append(
                Sample(
                    image=g.image,
                    image_id=i + 1,
                    window=(0, 0, size, size),
                    scale=1.0,
                    original_size=(size, size),
                    boxes=boxes,
                    labels=g.category_ids.astype(np.int64),
                    mini_masks=make_mini_masks(g.masks, boxes, mini_mask).astype(bool),
                )
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        s = self.samples[i]  # TrainLoader flips in place: hand out a copy of the pixels
        return Sample(**{**s.__dict__, "image": s.image.copy()})


def build_config(args, num_classes: int):
    """torchvision's R50-FPN at `--size`, BN trained from scratch (no pretrained weights here),
    or the pipeline's `shapes_small`."""
    if args.preset == "shapes_small":
        return presets.shapes_small(num_classes=num_classes, image_size=args.size)
    return presets.torchvision_r50_fpn(
        num_classes=num_classes,
        image_size=args.size,
        backbone={"arch": args.arch, "norm": "bn", "trainable_stages": 5},
    )


class SyncSites:
    """Collects the file:line of every "synchronizing CUDA operation" warning."""

    def __init__(self) -> None:
        self.sites: dict[str, int] = {}

    def __enter__(self) -> SyncSites:
        self._catch = warnings.catch_warnings(record=True)
        self._caught = self._catch.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc) -> None:
        torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(*exc)
        for w in self._caught:
            if "synchroniz" in str(w.message):
                where = f"{Path(w.filename).name}:{w.lineno}"
                self.sites[where] = self.sites.get(where, 0) + 1


def _stop(signum, frame) -> None:
    raise TimeoutError(f"stopped by signal {signum} (the caller's timeout)")


def run(args) -> dict[str, Any]:
    signal.signal(signal.SIGTERM, _stop)  # a timeout still writes the iterations done
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    rec, rec_source = recipe()
    num_classes = 4  # shapes: background + square, circle, triangle
    cfg = build_config(args, num_classes)
    sched = scale_schedule(
        args.lr or rec["lr"],
        args.iters,
        rec["warmup_iters"] if args.warmup_iters < 0 else args.warmup_iters,
        args.batch,
        args.batch,  # the iteration count is given at this batch: no rescaling here
        rec["schedule"],
        rec["steps"],
    )
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "size": args.size,
        "batch": args.batch,
        "iters": args.iters,
        "preset": args.preset,
        "arch": args.arch,
        "amp": args.amp and cuda,
        "compile": args.compile,
        "channels_last": args.channels_last,
        "loader_workers": args.loader_workers,
        "recipe": {**rec, "lr": sched.lr, "warmup_iters": sched.warmup_iters},
        "recipe_source": rec_source,
        "model": cfg.to_dict(),
    }
    t0 = time.perf_counter()
    data = ShapesInMemory(args.num_images, args.size)
    result["data_s"] = round(time.perf_counter() - t0, 2)

    torch.manual_seed(rec["seed"])
    model = build_model(cfg)
    if args.channels_last:
        model.use_channels_last()
    model.to(device)
    if args.compile:
        model.compile_static()
    optimizer = build_optimizer(
        model, rec["optimizer"], sched.lr, rec["weight_decay"], rec["momentum"]
    )
    result["fused_optimizer"] = bool(optimizer.defaults.get("fused"))
    scheduler = lr_scheduler(optimizer, sched)
    loader = TrainLoader(
        data,
        args.batch,
        seed=rec["seed"],
        hflip=rec["hflip"],
        max_gt=rec["max_gt"],
        num_workers=args.loader_workers,
        pin_memory=cuda,
    )
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if args.amp and cuda else nullcontext()
    # The training loop's own step and loss window (pipeline/training/step.py): what is timed
    # and probed for host syncs here is what `pipeline.train` runs.
    step = TrainStep(
        model, model, optimizer, scheduler, grad_clip=rec["grad_clip"], autocast=lambda: amp
    )
    window = LossWindow(device)
    model.train()
    batches = iter(loader)
    history: list[torch.Tensor] = []  # per-iteration loss terms, kept on the device
    names: list[str] = []
    iter_ends: list[float] = []
    sync = SyncSites() if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        for it in range(args.iters):
            probe = sync if (sync is not None and it == args.sync_probe_iter) else nullcontext()
            with probe:
                batch = next(batches).to(device, non_blocking=True)
                terms, total = step([batch])
                window.add(it, terms, total)
            names = [*terms, "loss"]
            history.append(torch.stack([*(v.float() for v in terms.values()), total.float()]))
            if args.sync_every_iter or (it + 1) % args.log_every == 0 or it + 1 == args.iters:
                first_bad, bad, means = window.read(reset=True)  # the one host sync
                logger.info(
                    "iter %d/%d loss %.4f (%.1f s)",
                    it + 1,
                    args.iters,
                    means["loss"],
                    time.perf_counter() - start,
                )
                if first_bad is not None:
                    raise FloatingPointError(f"non-finite loss at iteration {first_bad}: {bad}")
            if cuda and args.time_each_iter:
                torch.cuda.synchronize()
            iter_ends.append(time.perf_counter())
        if cuda:
            torch.cuda.synchronize()
        iter_ends[-1] = time.perf_counter()
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"[:2000]
        result["traceback"] = traceback.format_exc()[-4000:]
        logger.error("training broke off: %s", result["error"])
    result["iterations_done"] = len(history)
    curve = torch.stack(history).cpu().numpy() if history else np.zeros((0, len(names)))
    result["loss_curve"] = {
        n: [round(float(x), 5) for x in curve[:, j]] for j, n in enumerate(names)
    }
    result["wall_s"] = round(time.perf_counter() - start, 2)
    w = min(args.warmup, len(iter_ends) - 1)
    if len(iter_ends) > w + 1 and w >= 0:
        span = iter_ends[-1] - iter_ends[w]
        n = len(iter_ends) - 1 - w
        result["ms_per_iter"] = round(span / n * 1000, 2)
        result["images_per_s"] = round(n * args.batch / span, 3)
        result["timed_iters"] = n
    if iter_ends:
        result["first_iter_s"] = round(iter_ends[0] - start, 2)
    if len(curve) >= 2:
        k = max(1, len(curve) // 10)
        first, last = float(curve[:k, -1].mean()), float(curve[-k:, -1].mean())
        result["loss_first"], result["loss_last"] = round(first, 5), round(last, 5)
        result["loss_fell"] = bool(np.isfinite(curve).all() and last < first)
    if cuda:
        result["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 3)
        result["sync_sites"] = sync.sites if sync is not None else {}
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10, help="iterations left out of images/s")
    ap.add_argument("--num-images", type=int, default=64, help="distinct shapes images")
    ap.add_argument(
        "--preset", choices=("torchvision_r50_fpn", "shapes_small"), default="torchvision_r50_fpn"
    )
    ap.add_argument("--arch", default="resnet50", help="backbone of torchvision_r50_fpn")
    ap.add_argument("--lr", type=float, default=0.0, help="0 = the recipe's")
    ap.add_argument("--warmup-iters", type=int, default=-1, help="-1 = the recipe's")
    ap.add_argument("--no-amp", dest="amp", action="store_false", help="fp32 on CUDA too")
    ap.add_argument("--compile", action="store_true", help="model.compile_static()")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--loader-workers", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument(
        "--sync-every-iter",
        action="store_true",
        help="read the loss every iteration, as pipeline.train's loop does",
    )
    ap.add_argument("--time-each-iter", action="store_true", help="synchronize every iteration")
    ap.add_argument(
        "--sync-probe-iter",
        type=int,
        default=5,
        help="the iteration run under set_sync_debug_mode('warn') (CUDA)",
    )
    ap.add_argument("--json", type=Path)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    result = run(args)
    if args.json:
        write_json_atomic(args.json, result)
    print(
        f"train {args.size} px batch {args.batch}: {result.get('iterations_done')} iterations, "
        f"{result.get('images_per_s', float('nan'))} img/s, loss {result.get('loss_first')} -> "
        f"{result.get('loss_last')} (fell: {result.get('loss_fell')})"
        + (f", ERROR {result['error']}" if "error" in result else "")
    )
    return result


if __name__ == "__main__":
    main()
