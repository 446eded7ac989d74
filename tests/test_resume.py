"""Exact resume: a run killed any number of times ends bit-identical to one that never stopped."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import crash_after_state, make_folder, wait_for_state, wait_into_next_save
from torch.optim.lr_scheduler import LambdaLR

from resnetlab.checkpoints.state import STATE_FILE, load_state
from resnetlab.cli import main
from resnetlab.training import run as run_module
from resnetlab.training.rundir import fingerprint

# Every random stream a run uses: batch order, crops, flips, Cutout (per sample) and MixUp
# (torch's global generator), on the in-memory path.
RUN = [
    "train", "--data", "digits", "--epochs", "3", "--batch-size", "64", "--crop-padding", "1",
    "--flip", "--cutout", "2", "--mixup", "0.2", "--save-every", "3", "--quiet",
]  # fmt: skip


def start(argv: list[str], where: Path) -> subprocess.Popen[bytes]:
    """``python -m resnetlab ARGV`` in ``where`` with this process's thread count, its output
    in where/output.txt."""
    log = (where / "output.txt").open("ab")
    command = [sys.executable, "-m", "resnetlab", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.Popen(command, cwd=where, stdout=log, stderr=subprocess.STDOUT, env=env)


def finish(argv: list[str], where: Path) -> None:
    process = start(argv, where)
    assert process.wait(timeout=300) == 0, (where / "output.txt").read_text()[-2000:]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The run that never stopped, in this process (as many threads as the subprocesses)."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert main([*RUN, "--out", str(out)]) == 0
    return fingerprint(out)


def test_sigkill_at_random_steps_then_resume_is_bit_identical(
    uninterrupted: dict, tmp_path: Path
) -> None:
    rng = random.Random(0)
    run_dir, kills, resumed = tmp_path / "run", 0, False
    while kills < 5:
        argv = ["train", "--resume", "run"] if resumed else [*RUN, "--out", "run"]
        process = start(argv, tmp_path)
        if not wait_for_state(run_dir, process, newer_than=time.time() if resumed else 0):
            break  # the run ended before it could be killed again
        # within the next 3 steps whatever the machine's speed: 5 kills before the 66 steps end
        if not wait_into_next_save(run_dir, process, rng) or process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills, resumed = kills + 1, True
    assert kills >= 5
    finish(["train", "--resume", "run"], tmp_path)
    assert fingerprint(run_dir) == uninterrupted
    log = (run_dir / "log.txt").read_text()
    assert log.count("resuming after epoch") >= 5


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_at_a_step_saves_and_says_how_to_resume(
    sig: signal.Signals, code: int, uninterrupted: dict, tmp_path: Path
) -> None:
    process = start([*RUN, "--out", "run"], tmp_path)
    assert wait_for_state(tmp_path / "run", process, newer_than=0)
    process.send_signal(sig)
    assert process.wait(timeout=60) == code
    last = (tmp_path / "output.txt").read_text().strip().splitlines()[-1]
    assert last.startswith(f"resnetlab: stopped by {sig.name}") and "--resume run" in last
    state = load_state(tmp_path / "run" / STATE_FILE)
    assert state["tally"][0] is not None  # saved at the step it stopped at, within an epoch
    if sig == signal.SIGINT:
        finish(["train", "--resume", "run"], tmp_path)
        assert fingerprint(tmp_path / "run") == uninterrupted


def test_the_streaming_path_with_workers_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images decoded per item in a worker process, with random crops and flips drawn per
    sample: a crash mid-epoch, then --resume, matches a run that never stopped."""
    root = make_folder(tmp_path / "stripes", per_class=24, size=12)
    argv = [
        "train", "--data", str(root), "--cache-mem", "0", "--workers", "1", "--flip",
        "--epochs", "2", "--batch-size", "8", "--save-every", "2", "--quiet",
    ]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    crash_after_state(monkeypatch, at_step=6)  # 4 steps an epoch: in the middle of epoch 2
    with pytest.raises(MemoryError):
        main([*argv, "--out", str(tmp_path / "crashed")])
    monkeypatch.undo()
    assert main(["train", "--resume", str(tmp_path / "crashed")]) == 0
    log = (tmp_path / "crashed" / "log.txt").read_text()
    assert "streaming from files" in log and "resuming after epoch 1, step 6" in log
    assert fingerprint(tmp_path / "crashed") == fingerprint(tmp_path / "whole")


