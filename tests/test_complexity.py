"""Parameter and multiply-add counts, summaries and their formatting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resnetlab.errors import ResnetlabError
from resnetlab.models import (
    ModelSummary,
    count_macs,
    count_parameters,
    create_model,
    format_count,
    summarize,
)

# ResNet-20 by hand: the stem, 6 convs per stage (the first of stages 2 and 3 at stride 2), fc.
RESNET20_MACS = (
    32 * 32 * 16 * 3 * 9
    + 6 * 32 * 32 * 16 * 16 * 9
    + 16 * 16 * 32 * 16 * 9
    + 5 * 16 * 16 * 32 * 32 * 9
    + 8 * 8 * 64 * 32 * 9
    + 5 * 8 * 8 * 64 * 64 * 9
    + 64 * 10
)


def test_imagenet_macs_match_the_published_figures() -> None:
    assert 1.80e9 <= summarize("resnet18").macs <= 1.82e9
    assert 4.08e9 <= summarize("resnet50").macs <= 4.10e9


def test_resnet20_macs_match_the_hand_count() -> None:
    macs = summarize("resnet20").macs
    assert macs == RESNET20_MACS == 40_551_040
    assert abs(macs - 40.6e6) / 40.6e6 < 0.01
    assert summarize("plain20").macs == macs  # the additions are not multiply-adds


def test_count_macs_on_a_real_model_restores_training_mode() -> None:
    model = create_model("resnet_tabular")
    assert model.training
    # input 10*20, block 20*20 + 20*20, block 20*40 + 40*40 + 20*40 (projection), fc 40*2
    assert count_macs(model, (10,)) == 200 + 800 + 3200 + 80
    assert model.training


def test_count_parameters_trainable_only() -> None:
    model = create_model("resnet20")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.fc.requires_grad_(True)
    assert count_parameters(model) == 269_722
    assert count_parameters(model, trainable_only=True) == 64 * 10 + 10


def test_summary_uses_the_registry_defaults() -> None:
    summary = summarize("resnet18")
    assert summary == ModelSummary(
        name="resnet18",
        family="imagenet",
        params=11_689_512,
        macs=summary.macs,
        input_shape=(3, 224, 224),
    )
    assert summarize("resnet1d").input_shape == (1, 128)


def test_summarize_unknown_name_is_an_error() -> None:
    with pytest.raises(ResnetlabError, match="resnet50"):
        summarize("resnet5O")


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (11_689_512, "11.7M"),
        (1_814_073_344, "1.81G"),
        (40_551_040, "40.6M"),
        (269_722, "270K"),
        (999_600, "1M"),
        (4_622, "4.62K"),
        (7, "7"),
        (2.5e12, "2.5T"),
    ],
)
def test_format_count(count: float, text: str) -> None:
    assert format_count(count) == text


def test_count_macs_counts_a_linear_layer_exactly() -> None:
    model = nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2)).to(torch.float64)
    assert count_macs(model, (5,)) == 5 * 3 + 3 * 2
