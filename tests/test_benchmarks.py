"""Every script in benchmarks/ at its smallest (`--smoke`, see benchmarks/smoke.py), on
generated data where it reads a folder, so that a change that breaks a script fails here. The
scripts run in this process (their own subprocesses aside); their results go to the test's
temporary folder, never to benchmarks/results/."""

from __future__ import annotations

import contextlib
import io
import json
import re
import runpy
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import make_folder
from PIL import Image

from resnetlab.cli import main
from resnetlab.config.train import TrainConfig
from resnetlab.training.train import train

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
CIFAR_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

SmokeRun = Callable[..., Path]


@pytest.fixture()
def smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SmokeRun:
    """``smoke(script, *argv)`` runs ``benchmarks/script --smoke ARGV`` as ``__main__`` and
    returns the temporary folder its results went to (made under ``tmp_path``)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts' shared modules
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def run(script: str, *argv: str) -> Path:
        path = BENCHMARKS / script
        monkeypatch.setattr(sys, "argv", [str(path), "--smoke", *argv])
        runpy.run_path(str(path), run_name="__main__")
        [folder] = tmp_path.glob(f"{path.stem}-smoke-*")
        return folder

    return run


@pytest.fixture()
def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """``subprocess.run`` of ``python -m resnetlab ARGV`` runs ``main(ARGV)`` in this process,
    its output captured where the call asks: starting a process is all that is left out."""

    def run(
        command: list[str], capture_output: bool = False, **_: object
    ) -> subprocess.CompletedProcess[str]:
        assert command[:3] == [sys.executable, "-m", "resnetlab"]
        if not capture_output:
            return subprocess.CompletedProcess(command, main(command[3:]))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(command[3:])
        return subprocess.CompletedProcess(command, code, out.getvalue(), err.getvalue())

    monkeypatch.setattr(subprocess, "run", run)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def named_classes(root: Path, names: tuple[str, ...], per_class: int, size: int = 8) -> Path:
    """``root/<name>/*.png``: ``per_class`` random ``size`` x ``size`` images per class."""
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_every_script_has_a_smoke_run() -> None:
    scripts = {path.stem for path in BENCHMARKS.glob("*.py")} - {"smoke"}
    assert sorted(s for s in scripts if f"test_{s}" not in globals()) == []


def test_allocator(smoke: SmokeRun) -> None:
    result = read_json(smoke("allocator.py") / "allocator.json")
    assert result["model"] == "resnet20" and result["batch"] == 2
    assert list(result["rows"]) == ["glibc default", "keep_freed_memory"]
    assert all(row["images_per_s"] > 0 for row in result["rows"].values())


def test_bench_standard(smoke: SmokeRun) -> None:
    [result] = read_json(smoke("bench_standard.py") / "bench_standard.json")
    assert (result["model"], result["mode"], result["batch"]) == ("resnet20", "train", 2)
    assert result["input_shape"] == [3, 8, 8]
    assert [row["row"] for row in result["rows"]] == ["seed-style", "user", "resnetlab"]


def test_call_trace(smoke: SmokeRun) -> None:
    result = read_json(smoke("call_trace.py") / "call_trace.json")
    digits, folder = result["runs"]["digits"], result["runs"]["image folder"]
    assert digits["argv"][:3] == ["train", "--data", "digits"]
    for run in (digits, folder):
        assert run["files"] == len(run["called"])
        assert {"training/train.py", "training/run.py", "training/step.py"} <= set(run["called"])
        assert not [name for name in run["called"] if name.startswith("cli/")]
    assert "data/folder.py" in folder["called"] and "data/folder.py" not in digits["called"]
    assert list(result["orchestration"]) == result["orchestration_modules"]
    assert all(lines > 0 for lines in result["orchestration"].values())


def test_data_scale(smoke: SmokeRun, capsys: pytest.CaptureFixture[str]) -> None:
    result = read_json(smoke("data_scale.py") / "data_scale.json")
    assert (result["images"], result["workers"], result["repeats"]) == (64, 2, 1)
    assert list(result["readers"]) == ["folder", "shards", "parquet", "torchvision ImageFolder"]
    formats = result["formats"]
    assert formats["folder"]["files"] == 64 and formats["shards"]["files"] == 2  # + shards.json
    assert formats["parquet"]["files"] == 1 and result["cache_drop"]["possible"]
    for states in result["readers"].values():
        assert [len(states[state]["images_per_s"]["runs"]) for state in states] == [1, 1, 1]
        assert states["warm"]["first_batch_s"]["median"] >= states["warm"]["open_s"]["median"]
    assert set(result["targets"]["parquet"]) >= {"warm_vs_user_met", "cold_met"}
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 4 + 1 and table[-1].startswith("| decode ceiling")


def test_data_throughput(smoke: SmokeRun) -> None:
    data = make_folder(Path("data"), per_class=8, size=8)
    result = read_json(smoke("data_throughput.py", "--data", str(data)) / "data_throughput.json")
    assert (result["files"], result["classes"], result["bad"]) == (16, 2, 0)
    assert result["train_step"]["steps"] == 1 and result["train_step"]["step_s"] > 0
    assert set(result["streaming_images_per_s"]) == {"workers_0", "workers_2"}


def test_finetune_transfer(smoke: SmokeRun) -> None:
    data = named_classes(Path("cifar"), CIFAR_CLASSES, per_class=4)
    result = read_json(
        smoke("finetune_transfer.py", "--data", str(data)) / "finetune_transfer.json"
    )
    assert [row["method"] for row in result["rows"]] == ["from scratch", "linear-probe"]
    assert all(0 <= row["accuracy"] <= 100 for row in result["rows"])
    assert Path(result["weights"]).is_file()


@pytest.mark.usefixtures("in_process")
def test_gpu_check(smoke: SmokeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU rehearsal, steps 1, 3 and 4; the commands run in this process, but for the run
    killed with SIGKILL and the server (with this process's thread count, so that the resumed
    run can match bit for bit)."""
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    result = read_json(smoke("gpu_check.py", "--device", "cpu") / "gpu_check.json")
    assert (result["device"], result["smoke"], result["torch"]) == ("cpu", True, torch.__version__)
    steps = {row["step"]: row for row in result["steps"]}
    assert list(steps) == [1, 3, 4] and {row["status"] for row in steps.values()} == {"passed"}
    assert steps[1]["details"]["eager_samples_per_s"] > 0
    assert steps[1]["details"]["pipeline"].startswith("cached uint8 tensors")
    # killed after a state saved in the second epoch (steps 6 and 8; on a loaded machine the
    # kill can land only after the last, at step 10): resumed from it, bit for bit
    assert re.fullmatch(r"epoch [12], step (6|8|10)", steps[3]["details"]["resumed_after"])
    assert steps[3]["details"]["bit_for_bit"]
    classes = {folder.name for folder in (Path(result["work"]) / "images").iterdir()}
    details = steps[4]["details"]
    assert len(classes) == 10 and {details["predicted"], details["served"]} <= classes
    assert details["export_parity"]["passed"]


def test_gpu_check_without_a_gpu_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["gpu_check.py"])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(str(BENCHMARKS / "gpu_check.py"), run_name="__main__")
    assert stopped.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith("gpu_check: no CUDA GPU here") and "--device cpu --smoke" in err


def test_jpeg_distortion(smoke: SmokeRun) -> None:
    source = named_classes(Path("png"), ("a", "b"), per_class=2, size=16)
    for quality, folder in ((75, Path("source")), (50, Path("q50"))):
        for path in source.glob("*/*"):
            target = folder / path.relative_to(source).with_suffix(".jpg")
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.open(path).save(target, quality=quality)
        source = folder  # q50 is re-encoded from the JPEG source
    result = read_json(
        smoke("jpeg_distortion.py", "source", "--folder", "50=q50") / "jpeg_distortion.json"
    )
    assert set(result["mse"]) == {"75", "50"} and result["mse"]["50"] > result["mse"]["75"] > 0


