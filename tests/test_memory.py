"""runtime/memory.py: freed memory stays in the process, so large blocks are not faulted in
again (the CPU speed-up measured by benchmarks/allocator.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from resnetlab.cli import main
from resnetlab.training import run

# a 64 MiB block written and freed: 10 times to reach a steady heap (glibc reuses a freed
# aligned block only once a few have gathered), then 4 times counting the page faults
FAULTS = """
import resource, sys
import torch
from resnetlab.runtime.memory import keep_freed_memory
kept = sys.argv[1] == "1" and keep_freed_memory()
for _ in range(10):
    torch.empty(2**24).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    torch.empty(2**24).fill_(1.0)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(keep: bool) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS, str(int(keep))], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_is_not_faulted_in_again() -> None:
    kept, faults = page_faults(keep=False)
    assert kept == "False" and faults >= 4 * 32  # 64 MiB: 32 huge pages, or 16,384 of 4 KiB
    kept, faults = page_faults(keep=True)
    assert kept == "True" and faults <= 10


def test_training_on_a_cpu_keeps_freed_memory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = []
    monkeypatch.setattr(run, "keep_freed_memory", lambda: calls.append(True) or True)
    argv = ["train", "--data", "digits", "--epochs", "1", "--limit-steps", "1", "--quiet"]
    assert main([*argv, "--device", "cpu", "--out", str(tmp_path / "run")]) == 0
    assert calls == [True]
