"""One prepared check of resnetlab on one GPU, in under 4 minutes: six steps, each timed and
reported as passed, failed (with its last line) or skipped (with the reason), one table.

    python benchmarks/gpu_check.py                            # the six steps on the GPU
    python benchmarks/gpu_check.py --json gpu_check.json --steps 1 3
    python benchmarks/gpu_check.py --device cpu --smoke       # rehearsal: steps 1, 3, 4, tiny
    python benchmarks/gpu_check.py --smoke                    # the same miniature on the GPU

1. resnet20 on in-memory 32x32 images: samples/s eager and with --compile, the precision
   `auto` chose, and whether the data was kept on the GPU;
2. the speed-run recipe with a one-minute --time-budget: accuracy and time;
3. kill -9 in the middle of a run (just after a state saved half-way through its second
   epoch), then --resume: its final validation accuracy within 0.5 points of the same run
   never stopped (and whether it matched bit for bit);
4. eval, predict, export --format onnx with its parity check, and serve answering one
   POST /predict (on 127.0.0.1, a free port);
5. detect train for 50 steps (the built-in shapes set);
6. bench --model resnet50 --mode train: its rows and the fp32, bf16 and fp16 matmul ceilings.

Every step runs the real command line (`python -m resnetlab ...`) in a subprocess, on images
the script generates (10 classes of coloured squares on noise); a failing step does not stop
the next. Without a GPU, and without --device cpu, it says so in one line and exits 2. Progress
goes to stdout as it happens, and --json is rewritten after each step, so a run cut short still
says what it found. The runs stay in --work (default: a new temporary folder).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import smoke
import torch
from PIL import Image

from resnetlab.bench.hardware import machine_name
from resnetlab.checkpoints.checkpoint import load_checkpoint
from resnetlab.checkpoints.state import STATE_FILE, load_state
from resnetlab.files import write_atomically
from resnetlab.training.rundir import fingerprint

COLOURS = {
    "red": (230, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 230),
    "yellow": (230, 230, 30), "magenta": (220, 30, 220), "cyan": (30, 220, 220),
    "orange": (240, 140, 20), "purple": (120, 40, 180), "white": (245, 245, 245),
    "black": (10, 10, 10),
}  # fmt: skip
TOLERANCE = 0.5  # points of validation accuracy between a resumed run and one never stopped


@dataclass(frozen=True)
class Sizes:
    """How big each step's work is."""

    per_class: int  # generated 32x32 images per class (10 classes, a tenth held out)
    batch: int
    epochs: int  # resnet20's runs (steps 1, 3 and 4)
    budget_minutes: float  # step 2's --time-budget
    timeout_s: int  # the longest any one command may take (step 2's: its budget more)
    compile: bool = True  # step 1's compiled run (compiling takes minutes on a CPU)


FULL = Sizes(per_class=1500, batch=512, epochs=4, budget_minutes=1, timeout_s=150)
SMOKE = Sizes(per_class=10, batch=16, epochs=2, budget_minutes=0.1, timeout_s=120, compile=False)


class Skipped(Exception):
    """A step that cannot run here; the message says why."""


class Failed(Exception):
    """A step whose check failed; the message is the line to read."""


def last_line(text: str) -> str:
    """The last line of ``text`` that is not blank."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def make_images(root: Path, per_class: int, seed: int = 0) -> Path:
    """``root/<colour>/<i>.png``: ``per_class`` 32x32 RGB images of each of 10 classes, grey
    noise with an 8x8 square of the class's colour (jittered) at a random place."""
    rng = np.random.default_rng(seed)
    names, palette = list(COLOURS), np.array(list(COLOURS.values()))
    labels = np.repeat(np.arange(len(names)), per_class)
    images = np.repeat(rng.integers(0, 256, (len(labels), 32, 32, 1), dtype=np.uint8), 3, axis=3)
    corners = rng.integers(0, 32 - 8 + 1, (len(labels), 2))
    colours = np.clip(palette[labels] + rng.integers(-40, 41, (len(labels), 3)), 0, 255)
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)

    def save(i: int) -> None:
        top, left = corners[i]
        images[i, top : top + 8, left : left + 8] = colours[i]
        Image.fromarray(images[i]).save(root / names[labels[i]] / f"{i:05d}.png", compress_level=1)

    with ThreadPoolExecutor() as pool:
        list(pool.map(save, range(len(labels))))
    return root


