"""int8 inference speed: a network in onnxruntime int8 against PyTorch eager fp32 and bf16
autocast, channels-last, at one batch size, the three timed in turns in one run.

Prints images/s and ratios, and writes benchmarks/results/int8_speed.json. Random weights
(speed does not depend on them); int8 is calibrated on random inputs. Run from the repository
root:
    .venv/bin/python benchmarks/int8_speed.py --model resnet50 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from resnetlab.engine.int8 import int8_network, int8_warning
from resnetlab.engine.precision import bf16_supported
from resnetlab.models import create_model, get_model_spec


def cpu_name() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="timed batches per variant")
    parser.add_argument("--out", default="benchmarks/results/int8_speed.json")
    args = parser.parse_args()
    shape = get_model_spec(args.model).input_shape
    model = create_model(args.model).eval()
    x = torch.randn(args.batch_size, *shape)
    int8 = int8_network(model, shape, batch_size=args.batch_size, batches=2)
    channels_last = model.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def eager(dtype: torch.dtype | None) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.float32,
                                                        enabled=dtype is not None):  # fmt: skip
                return channels_last(x_cl)

        return run

    variants: dict[str, Callable[[], object]] = {
        "torch fp32+CL eager": eager(None),
        "torch bf16+CL eager": eager(torch.bfloat16),
        "onnxruntime int8": lambda: int8(x),
    }
    seconds = {name: [] for name in variants}
    for run in variants.values():  # warm-up
        run()
    for _ in range(args.rounds):  # in turns, so that a busy machine slows each alike
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    rates = {name: args.batch_size / min(times) for name, times in seconds.items()}
    base = rates["torch bf16+CL eager"]
    result = {
        "model": args.model,
        "batch_size": args.batch_size,
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "native_bf16": bf16_supported(torch.device("cpu")),
        "int8_warning": int8_warning(),
        "images_per_s": rates,
        "int8_vs_bf16": rates["onnxruntime int8"] / base,
        "int8_vs_fp32": rates["onnxruntime int8"] / rates["torch fp32+CL eager"],
    }
    for name, rate in rates.items():
        print(f"{name:<22} {rate:8.1f} img/s  {rate / base:5.2f}x bf16+CL")
    print(f"{result['cpu']}, {result['threads']} threads; int8 warning: {result['int8_warning']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
