"""Our ImageNet ResNets against torchvision's: same keys and shapes, same outputs."""

from __future__ import annotations

import pytest
import torch
import torchvision
from helpers import randomize_batch_norms, shapes

from resnetlab.models import create_model, list_models

IMAGENET = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
    "wide_resnet101_2",
]


def test_the_imagenet_family_is_exactly_torchvisions_list() -> None:
    assert list_models("imagenet") == IMAGENET


@pytest.mark.parametrize("name", IMAGENET)
def test_state_dict_keys_and_shapes_match_torchvision(name: str) -> None:
    with torch.device("meta"):
        reference = getattr(torchvision.models, name)(weights=None)
        ours = create_model(name)
    assert shapes(ours) == shapes(reference)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_outputs_match_torchvision_with_its_weights(name: str) -> None:
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None).eval()
    randomize_batch_norms(reference)
    with torch.device("meta"):  # no need to initialise weights that get replaced
        ours = create_model(name).eval()
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)


def test_in_chans_changes_only_the_stem() -> None:
    with torch.device("meta"):
        reference = torchvision.models.resnet18(weights=None)
        ours = create_model("resnet18", in_chans=1, num_classes=5)
    assert ours.conv1.weight.shape == (64, 1, 7, 7)
    assert ours.fc.weight.shape == (5, 512)
    differing = [
        k for (k, a), (_, b) in zip(shapes(ours), shapes(reference), strict=True) if a != b
    ]
    assert differing == ["conv1.weight", "fc.weight", "fc.bias"]


def test_initialisation_follows_torchvision() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18")
    conv = model.layer1[0].conv1.weight  # kaiming normal, fan_out = 64 * 3 * 3
    assert abs(conv.std().item() - (2 / (64 * 9)) ** 0.5) < 0.003
    assert torch.equal(model.bn1.weight, torch.ones(64))
    assert torch.equal(model.bn1.bias, torch.zeros(64))
    bound = 1 / 512**0.5  # fc keeps PyTorch's default uniform init, as torchvision
    assert model.fc.weight.abs().max() <= bound
