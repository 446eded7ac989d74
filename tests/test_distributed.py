"""Training under torchrun: 2 CPU processes over gloo, as one would run them by hand."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import signal_torchrun, wait_for_state, wait_into_next_save
from safetensors.torch import load_file

from resnetlab.checkpoints.checkpoint import load_checkpoint
from resnetlab.checkpoints.state import STATE_FILE, load_state
from resnetlab.training.rundir import fingerprint

WORKER = Path(__file__).with_name("dist_worker.py")
DIGITS = ["--data", "digits", "--batch-size", "64", "--quiet"]


def torchrun(argv: list[str], where: Path, processes: int = 2) -> subprocess.Popen[bytes]:
    """``torchrun --nproc_per_node=N tests/dist_worker.py ARGV`` in ``where``, in its own
    process group (so that a test can kill every process at once), output in where/out.txt."""
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
        "--standalone", str(WORKER), *argv,
    ]  # fmt: skip
    log = (where / "out.txt").open("ab")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, cwd=where, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def finished(argv: list[str], where: Path, processes: int = 2) -> Path:
    """Run to the end; the run folder (``--out run``)."""
    code = torchrun([*argv, "--out", "run"], where, processes).wait(timeout=300)
    assert code == 0, (where / "out.txt").read_text()[-3000:]
    return where / "run"


def test_two_processes_train_agree_and_exit_cleanly_every_time(tmp_path: Path) -> None:
    """A 2-process run trains (rank 0 alone printing), its processes end with the same
    weights, and a finished run exits with status 0 every time: gloo's threads can abort an
    interpreter that finalises while they run (see cli._exit_now). The repeats start the two
    processes as torchrun would, without its launcher, to save its start-up."""
    run = finished(["train", *DIGITS, "--epochs", "2"], tmp_path)
    output = (tmp_path / "out.txt").read_text()
    assert "distributed: 2 processes (2 on this machine), gloo, 1 threads each" in output
    assert output.count("Epoch [1/2]") == 1
    losses = [json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").open()]
    assert losses[1] < losses[0] * 0.5
    assert (run / "rank0.sha256").read_text() == (run / "rank1.sha256").read_text()
    assert not list(run.glob(".*.tmp"))
    argv = [*DIGITS, "--epochs", "1", "--limit-steps", "1", "--val-fraction", "0"]
    for attempt in range(6):
        codes, output = two_processes(["train", *argv, "--out", f"exit{attempt}"], tmp_path)
        assert codes == [0, 0] and "terminate called" not in output, output[-2000:]


def two_processes(argv: list[str], where: Path) -> tuple[list[int], str]:
    """Exit statuses and output of ``resnetlab ARGV`` in 2 processes that meet over gloo."""
    processes = start_two(argv, where)
    outputs = [p.communicate(timeout=120)[0].decode() for p in processes]
    return [p.returncode for p in processes], "".join(outputs)


def start_two(
    argv: list[str], where: Path, env: dict[str, str] | None = None, where_1: Path | None = None
) -> list[subprocess.Popen[bytes]]:
    """``resnetlab ARGV`` (tests/dist_worker.py, with ``env`` added) in 2 processes started as
    torchrun would start them (without its launcher, whose start-up costs seconds), meeting
    over gloo on a free local port; rank 1 in ``where_1`` if given (another machine's files)."""
    env = {**os.environ, **(env or {}), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}  # fmt: skip
    return [
        subprocess.Popen(
            [sys.executable, str(WORKER), *argv],
            cwd=where_1 if rank == 1 and where_1 is not None else where,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
        )
        for rank in range(2)
    ]


def free_port() -> int:
    """A local TCP port that no process listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_used_run_folder_stops_every_process_and_overwrite_replaces_it_once(
    tmp_path: Path,
) -> None:
    """Rank 0 alone looks at --out and removes the earlier run; every process gets its answer,
    so a refused folder ends them all with the one-line error instead of a wait."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (run / "best.safetensors").write_bytes(b"old")
    argv = ["train", *DIGITS, "--epochs", "1", "--limit-steps", "1", "--out", "run"]
    codes, output = two_processes(argv, tmp_path)
    assert codes == [2, 2], output[-2000:]
    assert output.count("resnetlab: error: --out run holds a finished run (1 epoch, ") == 1
    assert (run / "best.safetensors").read_bytes() == b"old"
    codes, output = two_processes([*argv, "--overwrite"], tmp_path)
    assert codes == [0, 0], output[-2000:]
    assert output.count("--overwrite: removed a finished run from run (1 epoch, ") == 1
    assert (run / "best.safetensors").read_bytes() != b"old"


def test_two_processes_make_the_step_of_one_with_the_same_global_batch(
    tmp_path: Path, run_dir: Path
) -> None:
    """Without BatchNorm statistics (frozen), one SGD step on 2 processes with global batch
    64 gives the weights of one step in 1 process with batch 64."""
    argv = [
        "finetune", "--weights", str(run_dir / "best.safetensors"), *DIGITS, "--bn", "frozen",
        "--strategy", "full", "--optimizer", "sgd", "--lr", "0.1", "--epochs", "1",
        "--limit-steps", "1",
    ]  # fmt: skip
    weights = []
    for processes in (1, 2):
        where = tmp_path / str(processes)
        where.mkdir()
        weights.append(load_file(finished(argv, where, processes) / "last.safetensors"))
    start = load_file(run_dir / "best.safetensors")
    assert not torch.equal(weights[1]["fc.weight"], start["fc.weight"])  # it did train
    for key, one in weights[0].items():
        assert torch.allclose(weights[1][key], one, rtol=0, atol=1e-6), key


def test_a_killed_two_process_run_resumes_exactly(tmp_path: Path) -> None:
    argv = ["train", *DIGITS, "--epochs", "2", "--save-every", "4", "--crop-padding", "1"]
    (tmp_path / "whole").mkdir()
    expected = fingerprint(finished(argv, tmp_path / "whole"))
    where = tmp_path / "killed"
    where.mkdir()
    process = torchrun([*argv, "--out", "run"], where)
    state = where / "run" / STATE_FILE
    assert wait_for_state(where / "run", process, newer_than=0)
    assert wait_into_next_save(where / "run", process, random.Random(0))  # within steps 8 to 12
    signal_torchrun(process, signal.SIGKILL)  # the launcher and both processes
    process.wait()
    killed_at = load_state(state)["steps_done"]
    assert 0 < killed_at < 44 and load_state(state)["world"] == 2
    finished(["train", "--resume", "run"], where)
    assert fingerprint(where / "run") == expected
    assert "resuming after epoch" in (where / "run" / "log.txt").read_text()
    alone = subprocess.run(
        [sys.executable, "-m", "resnetlab", "train", "--resume", "run"],
        cwd=where, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert alone.returncode == 2
    assert "the run had 2 processes, this one 1; --resume-any-world" in alone.stderr


def test_a_signal_to_one_process_stops_both_at_the_same_step(tmp_path: Path) -> None:
    """SIGTERM to rank 1 alone: the processes agree on the step (a reduced flag), save one
    state and both exit with 143; no process waits for the other in a collective."""
    # 30 epochs, so that the signal lands in training however fast the machine: the run stops
    processes = start_two(["train", *DIGITS, "--epochs", "30", "--save-every", "4", "--out",
                           "run"], tmp_path)  # fmt: skip
    state = tmp_path / "run" / STATE_FILE
    while not state.exists() and processes[0].poll() is None:
        time.sleep(0.05)
    processes[1].send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=120)[0].decode() for p in processes]
    assert [p.returncode for p in processes] == [143, 143], outputs
    assert "resnetlab: stopped by SIGTERM" in outputs[0] and "--resume run" in outputs[0]
    assert outputs[1] == ""  # rank 1 prints nothing
    saved = load_state(state)
    assert saved["world"] == 2 and saved["tally"][1] is not None


