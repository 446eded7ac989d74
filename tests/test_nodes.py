"""torchrun across machines: two "nodes" on this machine, each a torchrun command of its own
(one process on one core, its own folder and cache folder, as machines without a shared
disk), meeting in a c10d rendezvous on 127.0.0.1 over gloo."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, run_cli, signal_torchrun, wait_into_next_save
from test_distributed import free_port, start_two

from resnetlab.checkpoints.checkpoint import load_checkpoint
from resnetlab.checkpoints.state import STATE_FILE, load_state
from resnetlab.data.cache import CACHE_DIR_VARIABLE
from resnetlab.models import create_model
from resnetlab.runtime import distributed
from resnetlab.runtime.distributed import World, lost_process
from resnetlab.training.rundir import fingerprint


def two_nodes(argv: list[str], where: Path) -> list[subprocess.Popen[bytes]]:
    """``torchrun --nnodes 2 --rdzv-backend c10d ... -m resnetlab ARGV`` as node 0 and node 1,
    each in where/nodeN (its output in out.txt, its cache folder in cache/) on a core of its
    own. Node 0 hosts the rendezvous and, by its address (torch orders nodes by it), is rank 0."""
    port = free_port()
    cores = sorted(os.sched_getaffinity(0))
    nodes = []
    for node in range(2):
        folder = where / f"node{node}"
        (folder / "cache").mkdir(parents=True, exist_ok=True)
        for probe in Path(os.environ[CACHE_DIR_VARIABLE]).glob("cpu-matmul-*.json"):
            shutil.copy(probe, folder / "cache")  # the suite's bf16 verdict (conftest)
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
            "--nproc-per-node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-conf", f"is_host={int(node == 0)}",
            "--local-addr", f"127.0.0.{node + 1}", "-m", "resnetlab", *argv,
        ]  # fmt: skip
        core = cores[node % len(cores)]
        nodes.append(
            subprocess.Popen(
                command,
                cwd=folder,
                stdout=(folder / "out.txt").open("ab"),
                stderr=subprocess.STDOUT,
                env={**os.environ, CACHE_DIR_VARIABLE: str(folder / "cache")},
                start_new_session=True,
                preexec_fn=lambda core=core: os.sched_setaffinity(0, {core}),
            )
        )
    return nodes


def both_finish(argv: list[str], where: Path) -> Path:
    """Run ``argv`` on two nodes to the end; rank 0's run folder."""
    for node, process in enumerate(two_nodes(argv, where)):
        code = process.wait(timeout=300)
        assert code == 0, (where / f"node{node}" / "out.txt").read_text()[-3000:]
    return where / "node0" / "run"


def test_a_lost_node_stops_the_other_in_one_line_and_rank_0s_state_resumes_exactly(
    tmp_path: Path,
) -> None:
    """Two nodes train; then node 1 freezes between two saves (SIGSTOP: a machine cut off,
    its connections still open): node 0 stops after --dist-timeout with one line naming
    rank 1, both nodes are killed, and the same commands with --resume continue from the
    state on rank 0's disk alone (node 1 never had a run folder) to the weights of a run that
    never stopped."""
    argv = ["train", "--data", "digits", "--batch-size", "64", "--quiet", "--out", "run",
            "--epochs", "2", "--save-every", "4", "--crop-padding", "1",
            "--dist-timeout", "10"]  # fmt: skip
    expected = fingerprint(both_finish(argv, tmp_path / "whole"))
    output = (tmp_path / "whole" / "node0" / "out.txt").read_text()
    assert "distributed: 2 processes (1 on this machine), gloo, 1 threads each" in output
    where = tmp_path / "lost"
    nodes = two_nodes(argv, where)
    run = where / "node0" / "run"
    assert wait_into_next_save(run, nodes[0], random.Random(1))
    signal_torchrun(nodes[1], signal.SIGSTOP)
    try:
        assert nodes[0].wait(timeout=120) != 0
    finally:
        for process in nodes:
            signal_torchrun(process, signal.SIGKILL)
            process.wait()
    line = (  # gloo's reason: it timed out sending, receiving, or on the connection
        r"resnetlab: error: lost rank 1 of the run, rank 0 stops \([^;\n]*(Timed out waiting "
        r"10000ms|timeout)[^;\n]*; --dist-timeout 10 s\); the last state saved is in rank 0's "
        r"run folder: continue with the same torchrun commands and --resume RUN_DIR\n"
    )
    assert len(re.findall(line, (where / "node0" / "out.txt").read_text())) == 1
    assert 0 < load_state(run / STATE_FILE)["steps_done"] < 44
    assert both_finish(["train", "--resume", "run"], where) == run
    assert fingerprint(run) == expected
    assert "resuming after epoch" in (run / "log.txt").read_text()
    assert not (where / "node1" / "run").exists()  # rank 1 read and wrote nothing there


