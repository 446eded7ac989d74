"""Does `serve` gain from batching concurrent requests? Requests per second of ``POST /predict``
(top-5 and a Grad-CAM overlay) from ``--clients`` clients at once, against a server that
explains one image per call of the network (``--max-batch 1``) and one that explains every
image that arrived during its last call (``--max-batch 8``, the default), in interleaved rounds.

    python benchmarks/serve_batching.py --model resnet50 --clients 8
    python benchmarks/serve_batching.py --smoke     # resnet20 at 32x32, 2 clients, 2 requests

Both servers run real uvicorn on 127.0.0.1 in this process, with random weights (the time does
not depend on them) and uploads of random 400x300 JPEGs; results go to
benchmarks/results/serve_batching.json.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import smoke
import torch
import uvicorn
from PIL import Image

from resnetlab.bench.hardware import machine_name
from resnetlab.files import write_atomically
from resnetlab.inference.predictor import load
from resnetlab.models import create_model
from resnetlab.serve.app import create_app
from resnetlab.serve.server import listen

CLASSES = [f"class{i}" for i in range(10)]


@contextmanager
def running(app: object) -> Iterator[str]:
    """``app`` on uvicorn in a thread, on a free port of 127.0.0.1: its URL."""
    listener = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]})
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()


def uploads(count: int) -> list[bytes]:
    """``count`` random 400x300 JPEGs."""
    rng = np.random.default_rng(0)
    files = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(buffer, "JPEG")
        files.append(buffer.getvalue())
    return files


def round_rate(url: str, files: list[bytes], clients: int) -> float:
    """Requests per second for ``files`` posted by ``clients`` threads at once."""

    def post(data: bytes) -> None:
        response = httpx.post(f"{url}/predict", files={"file": ("x.jpg", data)}, timeout=600)
        response.raise_for_status()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(post, files))
    return len(files) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32, help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_batching.json"))
    args = smoke.parse_args(
        parser,
        lambda folder: {
            "model": "resnet20", "input_size": 32, "clients": 2, "requests": 2, "rounds": 1,
            "out": folder / "serve_batching.json",
        },
    )  # fmt: skip
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "weights.pt"
        torch.save(create_model(args.model, num_classes=len(CLASSES)).state_dict(), weights)
        predictor = load(
            weights, model=args.model, classes=CLASSES, mean=[0.5] * 3, std=[0.25] * 3,
            input_size=args.input_size, device="cpu",
        )  # fmt: skip
    files = uploads(args.requests)
    batches = {1: "one image per call", 8: "up to 8 per call"}
    rates: dict[int, list[float]] = {size: [] for size in batches}
    apps = {size: create_app(predictor, max_upload_bytes=2**20, max_batch=size) for size in batches}
    with running(apps[1]) as single, running(apps[8]) as batched:
        urls = {1: single, 8: batched}
        for url in urls.values():
            round_rate(url, files[: args.clients], args.clients)  # warm-up
        for _ in range(args.rounds):
            for size, url in urls.items():
                rates[size].append(round_rate(url, files, args.clients))
    result = {
        "machine": machine_name(torch.device("cpu")),
        "model": args.model,
        "input_size": args.input_size,
        "clients": args.clients,
        "requests_per_round": args.requests,
        "requests_per_s": {f"max_batch_{size}": statistics.median(rates[size]) for size in rates},
        "rounds": {f"max_batch_{size}": rates[size] for size in rates},
        "mean_batch": apps[8].state.batcher.items / apps[8].state.batcher.batches,
    }
    result["speedup"] = (
        result["requests_per_s"]["max_batch_8"] / result["requests_per_s"]["max_batch_1"]
    )
    write_atomically(args.out, lambda f: f.write(json.dumps(result, indent=2).encode()), "results")
    for size, what in batches.items():
        print(f"--max-batch {size} ({what}): {statistics.median(rates[size]):.2f} requests/s")
    print(f"speed-up {result['speedup']:.2f}x, mean batch {result['mean_batch']:.1f} images")


if __name__ == "__main__":
    main()
