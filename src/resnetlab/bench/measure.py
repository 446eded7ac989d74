"""`resnetlab bench`: throughput of one model's training or inference, row by row, measured in
one process in interleaved rounds, so that the ratios hold on a noisy shared machine."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from resnetlab.bench.config import DEFAULT_BATCH, BenchConfig
from resnetlab.bench.hardware import machine_name
from resnetlab.bench.rows import Row, Workload, inference_rows, load_user_loops, training_rows
from resnetlab.errors import ResnetlabError
from resnetlab.files import write_atomically
from resnetlab.models import count_macs
from resnetlab.runtime.matmul import matmul_tflops
from resnetlab.runtime.precision import resolve_device

FLOPS_PER_MAC = {"train": 6, "infer": 2}  # 2 FLOPs per multiply-add; training = 3 passes
CEILINGS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def bench(cfg: BenchConfig, report: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure the matmul ceiling, then every row's images per second (the median over
    ``rounds`` interleaved rounds, after one warm-up round each); write ``cfg.json``."""
    cfg.validate()
    device = resolve_device(cfg.device)
    out = Path(cfg.json) if cfg.json else None
    if out is not None and not out.parent.is_dir():
        raise ResnetlabError(f"--json {cfg.json}: folder {out.parent} does not exist")
    batch = cfg.batch or DEFAULT_BATCH[cfg.mode]
    work = Workload(cfg.model, batch, cfg.input_size, cfg.steps, device)
    shape = work.input_shape  # an error for a model that does not take images
    loops = load_user_loops(cfg.user_loop)
    peaks = {name: matmul_tflops(dtype, device) for name, dtype in CEILINGS.items()}
    build = training_rows if cfg.mode == "train" else inference_rows
    rows = build(work, loops, cfg.compile, report)
    warmup, seconds = _measure(rows, cfg.rounds, device)
    with torch.device("meta"):
        macs = count_macs(work.resnetlab_model(), shape)
    result = {
        "model": cfg.model,
        "mode": cfg.mode,
        "batch": batch,
        "input_shape": list(shape),
        "macs_per_image": macs,
        "machine": machine_name(device),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "matmul_tflops": peaks,
        "user_loop": None if loops is None else str(loops.__file__),
        "config": asdict(cfg),
        "rows": _table(rows, warmup, seconds, peaks, macs * FLOPS_PER_MAC[cfg.mode]),
    }
    if out is not None:
        text = json.dumps(result, indent=2) + "\n"
        write_atomically(out, lambda f: f.write(text.encode()), "the bench results")
    return result


def _measure(
    rows: list[Row], rounds: int, device: torch.device
) -> tuple[list[float], list[list[float]]]:
    """Each row's warm-up round time (its compile time, where compiled), then ``rounds``
    rounds of every row in turn, the order rotating each round."""
    warmup = [_timed(row.run, device) for row in rows]
    seconds: list[list[float]] = [[] for _ in rows]
    for r in range(rounds):
        for i in [(r + k) % len(rows) for k in range(len(rows))]:
            seconds[i].append(_timed(rows[i].run, device))
    return warmup, seconds


def _timed(run: Callable[[], None], device: torch.device) -> float:
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _table(
    rows: list[Row],
    warmup: list[float],
    seconds: list[list[float]],
    peaks: dict[str, float],
    flops_per_image: int,
) -> list[dict[str, Any]]:
    """Images per second, ratios to the seed-style and user rows, and the share of the best
    measured matmul ceiling, per row."""
    speed = {
        row.name: row.images / statistics.median(s) for row, s in zip(rows, seconds, strict=True)
    }
    peak = max(peaks.values()) * 1e12
    table = []
    for row, first in zip(rows, warmup, strict=True):
        rate = speed[row.name]
        table.append(
            {
                "row": row.name,
                "what": row.what,
                "precision": row.precision,
                "images_per_s": rate,
                "vs_seed": rate / speed["seed-style"] if "seed-style" in speed else None,
                "vs_user": rate / speed["user"] if "user" in speed else None,
                "peak_share": rate * flops_per_image / peak,
                "warmup_s": first,
                "compiled": row.compiled,
            }
        )
    return table