def metrics(run: Path) -> list[dict[str, Any]]:
    """A run's metrics.jsonl, one dict per epoch."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def log_value(run: Path, prefix: str) -> str:
    """What follows ``prefix`` on the first line of the run's log.txt that starts with it."""
    for line in (run / "log.txt").read_text().splitlines():
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    raise Failed(f"{run / 'log.txt'} has no line '{prefix}...'")


def ran_as(run: Path) -> str:
    """What --device and --precision resolved to, from config.yaml's first line."""
    first = (run / "config.yaml").read_text().splitlines()[0]
    return first.removeprefix("# ran as: ").split(" (")[0]


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, seconds: float) -> None:
    """Wait until ``condition()`` holds, at most ``seconds``, while ``process`` runs."""
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None:
            raise Failed(f"the process ended (status {process.returncode}) before it was due to")
        if time.monotonic() > deadline:
            raise Failed(f"not ready after {seconds:.0f} s")
        time.sleep(0.05)


def stop(process: subprocess.Popen) -> None:
    """End ``process``: SIGTERM, then SIGKILL after 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Check:
    """The steps' shared setting: the device, the sizes, and the folder the runs go to."""

    device: str
    sizes: Sizes
    work: Path

    def say(self, line: str) -> None:
        print(line, flush=True)

    def images(self) -> Path:
        """The generated image folder (made on first use)."""
        root = self.work / "images"
        if not root.is_dir():
            start = time.perf_counter()
            make_images(root, self.sizes.per_class)
            self.say(f"    {10 * self.sizes.per_class} images in {root} "
                     f"({time.perf_counter() - start:.1f} s)")  # fmt: skip
        return root

    def command(self, argv: list[str]) -> list[str]:
        return [sys.executable, "-m", "resnetlab", *argv]

    def resnetlab(self, *argv: str, timeout: float | None = None) -> str:
        """Run ``resnetlab ARGV`` to its end; its stdout. A failure raises ``Failed`` with its
        last line; its whole output is in commands.log."""
        start = time.perf_counter()
        timeout = timeout or self.sizes.timeout_s
        try:
            done = subprocess.run(
                self.command(list(argv)), capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise Failed(f"resnetlab {argv[0]}: no end after {timeout:.0f} s") from None
        seconds = time.perf_counter() - start
        with (self.work / "commands.log").open("a") as log:
            log.write(f"$ resnetlab {' '.join(argv)}\n{done.stdout}{done.stderr}\n")
        words = itertools.takewhile(lambda word: not word.startswith("-"), argv)
        self.say(f"    resnetlab {' '.join(words)}: {seconds:.1f} s")
        if done.returncode != 0:
            raise Failed(last_line(done.stderr) or last_line(done.stdout) or
                         f"resnetlab {argv[0]}: exit status {done.returncode}")  # fmt: skip
        return done.stdout

    def train_argv(self, name: str, *argv: str) -> list[str]:
        """``train`` into ``work/name`` on the generated images, with ``argv`` added."""
        return [
            "train", "--data", str(self.images()), "--out", str(self.work / name),
            "--cache-dir", str(self.work / "cache"), "--val-fraction", "0.1",
            "--test-fraction", "0", "--seed", "0", "--device", self.device, "--quiet",
            "--overwrite", *argv,
        ]  # fmt: skip

    def train(self, name: str, *argv: str, timeout: float | None = None) -> Path:
        """A run of ``train_argv``; its folder."""
        self.resnetlab(*self.train_argv(name, *argv), timeout=timeout)
        return self.work / name

    def resnet20(self, compile: str = "off") -> list[str]:
        """resnet20's flags for ``train_argv``, ``--compile`` as given."""
        sizes = self.sizes
        return ["--model", "resnet20", "--batch-size", str(sizes.batch),
                "--epochs", str(sizes.epochs), "--compile", compile]  # fmt: skip

    def eager(self) -> Path:
        """resnet20 trained eagerly, once: step 1's speed, step 3's run never stopped and step
        4's checkpoint."""
        run = self.work / "eager"
        if not (run / "confusion.json").is_file():  # its last file
            self.train("eager", *self.resnet20())
        return run


def samples_per_s(run: Path) -> float:
    """The median training speed of a run's epochs after the first (which warms up)."""
    rates = sorted(epoch["samples_per_s"] for epoch in metrics(run)[1:] or metrics(run))
    return rates[len(rates) // 2]


def throughput(check: Check) -> tuple[str, dict[str, Any]]:
    """Step 1: resnet20's samples/s eager and compiled, the precision and where the data was."""
    eager = check.eager()
    result = {"eager_samples_per_s": samples_per_s(eager), "ran_as": ran_as(eager)}
    result["pipeline"] = log_value(eager, "data pipeline:")
    on_gpu = "kept on cuda" in result["pipeline"]
    if check.device.startswith("cuda") and not on_gpu:
        raise Failed(f"the data was not kept on the GPU (data pipeline: {result['pipeline']})")
    line = f"eager {result['eager_samples_per_s']:,.0f} samples/s"
    if not check.sizes.compile:
        line += " (--compile left out in --smoke)"
    else:
        compiled = check.train("compiled", *check.resnet20("on"))
        result["compiled_samples_per_s"] = samples_per_s(compiled)
        speedup = result["compiled_samples_per_s"] / result["eager_samples_per_s"]
        line += f", compiled {result['compiled_samples_per_s']:,.0f} ({speedup:.2f}x)"
    where = "data kept on the GPU" if on_gpu else "data on the host"
    return f"{line}; {result['ran_as']}; {where}", result


def speed_run(check: Check) -> tuple[str, dict[str, Any]]:
    """Step 2: the speed-run recipe fitted to --time-budget: accuracy and time."""
    minutes = check.sizes.budget_minutes
    start = time.perf_counter()
    run = check.train(
        "speedrun", "--recipe", "speedrun", "--time-budget", f"{minutes:g}",
        timeout=60 * minutes + check.sizes.timeout_s,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    accuracy = json.loads((run / "confusion.json").read_text())["accuracy"]
    epochs = len(metrics(run))
    result = {"accuracy": accuracy, "epochs": epochs, "seconds": seconds, "ran_as": ran_as(run)}
    return (
        f"{accuracy:.1f}% validation accuracy (flip TTA) after {epochs} epoch(s), "
        f"{seconds:.0f} s with start-up for a {minutes:g}-minute budget; {result['ran_as']}"
    ), result


def same_training(run: Path, other: Path) -> bool:
    """Whether two runs trained alike bit for bit: their last weights and their metrics but
    the timings (``fingerprint`` less the checkpoints' headers, which hold --save-every)."""
    weights, _ = load_checkpoint(run / "last.safetensors")
    others, _ = load_checkpoint(other / "last.safetensors")
    same = weights.keys() == others.keys() and all(
        torch.equal(weights[key], others[key]) for key in weights
    )
    return same and fingerprint(run)["metrics"] == fingerprint(other)["metrics"]


def saved_step(run: Path) -> int:
    """The step at which the run's state was last saved (0: none yet), read again only when
    the state was."""
    state = run / STATE_FILE
    return _steps_done(state, state.stat().st_mtime_ns) if state.is_file() else 0


@functools.lru_cache
def _steps_done(state: Path, modified_ns: int) -> int:
    return load_state(state)["steps_done"]


def resume(check: Check) -> tuple[str, dict[str, Any]]:
    """Step 3: kill -9 in the middle of a run, --resume it, compare with a run never stopped."""
    reference = check.eager()
    epoch_steps = metrics(reference)[0]["step"]
    save_every = max(1, epoch_steps // 2)  # a state half-way through each epoch
    killed = check.work / "killed"
    start = time.perf_counter()
    process = subprocess.Popen(
        check.command(check.train_argv("killed", *check.resnet20(),
                                       "--save-every", str(save_every))),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:  # just after the first state saved within the second epoch
        wait_for(lambda: saved_step(killed) > epoch_steps, process, check.sizes.timeout_s)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        stop(process)
    check.say(f"    resnetlab train: killed with SIGKILL after {time.perf_counter() - start:.1f} s")
    check.resnetlab("train", "--resume", str(killed), "--quiet")
    resumed_at = log_value(killed, "resuming after")
    before, after = metrics(reference)[-1]["val_acc"], metrics(killed)[-1]["val_acc"]
    exact = same_training(killed, reference)
    result = {"resumed_after": resumed_at, "val_acc_never_stopped": before,
              "val_acc_resumed": after, "bit_for_bit": exact}  # fmt: skip
    line = (
        f"killed, resumed after {resumed_at}: validation accuracy {after:.2f}% resumed, "
        f"{before:.2f}% never stopped ({'bit for bit' if exact else 'not bit for bit'})"
    )
    if abs(after - before) > TOLERANCE:
        raise Failed(f"{line}: more than {TOLERANCE} points apart")
    return line, result


def missing(*modules: str) -> list[str]:
    """Those of ``modules`` that are not installed."""
    return [name for name in modules if find_spec(name) is None]


def serve_one(check: Check, checkpoint: Path, image: Path) -> dict[str, Any]:
    """Start `resnetlab serve` on a free port of 127.0.0.1, post ``image`` to /predict, stop
    it: the answer."""
    import httpx

    start, log = time.perf_counter(), check.work / "serve.log"
    argv = [
        "serve", "--checkpoint", str(checkpoint), "--device", check.device,
        "--host", "127.0.0.1", "--port", "0",
    ]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(
            check.command(argv), stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        serving = re.compile(r"serving .* at (http://\S+)")
        wait_for(lambda: serving.search(log.read_text()) is not None, process, 60)
        url = serving.search(log.read_text())[1]  # type: ignore[index]
        with image.open("rb") as data:
            response = httpx.post(f"{url}/predict", files={"file": (image.name, data)}, timeout=60)
        if response.status_code != 200:
            raise Failed(f"POST /predict: {response.status_code} {response.text[:200]}")
        check.say(f"    resnetlab serve: answered after {time.perf_counter() - start:.1f} s")
        return response.json()
    except Failed as failure:
        raise Failed(f"serve: {failure} ({last_line(log.read_text())})") from None
    finally:
        stop(process)


def inference(check: Check) -> tuple[str, dict[str, Any]]:
    """Step 4: eval, predict, export to ONNX with its parity check, serve one /predict."""
    checkpoint = check.eager() / "best.safetensors"
    device = ["--device", check.device]
    evaluated = json.loads(check.resnetlab("eval", "--checkpoint", str(checkpoint), *device,
                                           "--split", "val", "--json"))  # fmt: skip
    image = next((check.images() / "red").glob("*.png"))
    [answer] = json.loads(check.resnetlab("predict", "--checkpoint", str(checkpoint), *device,
                                          "--json", str(image)))  # fmt: skip
    result: dict[str, Any] = {"eval_accuracy": evaluated["accuracy"],
                              "predicted": answer["top"][0]["class"]}  # fmt: skip
    parts = [f"eval {evaluated['accuracy']:.1f}% (val)", f"predict {answer['top'][0]['class']}"]
    lacking = missing("onnx", "onnxscript", "onnxruntime")
    if lacking:
        parts.append(f"export skipped ({', '.join(lacking)} not installed)")
    else:
        exported = json.loads(check.resnetlab("export", "--checkpoint", str(checkpoint),
                                              "--format", "onnx", "--json"))  # fmt: skip
        result["export_parity"] = exported["parity"]
        parts.append(f"onnx parity passed (max diff {exported['parity']['max_abs_diff']:.2g})")
    lacking = missing("fastapi", "uvicorn", "multipart", "httpx")
    if lacking:
        parts.append(f"serve skipped ({', '.join(lacking)} not installed)")
    else:
        served = serve_one(check, checkpoint, image)
        result["served"] = served["top"][0]["class"]
        parts.append(f"serve /predict {served['top'][0]['class']}")
    return ", ".join(parts), result


def detection(check: Check) -> tuple[str, dict[str, Any]]:
    """Step 5: detect train for 50 steps (100 shapes images, batches of 4, 2 epochs)."""
    lacking = missing("torchmetrics", "faster_coco_eval")
    if lacking:
        raise Skipped(f"{', '.join(lacking)} not installed (the detection extra)")
    run = check.work / "detect"
    check.resnetlab(
        "detect", "train", "--data", "shapes", "--limit", "100", "--batch-size", "4",
        "--epochs", "2", "--device", check.device, "--out", str(run), "--overwrite",
    )  # fmt: skip
    scores = json.loads((run / "test.json").read_text())
    speed = metrics(run)[-1]["images_per_s"]
    result = {"steps": 50, "images_per_s": speed, "map_50": scores["map_50"], "map": scores["map"]}
    return f"50 steps, {speed:.0f} images/s, test mAP@0.5 {scores['map_50']:.3f}", result


def bench(check: Check) -> tuple[str, dict[str, Any]]:
    """Step 6: bench resnet50 training (its compiled row left out): rows and ceilings."""
    out = check.work / "bench.json"
    check.resnetlab(
        "bench", "--model", "resnet50", "--mode", "train", "--device", check.device,
        "--no-compile", "--json", str(out),
    )  # fmt: skip
    result = json.loads(out.read_text())
    rows = ", ".join(
        f"{row['row']} {row['images_per_s']:,.0f} ({row['precision']})" for row in result["rows"]
    )
    ceilings = ", ".join(f"{name} {tflops:.3g}" for name, tflops in
                         result["matmul_tflops"].items())  # fmt: skip
    kept = {"rows": result["rows"], "matmul_tflops": result["matmul_tflops"]}
    return f"images/s: {rows}; matmul TFLOP/s: {ceilings}", kept


STEPS: dict[int, tuple[str, Callable[[Check], tuple[str, dict[str, Any]]]]] = {
    1: ("resnet20, in-memory 32x32: eager and --compile", throughput),
    2: ("speed-run recipe, --time-budget", speed_run),
    3: ("kill -9 mid-run, --resume", resume),
    4: ("eval, predict, export onnx, serve", inference),
    5: ("detect train, 50 steps", detection),
    6: ("bench resnet50 train, ceilings", bench),
}


def run_step(check: Check, number: int) -> dict[str, Any]:
    """One step, timed: passed, failed (with its last line) or skipped (with the reason)."""
    name, step = STEPS[number]
    check.say(f"[{number}] {name}")
    start = time.perf_counter()
    row: dict[str, Any] = {"step": number, "name": name}
    try:
        row["result"], row["details"] = step(check)
        row["status"] = "passed"
    except Skipped as reason:
        row.update(status="skipped", result=str(reason))
    except Exception as error:  # the step's failure is the finding; the next step still runs
        text = str(error) if isinstance(error, Failed) else f"{type(error).__name__}: {error}"
        row.update(status="failed", result=last_line(text))
    row["seconds"] = round(time.perf_counter() - start, 1)
    check.say(f"[{number}] {row['status']} in {row['seconds']} s: {row['result']}")
    return row


def header(device: torch.device) -> dict[str, Any]:
    """The machine, torch and CUDA: the table's first line."""
    return {
        "machine": machine_name(device),
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def table(head: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table under a line naming the machine."""
    lines = [
        f"gpu_check on {head['machine']} ({head['device']}), torch {head['torch']}, "
        f"CUDA {head['cuda'] or 'none'}",
        "",
        "| step | check | status | s | result |",
        "|---|---|---|---:|---|",
    ]
    lines += [
        f"| {r['step']} | {r['name']} | {r['status']} | {r['seconds']:.0f} | "
        f"{r['result'].replace('|', '/')} |"
        for r in rows
    ]
    return "\n".join(lines)


def write_json(path: Path, results: dict[str, Any]) -> None:
    """``results`` in ``path``, written atomically (a run cut short leaves the last whole one)."""
    text = json.dumps(results, indent=2) + "\n"
    write_atomically(path, lambda f: f.write(text.encode()), "the results")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1 ... or cpu")
    parser.add_argument("--steps", type=int, nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--json", type=Path, help="also write the table as JSON")
    parser.add_argument("--work", type=Path, help="the runs' folder (default: a temporary one)")
    args = smoke.parse_args(
        parser,
        lambda folder: {
            "steps": [1, 3, 4], "json": folder / "gpu_check.json", "work": folder / "work",
        },
    )  # fmt: skip
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA GPU here (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda or 'none'}); rehearse with --device cpu --smoke",
            file=sys.stderr,
        )
        raise SystemExit(2)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    check = Check(args.device, SMOKE if args.smoke else FULL, work)
    head = {**header(device), "smoke": args.smoke, "work": str(work)}
    check.say(table(head, []).splitlines()[0] + f"; runs in {work}")
    rows: list[dict[str, Any]] = []
    for number in sorted(set(args.steps)):
        rows.append(run_step(check, number))
        if args.json is not None:
            write_json(args.json, {**head, "steps": rows})
    print()
    print(table(head, rows))


if __name__ == "__main__":
    main()
