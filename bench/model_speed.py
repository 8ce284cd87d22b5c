"""Training and inference speed: ours vs torchvision's `maskrcnn_resnet50_fpn`.

Same device, same input size, same batch, same architecture (ResNet-50 FPN, frozen BN, top 3
stages trained, as when fine-tuning from ImageNet/COCO weights), same synthetic scenes. Prints
images/s for each and the ratio ours / torchvision, then where our time goes per stage (profiler
ranges `mrcnn.*`).

    python bench/model_speed.py                               # CPU, 512 px, batch 2
    python bench/model_speed.py --device cuda --size 1024 --batch 8 --amp --compile --channels-last

--amp runs both models under bf16 autocast; --compile / --channels-last apply to ours only
(torchvision's per-image list API does not compile into static graphs).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torchvision.models import resnet50
from torchvision.models.detection import MaskRCNN as TVMaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrcnn import presets  # noqa: E402
from mrcnn.data.minimask import boxes_from_masks, make_mini_masks  # noqa: E402
from mrcnn.model import build_model  # noqa: E402
from mrcnn.structures import Batch  # noqa: E402
from mrcnn.weights import load_torchvision  # noqa: E402

MAX_GT = 8


def scenes(batch: int, size: int, seed: int = 0):
    """`batch` images with 3..6 ellipses: images uint8 [B,S,S,3], masks [N,S,S] and labels each."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, masks, labels = [], [], []
    for _ in range(batch):
        img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        ms = []
        for _ in range(rng.integers(3, 7)):
            cy, cx = rng.uniform(0.2, 0.8, 2) * size
            ry, rx = rng.uniform(0.05, 0.2, 2) * size
            ms.append(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1)
            img[ms[-1]] = rng.integers(0, 255, 3)
        images.append(img)
        masks.append(np.stack(ms))
        labels.append(rng.integers(1, 91, len(ms)))
    return np.stack(images), masks, labels


def our_batch(images, masks, labels, device) -> Batch:
    b, s = images.shape[:2]
    boxes = torch.zeros(b, MAX_GT, 4)
    lab = torch.zeros(b, MAX_GT, dtype=torch.long)
    minis = torch.zeros(b, MAX_GT, 56, 56, dtype=torch.uint8)
    valid = torch.zeros(b, MAX_GT, dtype=torch.bool)
    for i, (m, lb) in enumerate(zip(masks, labels, strict=True)):  # data prep, not timed
        n = len(lb)
        bx = boxes_from_masks(m)
        boxes[i, :n] = torch.from_numpy(bx)
        lab[i, :n] = torch.from_numpy(lb)
        minis[i, :n] = torch.from_numpy(make_mini_masks(m, bx, 56))
        valid[i, :n] = True
    return Batch(
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        windows=torch.tensor([[0.0, 0, s, s]] * b),
        scales=torch.ones(b),
        original_sizes=torch.tensor([[s, s]] * b),
        image_ids=torch.arange(b),
        gt_boxes=boxes,
        gt_labels=lab,
        gt_mini_masks=minis,
        gt_valid=valid,
    ).to(device)


