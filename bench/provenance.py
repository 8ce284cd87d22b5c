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
