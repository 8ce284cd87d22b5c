"""Training and inference speed: ours vs torchvision's `maskrcnn_resnet50_fpn`.

Same device, same input size, same batch, same architecture (ResNet-50 FPN, frozen BN, top 3
stages trained, as when fine-tuning from ImageNet/COCO weights), same synthetic scenes, the same
random weights in both. For each variant and phase (train, infer): images/s, ms per step, peak
GPU memory, per-stage times (backbone, RPN, RoI heads, backward, optimizer, postprocess; CUDA
events on GPU), our profiler ranges `mrcnn.*`, the top ops by device time and the host-sync
calls per step; then the ratios ours / torchvision at equal precision.

    python bench/model_speed.py                               # CPU, 512 px, batch 2
    python bench/model_speed.py --device cuda --size 1024 --batch 8 \\
        --variants ours_bf16,tv_bf16,ours_bf16_compile_cl,ours_fp32,tv_fp32 --json speed.json
    python bench/model_speed.py --device cuda --size 1024 --batch 1 --phases infer \\
        --variants ours_bf16,ours_bf16_compile_cl,ours_bf16_compile_ro,tv_bf16  # latency

Variants (`--variants`, comma-separated, or `all`): ours_fp32, ours_bf16, ours_bf16_cl,
ours_bf16_compile_cl (torch.compile of the static parts, default mode, channels_last),
ours_bf16_compile_ro (the same with mode="reduce-overhead": CUDA graphs), tv_fp32, tv_bf16,
and ours_fp32_cl / tv_fp32_cl (channels_last fp32: oneDNN's faster CPU layout, both models).
Without --variants, --amp / --compile / --channels-last describe one "ours" variant, measured
against "torchvision" (with --amp too). The JSON file is rewritten after every variant, so a
run stopped part-way keeps what it measured; a variant that fails records its error and the run
goes on.
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.provenance import commit, cpu_name  # noqa: E402
from bench.stages import (  # noqa: E402
    median_stages,
    ours_infer_stages,
    ours_train_stages,
    tv_infer_stages,
    tv_train_stages,
)
from bench.synthetic import LIGHT, our_batch, scenes, torchvision_model  # noqa: E402
from bench.timing import peak_gb, profile_step, reset_peak, timed  # noqa: E402
from mrcnn import presets  # noqa: E402
from mrcnn.data.minimask import boxes_from_masks  # noqa: E402
from mrcnn.fileio import write_json_atomic  # noqa: E402
from mrcnn.modeling.model import build_model  # noqa: E402
from mrcnn.solver import fused_available  # noqa: E402
from mrcnn.weights import load_torchvision  # noqa: E402


@dataclass(frozen=True)
class Variant:
    model: str  # ours | torchvision
    amp: bool = False  # bf16 autocast
    compile: str = ""  # "" = eager; else the torch.compile mode ("default", "reduce-overhead")
    channels_last: bool = False


VARIANTS = {
    "ours_fp32": Variant("ours"),
    "ours_bf16": Variant("ours", amp=True),
    "ours_bf16_cl": Variant("ours", amp=True, channels_last=True),
    "ours_bf16_compile_cl": Variant("ours", amp=True, compile="default", channels_last=True),
    "ours_bf16_compile_ro": Variant(
        "ours", amp=True, compile="reduce-overhead", channels_last=True
    ),
    "ours_fp32_cl": Variant("ours", channels_last=True),
    "tv_fp32": Variant("torchvision"),
    "tv_fp32_cl": Variant("torchvision", channels_last=True),
    "tv_bf16": Variant("torchvision", amp=True),
}


def build_variant(v: Variant, args, state_dict: dict, device: torch.device):
    """The model of variant `v` on `device`, with the shared weights loaded."""
    if v.model == "torchvision":
        model = torchvision_model(args.size, args.score_thresh, args.arch, args.light)
        model.load_state_dict(state_dict)
        if v.channels_last:  # NHWC weights: the convolutions' outputs follow them
            model.to(memory_format=torch.channels_last)
        return model.to(device)
    cfg = presets.torchvision_r50_fpn(
        image_size=args.size,
        box_score_thresh=args.score_thresh,
        backbone={"arch": args.arch, "norm": "frozen_bn", "trainable_stages": 3},
        **(LIGHT if args.light else {}),
    )
    model = build_model(cfg)
    load_torchvision(model, state_dict)
    model.to(device)
    if v.channels_last:
        model.use_channels_last()
    if v.compile:
        kwargs: dict[str, Any] = {"backend": args.compile_backend}
        if v.compile != "default":
            kwargs["mode"] = v.compile
        model.compile_static(**kwargs)
    return model


def optimizer_for(model, device: torch.device) -> torch.optim.Optimizer:
    """SGD over the trainable parameters, fused where the device supports it (as the pipeline)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=1e-4, momentum=0.9, fused=fused_available(device))