def torchvision_model(size: int, score_thresh: float) -> TVMaskRCNN:
    body = resnet50(norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, trainable_layers=3)
    return TVMaskRCNN(
        backbone, num_classes=91, min_size=size, max_size=size, box_score_thresh=score_thresh
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step, iters: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of `step`, after `warmup` calls."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return (time.perf_counter() - start) / iters


def stage_times(step, device: torch.device, steps: int = 2) -> dict[str, float]:
    """Mean ms per step of each `mrcnn.*` profiler range (device time on GPU, CPU time else)."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    out: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        if ev.key.startswith("mrcnn."):
            t = ev.device_time_total if device.type == "cuda" else ev.cpu_time_total
            out[ev.key[len("mrcnn.") :]] += t / 1000 / steps
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast for both models")
    ap.add_argument("--compile", action="store_true", help="torch.compile our static parts")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument(
        "--score-thresh",
        type=float,
        default=0.0,
        help="detection score threshold of both models (0: 100 detections each)",
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    images, masks, labels = scenes(args.batch, args.size)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else nullcontext()

    # Same weights in both (torchvision's random init loaded into ours), so both models find the
    # same proposals and detections and do the same amount of work.
    tv = torchvision_model(args.size, args.score_thresh).to(device)
    cfg = presets.torchvision_r50_fpn(image_size=args.size, box_score_thresh=args.score_thresh)
    ours = build_model(cfg)
    load_torchvision(ours, tv.state_dict())
    ours.to(device)
    if args.channels_last:
        ours.use_channels_last()
    if args.compile:
        ours.compile_static(mode="max-autotune-no-cudagraphs" if device.type == "cuda" else None)
    batch = our_batch(images, masks, labels, device)
    tv_images = [torch.from_numpy(im).permute(2, 0, 1).float().div(255).to(device) for im in images]
    tv_targets = [
        {
            "boxes": torch.from_numpy(boxes_from_masks(m)).to(device),
            "labels": torch.from_numpy(lb).to(device),
            "masks": torch.from_numpy(m).to(torch.uint8).to(device),
        }
        for m, lb in zip(masks, labels, strict=True)
    ]
    opt_ours = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=1e-4)
    opt_tv = torch.optim.SGD([p for p in tv.parameters() if p.requires_grad], lr=1e-4)

    def train_ours():
        with amp:
            loss = ours.total_loss(ours(batch))
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()

    def train_tv():
        with amp:
            loss = sum(tv(tv_images, tv_targets).values())
        opt_tv.zero_grad(set_to_none=True)
        loss.backward()
        opt_tv.step()

    @torch.no_grad()
    def infer_ours():
        with amp:
            ours.postprocess(ours(batch), batch)  # includes pasting masks at full size

    @torch.no_grad()
    def infer_tv():
        with amp:
            tv(tv_images)

    results: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch": torch.__version__,
        "size": args.size,
        "batch": args.batch,
        "amp": args.amp,
        "compile": args.compile,
        "channels_last": args.channels_last,
        "score_thresh": args.score_thresh,
        "commit": _commit(),
    }
    ours.train()
    tv.train()
    t_ours = timed(train_ours, args.iters, args.warmup, device)
    t_tv = timed(train_tv, args.iters, args.warmup, device)
    results["train_images_per_s"] = {"ours": args.batch / t_ours, "torchvision": args.batch / t_tv}
    results["train_stage_ms"] = stage_times(train_ours, device)
    ours.eval()
    tv.eval()
    t_ours = timed(infer_ours, args.iters, args.warmup, device)
    t_tv = timed(infer_tv, args.iters, args.warmup, device)
    results["infer_images_per_s"] = {"ours": args.batch / t_ours, "torchvision": args.batch / t_tv}
    results["infer_stage_ms"] = stage_times(infer_ours, device)
    _print(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _print(r: dict) -> None:
    flags = [k for k in ("amp", "compile", "channels_last") if r[k]] or ["eager fp32"]
    print(f"device: {r['device']}  torch {r['torch']}  commit {r['commit']}")
    print(f"input {r['size']} px, batch {r['batch']}, {' + '.join(flags)}")
    for phase in ("train", "infer"):
        ips = r[f"{phase}_images_per_s"]
        ratio = ips["ours"] / ips["torchvision"]
        print(
            f"{phase:5s}  ours {ips['ours']:8.2f} img/s   torchvision {ips['torchvision']:8.2f} "
            f"img/s   ratio {ratio:5.2f}x"
        )
        stages = ", ".join(f"{k} {v:.0f}" for k, v in r[f"{phase}_stage_ms"].items())
        print(f"       ours per step (ms, forward stages): {stages}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
