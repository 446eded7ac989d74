"""A used run folder is never overwritten by accident: a new run into a folder that holds a
run is a one-line error (naming --resume where a state could continue it) unless --overwrite,
which removes that run's files and only those; default folders never collide."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, crash_after_state, run_cli

import resnetlab.training.claim
from resnetlab.cli import main
from resnetlab.errors import ResnetlabError
from resnetlab.models import create_model
from resnetlab.training.claim import claim_run_dir, default_run_dir, run_files

TRAIN = [
    "train", "--model", "resnet_tabular", "--data", "tabular-synthetic", "--batch-size", "100",
    "--quiet",
]  # fmt: skip
REFUSED = "give another --out, or --overwrite to replace it"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file()
    }


def epochs(run: Path) -> list[int]:
    """The epochs that the run's metrics.jsonl holds."""
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_second_train_into_a_finished_run_s_folder_is_refused_and_changes_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_cli(capsys, *TRAIN, "--epochs", "1", "--out", "r1")[0] == 0
    before = snapshot(Path("r1"))
    code, out, err = run_cli(capsys, *TRAIN, "--epochs", "2", "--out", "r1")
    assert_one_line_error(
        code, err, f"--out r1 holds a finished run (1 epoch, best.safetensors): {REFUSED}"
    )
    assert out == "" and snapshot(Path("r1")) == before


def test_a_new_run_into_an_interrupted_run_s_folder_names_resume(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch, pytest.raises(MemoryError):
        crash_after_state(patch, at_step=10)  # in epoch 2 of 8 steps each
        main([*TRAIN, "--epochs", "2", "--save-every", "2", "--out", "r1"])
    before = snapshot(Path("r1"))
    code, _, err = run_cli(capsys, *TRAIN, "--epochs", "2", "--out", "r1")
    assert_one_line_error(
        code, err, "--out r1 holds an interrupted run (1 epoch, state.pt): continue it with "
        f"--resume r1, {REFUSED}",
    )  # fmt: skip
    code, _, err = run_cli(capsys, "train", "--resume", "r1", "--overwrite")
    assert_one_line_error(code, err, "--overwrite starts a new run and --resume r1 continues one")
    assert snapshot(Path("r1")) == before
    assert run_cli(capsys, "train", "--resume", "r1")[0] == 0
    assert epochs(Path("r1")) == [1, 2]


def test_overwrite_removes_the_earlier_run_s_files_and_only_those(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A folder holding only files that no run writes is free; --overwrite later removes every
    file the run wrote (TensorBoard's events too), keeps the others, and says so as the new
    run's first line."""
    run = Path("r1")
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    assert run_cli(capsys, *TRAIN, "--epochs", "1", "--tensorboard", "--out", "r1")[0] == 0
    written = sorted(path for path in run.iterdir() if path.name != "notes.txt")
    assert run_files(run) == written  # every file a run writes is one that the rule knows
    assert {"tensorboard", "state.pt", "curves.png"} <= {path.name for path in written}
    count = len(snapshot(run)) - 1
    code, out, _ = run_cli(capsys, *TRAIN, "--epochs", "2", "--out", "r1", "--overwrite")
    assert code == 0
    note = (
        f"--overwrite: removed a finished run from r1 (1 epoch, best.safetensors; {count} files)"
    )
    assert out.splitlines()[0] == note
    log = (run / "log.txt").read_text()
    assert log.startswith(note + "\n") and "Epoch [1/2]" in log and "Epoch [1/1]" not in log
    assert epochs(run) == [1, 2]
    assert not (run / "tensorboard").exists()
    assert (run / "notes.txt").read_text() == "mine"


@pytest.fixture()
def finished_run() -> dict[str, bytes]:
    """A folder ``r`` holding what a finished two-epoch run leaves (contents faked)."""
    Path("r").mkdir()
    files = {
        "log.txt": b"Epoch [1/2] ...\n",
        "metrics.jsonl": b'{"epoch": 1}\n{"epoch": 2}\n',
        "best.safetensors": b"weights",
        "confusion.json": b"{}",
    }
    for name, data in files.items():
        Path("r", name).write_bytes(data)
    return files


@pytest.mark.parametrize(
    "argv",
    [
        ["finetune", "--weights", "w.pt", "--data", "digits"],
        ["lr-find", "--data", "digits"],
        ["detect", "train", "--data", "shapes", "--limit", "4", "--image-size", "64"],
        ["experiment", "degradation", "--depths", "20"],
        ["experiment", "gradients"],
        ["experiment", "case-study"],
        ["experiment", "video"],
    ],
    ids=lambda argv: " ".join(argv[:2]),
)
def test_every_command_that_writes_a_run_folder_refuses_a_used_one(
    argv: list[str], finished_run: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save(create_model("resnet20", num_classes=10, in_chans=1).state_dict(), "w.pt")
    code, _, err = run_cli(capsys, *argv, "--out", "r")
    assert_one_line_error(
        code, err, f"--out r holds a finished run (2 epochs, best.safetensors): {REFUSED}"
    )
    assert snapshot(Path("r")) == finished_run


def test_overwrite_of_an_experiment_removes_its_runs_folders_and_nothing_else() -> None:
    kept = {"plain20/mine.txt", "data/0.png", "notes.md"}
    written = {
        "log.txt", "degradation.json", ".degradation.json.x1.tmp", "plain20/log.txt",
        "plain20/best.safetensors", "plain20/tensorboard/events.1", "resnet20/metrics.jsonl",
    }  # fmt: skip
    for name in kept | written:
        Path("exp", name).parent.mkdir(parents=True, exist_ok=True)
        Path("exp", name).write_text(name)
    with pytest.raises(ResnetlabError, match="--out exp holds an earlier run"):
        claim_run_dir("exp", "degradation", nested=True)
    path, note = claim_run_dir("exp", "degradation", overwrite=True, nested=True)
    assert path == Path("exp") and set(snapshot(path)) == kept
    assert not Path("exp", "resnet20").exists()
    assert note == (
        "--overwrite: removed an earlier run from exp (.degradation.json.x1.tmp, "
        f"degradation.json, log.txt and 2 more; {len(written)} files)"
    )


class FrozenClock(datetime):
    """``datetime`` whose ``now()`` is always the same second."""

    @classmethod
    def now(cls, tz: object = None) -> FrozenClock:  # type: ignore[override]
        return cls(2026, 1, 2, 3, 4, 5)


def test_two_runs_started_in_one_second_get_two_default_folders(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resnetlab.training.claim, "datetime", FrozenClock)
    for _ in range(2):
        assert run_cli(capsys, *TRAIN, "--epochs", "1")[0] == 0
    first = Path("runs/20260102-030405-resnet_tabular-tabular-synthetic")
    second = first.with_name(first.name + "-2")
    assert sorted(Path("runs").iterdir()) == [first, second]
    for run in (first, second):
        assert epochs(run) == [1] and f"run folder: {run}" in (run / "log.txt").read_text()


def test_runs_that_claim_a_default_folder_at_once_get_one_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(resnetlab.training.claim, "datetime", FrozenClock)
    with ThreadPoolExecutor(8) as pool:
        folders = list(pool.map(lambda _: default_run_dir("resnet20-digits"), range(16)))
    assert len(set(folders)) == 16 and all(folder.is_dir() for folder in folders)
    assert sorted(folders) == sorted(Path("runs").iterdir())
