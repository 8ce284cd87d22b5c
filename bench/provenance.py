"""Where a benchmark ran: the commit and the CPU, for the results it writes."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU's model name and torch's thread count (or what `platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return platform.processor() or "cpu"


# The instruction sets int8 and fp32 kernels are chosen by (x86).
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags() -> list[str]:
    """Which of `SIMD_FLAGS` /proc/cpuinfo lists (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    present = set(line.split(":", 1)[-1].split())
    return [f for f in SIMD_FLAGS if f in present]


def commit() -> str:
    """The checkout's short commit; `GPU_CHECK_COMMIT` where the tree came without .git."""
    if os.environ.get("GPU_CHECK_COMMIT"):  # the GPU machine gets the tree without .git
        return os.environ["GPU_CHECK_COMMIT"]
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