def test_a_run_stopped_at_its_step_limit_still_ends_its_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state of the last step (--limit-steps), saved before the epoch's record and
    checkpoints: the resumed run writes them, as the run that never stopped did."""
    argv = [
        "train", "--model", "resnet_tabular", "--data", "tabular-synthetic", "--epochs", "2",
        "--limit-steps", "8", "--save-every", "4", "--quiet",
    ]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    crash_after_state(monkeypatch, at_step=8)
    with pytest.raises(MemoryError):
        main([*argv, "--out", str(tmp_path / "crashed")])
    monkeypatch.undo()
    assert main(["train", "--resume", str(tmp_path / "crashed")]) == 0
    assert fingerprint(tmp_path / "crashed") == fingerprint(tmp_path / "whole")


def test_a_fine_tuning_run_resumes_in_its_second_phase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digits_checkpoint: Path
) -> None:
    argv = [
        "finetune", "--weights", str(digits_checkpoint), "--data", "digits", "--epochs", "3",
        "--strategy", "gradual", "--batch-size", "128", "--save-every", "5", "--quiet",
    ]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    crash_after_state(monkeypatch, at_step=15)  # in epoch 2, the phase that trains everything
    with pytest.raises(MemoryError):
        main([*argv, "--out", str(tmp_path / "crashed")])
    monkeypatch.undo()
    assert load_state(tmp_path / "crashed" / STATE_FILE)["phase"] == 1
    assert main(["finetune", "--resume", str(tmp_path / "crashed")]) == 0
    assert fingerprint(tmp_path / "crashed") == fingerprint(tmp_path / "whole")


@pytest.fixture()
def digits_checkpoint(run_dir: Path) -> Path:
    return run_dir / "best.safetensors"


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch tabular run whose state is that of its end."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    argv = ["train", "--model", "resnet_tabular", "--data", "tabular-synthetic", "--quiet"]
    assert main([*argv, "--epochs", "2", "--out", str(out)]) == 0
    return out


def test_a_resume_with_other_settings_is_refused_naming_them(
    stopped_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "--resume", str(stopped_run), "--lr", "0.5", "--seed", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "lr (run: 0.1, now: 0.5)" in err[0] and "seed (run: 0, now: 3)" in err[0]
    assert main(["finetune", "--resume", str(stopped_run)]) == 2
    assert "continue it with resnetlab train --resume" in capsys.readouterr().err


def test_a_moved_run_resumes_where_it_is_and_its_config_replays_as_a_new_run(
    stopped_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    moved = tmp_path / "elsewhere"
    shutil.copytree(stopped_run, moved)
    monkeypatch.chdir(tmp_path)  # another working folder than the run's
    assert main(["train", "--resume", "elsewhere", "--epochs", "3"]) == 0
    epochs = [json.loads(line)["epoch"] for line in (moved / "metrics.jsonl").open()]
    assert epochs == [1, 2, 3] and (moved / "last.safetensors").exists()
    config = yaml.safe_load((moved / "config.yaml").read_text())
    assert "out" not in config and "resume" not in config  # a replay writes a new folder
    argv = ["train", "--config", "elsewhere/config.yaml", "--out", "again", "--epochs", "1"]
    for again in ([], ["--overwrite"]):  # a run that replaces one keeps no line of it
        assert main([*argv, *again]) == 0
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "again/metrics.jsonl").open()]
    assert epochs == [1]


def test_more_epochs_on_resume_train_on_with_a_warning(
    stopped_run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first_lrs: list[tuple[float, float]] = []  # (the lr set, the new schedule's) at each epoch
    one_epoch = run_module.train_one_epoch

    def spy(step: object, loader: object, scheduler: LambdaLR, **kwargs: object) -> object:
        wanted = scheduler.base_lrs[0] * scheduler.lr_lambdas[0](scheduler.last_epoch)
        first_lrs.append((scheduler.optimizer.param_groups[0]["lr"], wanted))
        return one_epoch(step, loader, scheduler, **kwargs)

    monkeypatch.setattr(run_module, "train_one_epoch", spy)
    assert main(["train", "--resume", str(stopped_run), "--epochs", "3"]) == 0
    ((set_lr, wanted),) = first_lrs
    assert wanted > 0 and set_lr == pytest.approx(wanted)  # not the old schedule's last lr, 0
    captured = capsys.readouterr()
    assert "--epochs changed from 2 to 3" in captured.err
    assert "Epoch [3/3]" in captured.out and "Epoch [2/3]" not in captured.out
    metrics = (stopped_run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in metrics] == [1, 2, 3]
