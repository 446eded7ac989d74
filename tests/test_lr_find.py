"""lr-find: the suggestion rule, and a range test for training and for fine-tuning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from resnetlab.config.finetune import FinetuneConfig
from resnetlab.config.train import TrainConfig
from resnetlab.models import create_model
from resnetlab.training.lr_find import LrRange, _suggest, lr_find


def test_suggestion_is_the_steepest_descent() -> None:
    lrs = list(np.logspace(-6, 0, 61))
    smoothed = [2 - float(np.tanh(2 * (np.log10(lr) + 3))) for lr in lrs]
    suggestion, min_over_10 = _suggest(lrs, smoothed)
    assert suggestion == pytest.approx(1e-3)
    assert min_over_10 == pytest.approx(0.1)


@pytest.fixture(scope="module")
def untrained_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded, untrained resnet20 for 1-channel 10-class images, saved as foreign weights:
    its loss starts high, so the range test sees a whole curve (a trained model's loss on its
    own training data is near zero, and the sweep ends as soon as noise quadruples it)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "r20.pth"
    torch.save(create_model("resnet20", num_classes=10, in_chans=1).state_dict(), path)
    return path


@pytest.mark.parametrize("fine_tuning", [False, True])
def test_lr_find_plots_and_suggests(
    fine_tuning: bool, untrained_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = {"data": "digits", "batch_size": 32, "out": str(tmp_path / "lr"), "quiet": True}
    cfg = (
        FinetuneConfig(weights=str(untrained_weights), strategy="full", **shared)
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