def run_variant(name: str, v: Variant, args, data, state_dict, device) -> dict[str, Any]:
    """Measure one variant: {phase: {images_per_s, ms_per_iter, peak_memory_gb, ...}}."""
    images, masks, labels = data
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if v.amp else nullcontext()
    t_build = time.perf_counter()
    model = build_variant(v, args, state_dict, device)
    out: dict[str, Any] = {"config": asdict(v), "build_s": round(time.perf_counter() - t_build, 2)}
    opt = optimizer_for(model, device)

    def begin() -> None:
        """A new step for CUDA graph trees: earlier steps' graph outputs may be overwritten."""
        if v.compile == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()

    if v.model == "ours":
        batch = our_batch(images, masks, labels, device)

        def train():
            begin()
            with amp:
                loss = model.total_loss(model(batch))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        @torch.no_grad()
        def infer():
            begin()
            with amp:
                model.postprocess(model(batch), batch)  # includes pasting masks at full size

        def train_staged(clock):
            begin()
            ours_train_stages(model, batch, opt, amp, clock)

        def infer_staged(clock):
            begin()
            ours_infer_stages(model, batch, amp, clock)
    else:
        tv_images = [
            torch.from_numpy(im).permute(2, 0, 1).float().div(255).to(device) for im in images
        ]
        tv_targets = [
            {
                "boxes": torch.from_numpy(boxes_from_masks(m)).to(device),
                "labels": torch.from_numpy(lb).to(device),
                "masks": torch.from_numpy(m).to(torch.uint8).to(device),
            }
            for m, lb in zip(masks, labels, strict=True)
        ]

        def train():
            with amp:
                loss = sum(model(tv_images, tv_targets).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        @torch.no_grad()
        def infer():
            with amp:
                model(tv_images)

        def train_staged(clock):
            tv_train_stages(model, tv_images, tv_targets, opt, amp, clock)

        def infer_staged(clock):
            tv_infer_stages(model, tv_images, amp, clock)

    steps: dict[str, tuple[Callable, Callable]] = {
        "train": (train, train_staged),
        "infer": (infer, infer_staged),
    }
    warmup = args.warmup + (args.compile_warmup if v.compile else 0)
    for phase in args.phases:
        step, staged = steps[phase]
        model.train(phase == "train")
        reset_peak(device)
        first_s, per_iter = timed(step, args.iters, warmup, device)
        r: dict[str, Any] = {
            "images_per_s": round(args.batch / per_iter, 3),
            "ms_per_iter": round(per_iter * 1000, 3),
            "ms_per_image": round(per_iter * 1000 / args.batch, 3),
            "first_call_s": round(first_s, 2),  # includes compilation for compiled variants
            "iters": args.iters,
            "warmup": warmup,
            "peak_memory_gb": peak_gb(device),
        }
        r["stage_ms"] = median_stages(staged, device, steps=args.stage_steps)
        if args.profile_steps:
            trace = args.trace if (args.trace and name == args.trace_variant) else None
            trace = trace if phase == "train" else None
            r["profile"] = profile_step(step, device, args.profile_steps, trace)
        out[phase] = r
        print(
            f"  {name:22s} {phase:5s} {r['images_per_s']:9.2f} img/s  "
            f"{r['ms_per_image']:9.2f} ms/img  first call {first_s:6.1f} s  "
            f"peak {r['peak_memory_gb'] or 0:6.2f} GB",
            flush=True,
        )
    model = opt = None  # free the GPU memory before the next variant
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def ratios(variants: dict[str, dict]) -> dict[str, dict[str, float]]:
    """images/s of every ours variant over torchvision's at the same precision, per phase."""
    out: dict[str, dict[str, float]] = {}
    for phase in ("train", "infer"):
        for name, r in variants.items():
            if r.get("config", {}).get("model") != "ours" or phase not in r:
                continue
            for tv_name, t in variants.items():
                same_amp = t.get("config", {}).get("amp") == r["config"]["amp"]
                if t.get("config", {}).get("model") == "torchvision" and same_amp and phase in t:
                    ratio = r[phase]["images_per_s"] / t[phase]["images_per_s"]
                    out.setdefault(phase, {})[f"{name}/{tv_name}"] = round(ratio, 3)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument(
        "--compile-warmup",
        type=int,
        default=3,
        help="extra warm-up calls for compiled variants (recompiles for new shapes)",
    )
    ap.add_argument("--variants", default="", help="comma-separated names, or 'all' (see above)")
    ap.add_argument("--phases", default="train,infer", help="train, infer or both")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast for both models")
    ap.add_argument("--compile", action="store_true", help="torch.compile our static parts")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    ap.add_argument("--arch", default="resnet50", help="ResNet of both models (tests: resnet18)")
    ap.add_argument("--light", action="store_true", help="fewer classes/RoIs (CPU smoke tests)")
    ap.add_argument("--stage-steps", type=int, default=3, help="steps for the per-stage median")
    ap.add_argument("--profile-steps", type=int, default=2, help="profiled steps (0 = none)")
    ap.add_argument("--trace", type=Path, help="chrome trace of --trace-variant's training")
    ap.add_argument("--trace-variant", default="ours_bf16")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument(
        "--score-thresh",
        type=float,
        default=0.0,
        help="detection score threshold of both models (0: 100 detections each)",
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    args.phases = [p for p in args.phases.split(",") if p]
    if not args.phases or not set(args.phases) <= {"train", "infer"}:
        ap.error("--phases takes train, infer or train,infer")
    if args.variants == "all":
        args.variants = "ours_bf16,tv_bf16,ours_fp32,tv_fp32,ours_bf16_compile_cl"
    if args.variants:
        names = [n for n in args.variants.split(",") if n]
        unknown = [n for n in names if n not in VARIANTS]
        if unknown:
            ap.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
        args.variant_list = [(n, VARIANTS[n]) for n in names]
    else:  # the flags describe one of ours, against torchvision at the same precision
        mode = "default" if args.compile else ""
        ours = Variant("ours", amp=args.amp, compile=mode, channels_last=args.channels_last)
        args.variant_list = [("ours", ours), ("torchvision", Variant("torchvision", amp=args.amp))]
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    data = scenes(args.batch, args.size, num_classes=LIGHT["num_classes"] if args.light else 91)
    # Same weights in every variant (torchvision's random init, loaded into ours), so all find
    # the same proposals and detections and do the same amount of work.
    state_dict = torchvision_model(args.size, args.score_thresh, args.arch, args.light).state_dict()
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "size": args.size,
        "batch": args.batch,
        "arch": args.arch,
        "light": args.light,
        "iters": args.iters,
        "phases": args.phases,
        "score_thresh": args.score_thresh,
        "commit": commit(),
        "command": " ".join(sys.argv),
        "variants": {},
    }
    print(f"device: {results['device']}  torch {results['torch']}  commit {results['commit']}")
    print(f"input {args.size} px, batch {args.batch}, {args.arch}", flush=True)
    signal.signal(signal.SIGTERM, _stop)  # a step timeout: keep what was measured
    for name, v in args.variant_list:
        try:
            results["variants"][name] = run_variant(name, v, args, data, state_dict, device)
        except Stopped as e:
            results["variants"][name] = {"config": asdict(v), "error": f"stopped: {e}"}
            if args.json:
                write_json_atomic(args.json, results)
            print(f"  {name}: stopped ({e})", flush=True)
            break
        except Exception as e:  # record it and go on with the next variant
            tb = traceback.format_exc()
            print(f"  {name}: FAILED {type(e).__name__}: {e}\n{tb}", flush=True)
            results["variants"][name] = {
                "config": asdict(v),
                "error": f"{type(e).__name__}: {e}"[:2000],
                "traceback": tb[-4000:],
            }
            if device.type == "cuda":
                torch.cuda.empty_cache()
        results["ratios"] = ratios(results["variants"])
        if args.json:
            write_json_atomic(args.json, results)
    _print(results)
    return results


class Stopped(Exception):
    """SIGTERM arrived (the caller's timeout)."""


def _stop(signum, frame) -> None:
    raise Stopped(f"signal {signum}")


def _print(r: dict) -> None:
    print(f"\n{'variant':22s} {'phase':5s} {'img/s':>9s} {'ms/img':>9s} {'peak GB':>8s}  stages ms")
    for name, v in r["variants"].items():
        if "error" in v:
            print(f"{name:22s} FAILED: {v['error'][:150]}")
            continue
        for phase in r["phases"]:
            p = v[phase]
            stages = ", ".join(f"{k} {t:.1f}" for k, t in p["stage_ms"].items())
            peak = p["peak_memory_gb"] if p["peak_memory_gb"] is not None else float("nan")
            print(
                f"{name:22s} {phase:5s} {p['images_per_s']:9.2f} {p['ms_per_image']:9.2f} "
                f"{peak:8.2f}  {stages}"
            )
    for phase, rs in r.get("ratios", {}).items():
        print(
            f"{phase} ratios (ours / torchvision): "
            + ", ".join(f"{k} {x:.2f}x" for k, x in rs.items())
        )


if __name__ == "__main__":
    main()