def test_a_signal_to_one_process_in_validation_stops_both_after_that_epoch(
    tmp_path: Path,
) -> None:
    """SIGTERM to rank 1 while it validates, after the epoch's last step was agreed on: both
    processes agree again at the epoch's end and stop there (rank 1 once stopped alone, and
    rank 0 went on to wait for it in the next step)."""
    argv = ["train", *DIGITS, "--epochs", "3", "--out", "run"]
    processes = start_two(argv, tmp_path, env={"SIGTERM_IN_VALIDATION": "1"})
    try:
        outputs = [p.communicate(timeout=120)[0].decode() for p in processes]
    finally:
        for process in processes:
            process.kill()
    assert [p.returncode for p in processes] == [143, 143], outputs
    assert "stopped by SIGTERM after epoch 1, step 22" in outputs[0]
    saved = load_state(tmp_path / "run" / STATE_FILE)
    assert saved["steps_done"] == 22 and saved["tally"][0] is None  # at the epoch's end


def test_sync_bn_on_cpus_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from resnetlab.cli import main

    assert main(["train", "--data", "digits", "--sync-bn", "--device", "cpu"]) == 2
    assert "--sync-bn needs GPUs" in capsys.readouterr().err


def test_every_torchrun_process_stops_at_the_same_epoch(tmp_path: Path) -> None:
    """The validation loss is gathered over both processes, so both stop together (were it
    not, one would wait for the other forever) once the patience has run out."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(80, 4)), columns=["a", "b", "c", "d"])
    frame["t"] = rng.integers(0, 2, 80)
    frame.to_csv(tmp_path / "small.csv", index=False)
    argv = ["train", "--data", "small.csv", "--target", "t", "--patience", "1", "--quiet"]
    codes, output = two_processes([*argv, "--out", "run"], tmp_path)
    assert codes == [0, 0], output[-2000:]
    history = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    best = load_checkpoint(tmp_path / "run" / "best.safetensors")[1]["epoch"]
    assert len(history) == best + 1 < 200 and output.count("Early stop") == 1


DETECT = [
    "detect", "train", "--data", "shapes", "--limit", "8", "--epochs", "2", "--batch-size", "4",
    "--image-size", "64", "--warmup-steps", "2", "--save-every", "1", "--norm", "bn",
]  # fmt: skip


def test_detection_trains_on_two_processes_and_a_killed_run_resumes_exactly(
    tmp_path: Path,
) -> None:
    """`detect train` under torchrun: rank 0 alone prints and writes, the state holds each
    process's random streams, and a run killed after its first step ends as an uninterrupted
    one, byte for byte."""
    codes, output = two_processes([*DETECT, "--out", "whole"], tmp_path)
    assert codes == [0, 0], output[-2000:]
    assert output.count("Epoch [1/2]") == 1 and output.count("Test mAP@0.5") == 1
    assert len(load_state(tmp_path / "whole" / "state.pt", frozenset({"rng"}))["rng"]) == 2
    processes = start_two([*DETECT, "--out", "killed"], tmp_path)
    state = tmp_path / "killed" / "state.pt"
    while not state.exists() and all(p.poll() is None for p in processes):
        time.sleep(0.02)
    for process in processes:
        process.kill()
        process.communicate()
    saved = load_state(state, frozenset({"epoch", "step"}))
    assert (saved["epoch"], saved["step"]) < (2, 0)  # killed before the end
    codes, output = two_processes(["detect", "train", "--resume", "killed"], tmp_path)
    assert codes == [0, 0], output[-2000:]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    assert (killed / "last.safetensors").read_bytes() == (whole / "last.safetensors").read_bytes()
