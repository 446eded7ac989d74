"""The machine's matmul speed, measured: `resnetlab bench`'s ceiling, and the probe by which
``--precision auto`` tells whether a CPU computes faster in bf16 (a flag is not a speed: a Xeon
with AVX-512 BF16 and no AMX ran bf16 matmuls at half its fp32 speed)."""

from __future__ import annotations

import hashlib
import json
import platform
import time
import warnings
from pathlib import Path

import torch

from resnetlab.data.cache import default_cache_dir
from resnetlab.errors import ResnetlabError
from resnetlab.files import write_atomically

# auto takes bf16 on a CPU whose bf16 matmuls run at least this many times as fast as its fp32
# ones: autocast's casts and the layers that stay fp32 eat a smaller gain
BF16_MARGIN = 1.25
# the probe: matmuls up to this size, in rounds of about this long per precision, the best
# of each precision kept (a fraction of a second in all)
PROBE_LARGEST, PROBE_SECONDS, PROBE_ROUNDS = 1024, 0.05, 2
LARGEST = {"cuda": 8192, "cpu": 2048}  # the ceiling's largest size (a GPU's peak needs 8192)


def cpu_info(field: str) -> str:
    """``field`` of the first processor in /proc/cpuinfo (``model name``, ``flags``), or ""."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    return ""


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    return cpu_info("model name") or platform.processor() or platform.machine()


def matmul_tflops(
    dtype: torch.dtype, device: torch.device, largest: int | None = None, seconds: float = 1.0
) -> float:
    """Measured TFLOP/s of square matmuls in ``dtype`` (2 FLOPs per multiply-add): the best
    of at least three timings and about ``seconds`` of them, at a size doubled from 512 until
    a product takes 0.05 s (a CPU without native bf16 or fp16 is slow at them) or the size
    reaches ``largest`` (default: 8192 on a GPU, which needs it to reach its peak; 2048 on a
    CPU)."""
    largest = largest or LARGEST.get(device.type, LARGEST["cpu"])
    size = 512
    while True:
        a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
        torch.mm(a, b)  # warm-up
        elapsed = _time_matmul(a, b)
        if size >= largest or elapsed >= 0.05:
            break
        size *= 2
    best, spent, runs = elapsed, elapsed, 1
    while spent < seconds or runs < 3:
        elapsed = _time_matmul(a, b)
        best, spent, runs = min(best, elapsed), spent + elapsed, runs + 1
    return 2 * size**3 / best / 1e12


def _time_matmul(a: torch.Tensor, b: torch.Tensor) -> float:
    """Seconds of one product ``a @ b`` (on a GPU, until it is done)."""
    _sync(a.device)
    start = time.perf_counter()
    torch.mm(a, b)
    _sync(a.device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_matmul_speeds() -> dict[str, float]:
    """This CPU's fp32 and bf16 matmul TFLOP/s by the probe, measured once per CPU (model
    and flags) and torch version and kept in resnetlab's cache folder. The probe runs on one
    thread: the ratio is the core's, and one thread is the least disturbed by a busy machine
    (a team of threads waits for any one of them that is descheduled)."""
    try:
        saved = json.loads(_probe_file().read_text())
        return {name: float(saved[name]) for name in ("fp32", "bf16")}
    except (OSError, ValueError, KeyError, TypeError):  # not measured yet, or damaged
        pass
    speeds, threads = {"fp32": 0.0, "bf16": 0.0}, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(PROBE_ROUNDS):  # alternating, so that a busy moment slows both alike
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                measured = matmul_tflops(dtype, torch.device("cpu"), PROBE_LARGEST, PROBE_SECONDS)
                speeds[name] = max(speeds[name], measured)
    finally:
        torch.set_num_threads(threads)
    keep_cpu_matmul_speeds(speeds)
    return speeds


def keep_cpu_matmul_speeds(speeds: dict[str, float]) -> None:
    """Write ``speeds`` (fp32 and bf16 TFLOP/s) where ``cpu_matmul_speeds`` reads them; where
    the cache folder cannot be written, warn: the next run measures again."""
    path = _probe_file()
    text = json.dumps({**speeds, "cpu": cpu_name(), "torch": torch.__version__}) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda f: f.write(text.encode()), "the CPU's matmul speeds")
    except (OSError, ResnetlabError) as exc:
        warnings.warn(f"{exc}; measuring again next time", stacklevel=3)


def _probe_file() -> Path:
    """``cpu-matmul-<key>.json`` in the cache folder, the key a hash of the CPU's model name
    and flags and of torch's version."""
    identity = f"{cpu_name()}\0{cpu_info('flags')}\0{torch.__version__}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return Path(default_cache_dir()).expanduser() / f"cpu-matmul-{key}.json"


def cpu_bf16_faster() -> bool:
    """Whether this CPU's bf16 matmuls run at least ``BF16_MARGIN`` times as fast as its fp32
    ones (``cpu_matmul_speeds``)."""
    speeds = cpu_matmul_speeds()
    return speeds["bf16"] >= BF16_MARGIN * speeds["fp32"]
