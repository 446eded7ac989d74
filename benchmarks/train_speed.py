"""Training-step throughput of resnet20 (32x32, batch 128) per precision and memory format.

Prints a table and writes benchmarks/results/train_speed.json. Run:
    .venv/bin/python benchmarks/train_speed.py [--model resnet20] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from resnetlab.engine.loop import make_loss
from resnetlab.engine.precision import Precision, bf16_supported
from resnetlab.models import create_model, get_model_spec


def steps_per_second(model_name: str, precision: Precision, batch: int, steps: int) -> float:
    """Optimiser steps per second on random data, after two warm-up steps."""
    torch.manual_seed(0)
    spec = get_model_spec(model_name)
    model = precision.prepare(create_model(model_name))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = make_loss("ce")
    x = precision.batch(torch.randn(batch, *spec.input_shape))
    y = torch.randint(0, spec.num_classes, (batch,))
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        with precision.autocast():
            loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/train_speed.json")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    variants = {
        "fp32 NCHW": Precision(device, None, False),
        "fp32 channels-last": Precision(device, None, True),
    }
    if bf16_supported(device):
        variants["bf16 channels-last"] = Precision(device, torch.bfloat16, True)
    results = []
    for label, precision in variants.items():
        sps = steps_per_second(args.model, precision, args.batch, args.steps)
        results.append({"variant": label, "steps_per_s": sps, "samples_per_s": sps * args.batch})
        print(f"{args.model} {label:<20} {sps * args.batch:8.0f} samples/s")
    base = results[0]["samples_per_s"]
    for r in results:
        r["speedup"] = r["samples_per_s"] / base
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "model": args.model,
                "batch": args.batch,
                "device": str(device),
                "cpu": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
