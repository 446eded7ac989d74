"""Training steps with glibc's default allocator settings against `keep_freed_memory`
(runtime/memory.py), each in its own process, in alternating rounds: images/s, kernel CPU
seconds per wall second, and page faults per step. Writes benchmarks/results/allocator.json.

    .venv/bin/python benchmarks/allocator.py [--model speedrun --batch 512 --rounds 3]
    .venv/bin/python benchmarks/allocator.py --smoke     # resnet20, one step of batch 2 a setting
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import smoke
import torch

from resnetlab.bench.hardware import machine_name

STEP = """
import resource, sys, time
import torch
from resnetlab.runtime.memory import keep_freed_memory
from resnetlab.models import create_model, get_model_spec
name, batch, steps, keep = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
if keep:
    assert keep_freed_memory()
torch.manual_seed(0)
spec = get_model_spec(name)
model = create_model(name).to(memory_format=torch.channels_last)
params = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True)
x = torch.randn(batch, *spec.input_shape).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, spec.num_classes, (batch,))
def step():
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
for _ in range(2):
    step()
before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(steps):
    step()
seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
print(batch * steps / seconds, (after.ru_stime - before.ru_stime) / seconds,
      (after.ru_minflt - before.ru_minflt) / steps)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="speedrun")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "allocator.json"
    )
    args = smoke.parse_args(
        parser,
        lambda folder: {
            "model": "resnet20", "batch": 2, "steps": 1, "rounds": 1,
            "out": folder / "allocator.json",
        },
    )
    rows: dict[str, list[list[float]]] = {"glibc default": [], "keep_freed_memory": []}
    for _ in range(args.rounds):
        for keep, label in enumerate(rows):
            argv = [args.model, str(args.batch), str(args.steps), str(keep)]
            out = subprocess.run(
                [sys.executable, "-c", STEP, *argv], capture_output=True, text=True, check=True
            )
            rows[label].append([float(v) for v in out.stdout.split()])
    result = {
        "machine": machine_name(torch.device("cpu")), "model": args.model, "batch": args.batch,
        "rows": {
            label: {
                "images_per_s": statistics.median(r[0] for r in runs),
                "kernel_cpu_s_per_s": statistics.median(r[1] for r in runs),
                "page_faults_per_step": statistics.median(r[2] for r in runs),
            }
            for label, runs in rows.items()
        },
    }  # fmt: skip
    base, kept = (result["rows"][label]["images_per_s"] for label in rows)
    result["speedup"] = kept / base
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
