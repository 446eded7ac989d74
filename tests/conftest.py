"""Shared fixtures: a trained tiny checkpoint reused by several CLI tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import make_squares

from resnetlab.config.train import TrainConfig
from resnetlab.data.cache import CACHE_DIR_VARIABLE
from resnetlab.runtime.matmul import keep_cpu_matmul_speeds
from resnetlab.runtime.precision import bf16_supported
from resnetlab.training.run import TrainResult
from resnetlab.training.train import train

# two threads for one test process; one each when pytest-xdist runs two (`make test`)
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """resnetlab's cache folder is a temporary one for the whole session (session fixtures
    included, and after a test's ``monkeypatch.undo()``), never the user's ~/.cache. In it,
    the CPU's bf16 probe holds what its flag says (bf16 twice as fast where native): no run
    measures, and every run of the suite, in this process or another, trains alike."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_DIR_VARIABLE, str(tmp_path_factory.getbasetemp() / "cache"))
        native = bf16_supported(torch.device("cpu"))
        keep_cpu_matmul_speeds({"fp32": 1.0, "bf16": 2.0 if native else 0.01})
        yield


@pytest.fixture(autouse=True)
def _run_in_temporary_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own folder, so default ``runs/...`` folders never land in the
    checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """resnet20 trained for a few epochs on scikit-learn's digits (about 20 s on 2 cores)."""
    out = tmp_path_factory.mktemp("runs") / "digits"
    cfg = TrainConfig(
        model="resnet20",
        data="digits",
        epochs=6,
        batch_size=64,
        lr=0.1,
        out=str(out),
        quiet=True,
        seed=0,
    )
    return train(cfg)


@pytest.fixture()
def run_dir(digits_run: TrainResult) -> Path:
    """The digits run folder."""
    return digits_run.run_dir


@pytest.fixture(scope="session")
def squares_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet20 trained to tell five colours of square on grey noise (``make_squares``): 200
    images at 32x32, 6 epochs."""
    root = tmp_path_factory.mktemp("squares")
    make_squares(root / "data", per_class=40)
    cfg = TrainConfig(
        model="resnet20",
        data=str(root / "data"),
        epochs=6,
        batch_size=32,
        lr=0.05,
        out=str(root / "run"),
        quiet=True,
        seed=0,
    )
    return train(cfg).run_dir / "best.safetensors"
