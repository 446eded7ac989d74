"""What the machine can do: its name and its measured matmul ceiling."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch


def machine_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (from /proc/cpuinfo where there is one)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def matmul_tflops(
    dtype: torch.dtype, device: torch.device, largest: int = 2048, seconds: float = 1.0
) -> float:
    """Measured TFLOP/s of square matmuls in ``dtype`` (2 FLOPs per multiply-add): the best
    of at least three timings and about ``seconds`` of them, at the largest size up to
    ``largest`` whose product takes under 0.05 s (a CPU without native bf16 is slow at it)."""
    size, elapsed = 256, 0.0
    while size < largest and elapsed < 0.05:
        size *= 2
        elapsed = _time_matmul(size, dtype, device)
    best, spent, runs = elapsed, elapsed, 1
    while spent < seconds or runs < 3:
        elapsed = _time_matmul(size, dtype, device)
        best, spent, runs = min(best, elapsed), spent + elapsed, runs + 1
    return 2 * size**3 / best / 1e12


def _time_matmul(size: int, dtype: torch.dtype, device: torch.device) -> float:
    """Seconds of one ``size`` x ``size`` matmul in ``dtype``."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)  # warm-up
    _sync(device)
    start = time.perf_counter()
    torch.mm(a, b)
    _sync(device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