def test_rank_0_alone_reads_the_weights_file(tmp_path: Path) -> None:
    """A --weights file that only rank 0's machine has: rank 0 reads it and sends it, and
    both processes fine-tune from it (each rank once read it itself, and rank 1 stopped)."""
    (tmp_path / "node0").mkdir()
    (tmp_path / "node1").mkdir()
    torch.manual_seed(0)
    torch.save(create_model("resnet20", num_classes=10, in_chans=1).state_dict(),
               tmp_path / "node0" / "start.pth")  # fmt: skip
    argv = ["finetune", "--weights", "start.pth", "--model", "resnet20", "--data", "digits",
            "--strategy", "full",
            "--epochs", "1", "--limit-steps", "1", "--quiet",
            "--out", str(tmp_path / "run")]  # fmt: skip
    processes = start_two(argv, tmp_path / "node0", where_1=tmp_path / "node1")
    outputs = [p.communicate(timeout=120)[0].decode() for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    header = load_checkpoint(tmp_path / "run" / "last.safetensors")[1]
    assert header["weights"]["file"] == "start.pth"


def test_a_lost_peer_among_many_is_named_by_its_address() -> None:
    """In a world of more than two, the line names the peer that gloo reports, without the
    source location and advice that its message carries."""
    gloo = RuntimeError(
        "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
        "[10.0.0.2]:49050: Connection reset by peer. This is typically caused by a remote "
        "worker hanging or bugs in the application."
    )
    assert str(lost_process(World(2, 4), gloo, 30)).startswith(
        "lost a process of the run, rank 2 stops (Read error [10.0.0.2]:49050: Connection "
        "reset by peer; --dist-timeout 30 s); "
    )


@contextmanager
def barriers(monkeypatch: pytest.MonkeyPatch, log: list[str]) -> Iterator[None]:
    """World.barrier logged instead of waiting."""
    monkeypatch.setattr(distributed.World, "barrier", lambda self: log.append("barrier"))
    yield


@pytest.mark.parametrize(("rank", "local_rank", "order"), [
    (0, 0, ["block", "barrier"]),
    (2, 0, ["block", "barrier"]),  # the first process of the second machine
    (3, 1, ["barrier", "block"]),
])  # fmt: skip
def test_each_machines_first_process_runs_first(
    monkeypatch: pytest.MonkeyPatch, rank: int, local_rank: int, order: list[str]
) -> None:
    """``main_first`` (the decode cache, the CPU's bf16 probe): LOCAL_RANK 0 of every machine
    first, each machine its own cache folder, not global rank 0 alone."""
    log: list[str] = []
    with barriers(monkeypatch, log), World(rank, 4, local_rank).main_first():
        log.append("block")
    assert log == order


def test_dist_timeout_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "train", "--data", "digits", "--dist-timeout", "0")
    assert_one_line_error(code, err, "--dist-timeout must be a positive number of seconds")
