"""lr-find: the suggestion rule, and a range test for training and for fine-tuning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from resnetlab.commands.finetune import FinetuneConfig
from resnetlab.commands.lr_find import LrRange, _suggest, lr_find
from resnetlab.engine.config import TrainConfig


def test_suggestion_is_the_steepest_descent() -> None:
    lrs = list(np.logspace(-6, 0, 61))
    smoothed = [2 - float(np.tanh(2 * (np.log10(lr) + 3))) for lr in lrs]
    suggestion, min_over_10 = _suggest(lrs, smoothed)
    assert suggestion == pytest.approx(1e-3)
    assert min_over_10 == pytest.approx(0.1)


@pytest.mark.parametrize("fine_tuning", [False, True])
def test_lr_find_plots_and_suggests(
    fine_tuning: bool, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = {"data": "digits", "batch_size": 32, "out": str(tmp_path / "lr"), "quiet": True}
    cfg = (
        FinetuneConfig(weights=str(run_dir / "best.safetensors"), strategy="full", **shared)
        if fine_tuning
        else TrainConfig(model="resnet20", **shared)
    )
    result = lr_find(cfg, LrRange(steps=30, end_lr=1.0))
    assert result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(result.lrs) == len(result.losses) <= 30
    assert 1e-7 <= result.suggestion <= 1.0 and np.isfinite(result.suggestion)
    assert sorted(p.name for p in result.plot.parent.iterdir()) == [
        "log.txt",
        "lr_find.json",
        "lr_find.png",
    ]
    assert f"suggested lr: {result.suggestion:.2g}" in capsys.readouterr().out
