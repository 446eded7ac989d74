"""Multi-scale feature maps (`features_only`) of every 2-D family, and weights loaded into them."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from resnetlab.checkpoints.weights import load_weights
from resnetlab.errors import ResnetlabError
from resnetlab.models import create_model
from resnetlab.models.features import FeatureNet
from tests.helpers import randomize_batch_norms

# (model, channels, reductions) of the default maps: every stage
FAMILIES = [
    ("resnet18", [64, 128, 256, 512], [4, 8, 16, 32]),  # imagenet, basic blocks
    ("resnet50", [256, 512, 1024, 2048], [4, 8, 16, 32]),  # imagenet, bottlenecks
    ("resnet20", [16, 32, 64], [1, 2, 4]),  # cifar
    ("plain20", [16, 32, 64], [1, 2, 4]),  # plain
    ("preact_resnet18", [64, 128, 256, 512], [1, 2, 4, 8]),  # preact, four stages
    ("preact_resnet164", [64, 128, 256], [1, 2, 4]),  # preact, bottlenecks, three stages
    ("speedrun", [32, 128, 128], [2, 4, 8]),  # speedrun: each stage pools
]


@pytest.mark.parametrize(("name", "channels", "reductions"), FAMILIES)
def test_every_stage_by_default_with_its_channels_and_stride(
    name: str, channels: list[int], reductions: list[int]
) -> None:
    model = create_model(name, features_only=True).eval()
    maps = model(torch.zeros(2, 3, 32, 32))
    assert model.feature_info.channels() == channels
    assert model.feature_info.reduction() == reductions
    assert [tuple(m.shape) for m in maps] == [
        (2, c, 32 // r, 32 // r) for c, r in zip(channels, reductions, strict=True)
    ]


def test_out_indices_count_as_timm_and_drop_later_stages() -> None:
    model = create_model("resnet18", features_only=True, out_indices=(0, 2))
    maps = model(torch.zeros(1, 3, 64, 64))
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 32, 32), (128, 8, 8)]
    assert [i["module"] for i in model.feature_info] == ["relu", "layer2"]
    assert not any(key.startswith(("layer3", "layer4", "fc")) for key in model.state_dict())
    last = create_model("resnet20", features_only=True, out_indices=[-1])
    assert last.feature_info.channels() == [64]


@pytest.mark.parametrize("indices", [(5,), (2, 1), ()])
def test_bad_out_indices_are_named(indices: tuple[int, ...]) -> None:
    with pytest.raises(ResnetlabError, match=r"resnet18.*out_indices"):
        create_model("resnet18", features_only=True, out_indices=indices)


def test_models_without_2d_maps_refuse() -> None:
    with pytest.raises(ResnetlabError, match=r"resnet1d.*no 2-D feature maps"):
        create_model("resnet1d", features_only=True)


@pytest.mark.parametrize("name", ["resnet20", "preact_resnet110"])
def test_deepest_map_is_the_classifiers_features(name: str) -> None:
    classifier = create_model(name).eval()
    randomize_batch_norms(classifier)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(FeatureNet(classifier)(x)[-1], classifier.forward_features(x))


def test_torchvision_weights_give_torchvisions_maps() -> None:
    """A torchvision state dict, head dropped, gives the maps of torchvision's own network."""
    reference = torchvision.models.resnet18().eval()
    randomize_batch_norms(reference)
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    classifier = create_model("resnet18", num_classes=5)
    report = load_weights(classifier, state, model_name="resnet18")
    assert report.reinitialised == ["fc.weight", "fc.bias"]
    ours = FeatureNet(classifier.eval(), out_indices=(0, 1, 2, 3, 4))
    theirs = create_feature_extractor(reference, ["relu", "layer1", "layer2", "layer3", "layer4"])
    x = torch.randn(1, 3, 96, 96)
    for mine, expected in zip(ours(x), theirs(x).values(), strict=True):
        torch.testing.assert_close(mine, expected)
