"""Timing and profiling one benchmark step on CPU or CUDA (`bench/model_speed.py`)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
COPY_CALLS = ("cudaMemcpyAsync",)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step, iters: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(seconds of the first warm-up call, seconds per call of `step` after `warmup` calls)."""
    t0 = time.perf_counter()
    for i in range(warmup):
        step()
        if i == 0:
            _sync(device)
            first = time.perf_counter() - t0
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return (first if warmup else 0.0), (time.perf_counter() - start) / iters


def profile_step(step, device: torch.device, steps: int = 2, trace: Path | None = None) -> dict:
    """Profiler summary per step: `mrcnn.*` ranges (CPU and device ms), the top ops by self
    device time (CUDA) or self CPU time, and the host-sync / copy calls (CUDA)."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    cuda = device.type == "cuda"
    if cuda:
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    ranges: dict[str, dict[str, float]] = {}
    ops, calls = [], {}
    for ev in prof.key_averages():
        if ev.key.startswith("mrcnn."):
            r = ranges.setdefault(ev.key[len("mrcnn.") :], {"cpu_ms": 0.0, "device_ms": 0.0})
            r["cpu_ms"] += ev.cpu_time_total / 1000 / steps
            r["device_ms"] += ev.device_time_total / 1000 / steps
            continue
        if ev.key in SYNC_CALLS + COPY_CALLS:
            calls[ev.key] = ev.count / steps
        self_t = ev.self_device_time_total if cuda else ev.self_cpu_time_total
        ops.append((ev.key, self_t / 1000 / steps, ev.count / steps))
    ops.sort(key=lambda o: -o[1])
    top = [{"op": k[:120], "self_ms": round(t, 3), "calls": c} for k, t, c in ops[:15]]
    ranges = {k: {n: round(v, 3) for n, v in r.items()} for k, r in ranges.items()}
    return {"ranges": ranges, "top_ops": top, "host_calls_per_step": calls}


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