@pytest.mark.usefixtures("in_process")
def test_paper_gap(smoke: SmokeRun) -> None:
    """Both runs train in this process."""
    ledger = (BENCHMARKS / "paper_gap_runs.json").read_bytes()
    data = make_folder(Path("data"), per_class=8, size=8)
    folder = smoke("paper_gap.py", "--data", str(data))
    assert (BENCHMARKS / "paper_gap_runs.json").read_bytes() == ledger
    runs = read_json(folder / "paper_gap_runs.json")
    assert [(run["factor"], run["seed"], run["epochs"]) for run in runs] == [
        ("baseline", 0, 1),
        ("jpeg50", 0, 1),
    ]
    result = read_json(folder / "e1" / "paper_gap.json")
    assert list(result["factors"]) == ["baseline", "jpeg50"]
    lines = result["jpeg_extrapolation"]["lines"]
    assert list(lines) == ["quality", "quantiser_scale", "mse_against_lossless"]
    assert (folder / "e1" / "paper_gap.md").read_text().startswith("Protocol: resnet20")


def test_resume_exactness(smoke: SmokeRun) -> None:
    data = make_folder(Path("data"), per_class=8, size=8)
    result = read_json(smoke("resume_exactness.py", "--data", str(data)) / "resume_exactness.json")
    assert result["rows"] == [
        {"pipeline": "cached", "trials": 1, "killed": result["rows"][0]["killed"],
         "matched": 1, "reference_s": result["rows"][0]["reference_s"]},
    ]  # fmt: skip


def test_serve_batching(smoke: SmokeRun) -> None:
    result = read_json(smoke("serve_batching.py") / "serve_batching.json")
    assert (result["model"], result["clients"], result["requests_per_round"]) == ("resnet20", 2, 2)
    assert all(rate > 0 for rate in result["requests_per_s"].values())


def test_shapes_crops(smoke: SmokeRun) -> None:
    crops = smoke("shapes_crops.py") / "crops"
    images = sorted(crops.glob("*/*.png"))
    assert images and all(Image.open(path).size == (64, 64) for path in images)


def test_tabular_cv(smoke: SmokeRun) -> None:
    result = read_json(smoke("tabular_cv.py") / "tabular_cv.json")
    methods = result["tables"]["penguins"]["methods"]
    assert "resnet_tabular" in methods and len(methods["resnet_tabular"]["values"]) == 2


def test_time_to_accuracy(smoke: SmokeRun) -> None:
    data = make_folder(Path("data"), per_class=8, size=8)
    cfg = TrainConfig(model="resnet20", data=str(data), epochs=2, out="run", quiet=True)
    run_dir = train(cfg).run_dir
    folder = smoke("time_to_accuracy.py", f"tiny={run_dir}")
    summary = read_json(folder / "time_to_accuracy.json")
    assert list(summary) == ["tiny"] and summary["tiny"]["train_minutes"] > 0
    assert (folder / "time_to_accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_user_loop(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The loops themselves run in `resnetlab bench` (test_compile.py); this is the script."""
    argv = ["user_loop.py", "--model", "resnet18", "--batch", "2", "--size", "32", "--steps", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(BENCHMARKS / "user_loop.py"), run_name="__main__")
    assert capsys.readouterr().out.startswith("resnet18: ")
