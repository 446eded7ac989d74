"""Behaviour of every network: sizes, shapes, shortcuts, options and errors."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from resnetlab.errors import ResnetlabError
from resnetlab.models import (
    BasicBlock,
    Bottleneck,
    ShortcutA,
    classifier_prefix,
    count_parameters,
    create_model,
    get_model_spec,
    list_models,
)

PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "resnet1202": 19_421_274,
    "plain20": 269_722,
    "plain32": 464_154,
    "plain44": 658_586,
    "plain56": 853_018,
    "plain110": 1_727_962,
    "resnet_tabular": 4_622,  # 220 + 880 + 3360 + 162, see test_tabular_layout
    # stem 24x3x2x2 + 24 = 312; 3x3 convs (no bias) with BN weight and bias: 24->32->32 16,256,
    # 32->128->128 184,832, 128->128->128 295,424; fc 128x10 + 10 = 1,290
    "speedrun": 498_114,
}
# One real forward per family and block type; every model is shape-checked on the meta device.
RUN_REAL = [
    "resnet18",
    "resnet50",
    "resnet20",
    "plain20",
    "preact_resnet18",
    "preact_resnet164",
    "resnet1d",
    "resnet_tabular",
    "speedrun",
]


def meta_model(name: str, **options: object) -> nn.Module:
    """Build ``name`` without allocating or initialising real weights."""
    with torch.device("meta"):
        return create_model(name, **options)


def small_input(name: str, batch: int = 2, in_chans: int | None = None) -> torch.Tensor:
    """A random batch at the model's default input, images shrunk 4x (224 -> 56, 32 -> 8)."""
    shape = list(get_model_spec(name).input_shape)
    if in_chans is not None:
        shape[0] = in_chans
    if len(shape) == 3:
        shape[1:] = [size // 4 for size in shape[1:]]
    return torch.randn(batch, *shape)


@pytest.mark.parametrize("name", list(PARAMS))
def test_parameter_counts_are_exact(name: str) -> None:
    assert count_parameters(meta_model(name)) == PARAMS[name]


def test_preact_parameter_counts() -> None:
    assert 1_600_000 <= count_parameters(meta_model("preact_resnet164")) <= 1_800_000
    assert 1_700_000 <= count_parameters(meta_model("preact_resnet110")) <= 1_760_000
    assert 11_150_000 <= count_parameters(meta_model("preact_resnet18")) <= 11_190_000


def test_every_family_is_registered() -> None:
    families = {get_model_spec(name).family for name in list_models()}
    assert families == {
        "imagenet", "cifar", "plain", "preact", "speedrun", "sequence", "tabular", "video",
    }  # fmt: skip
    assert len(list_models("imagenet")) == 9
    assert list_models("plain") == ["plain20", "plain32", "plain44", "plain56", "plain110"]


@pytest.mark.parametrize("name", list_models())
def test_output_shape_with_custom_classes_and_channels(name: str) -> None:
    in_chans = get_model_spec(name).in_chans + 2
    model = meta_model(name, num_classes=7, in_chans=in_chans)
    assert model(small_input(name, in_chans=in_chans).to("meta")).shape == (2, 7)


@pytest.mark.parametrize("name", RUN_REAL)
def test_real_forward_is_finite(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(small_input(name))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet18", "resnet20", "preact_resnet18", "resnet1d"])
def test_default_classes_and_channels(name: str) -> None:
    spec = get_model_spec(name)
    model = meta_model(name)
    assert model(small_input(name).to("meta")).shape == (2, spec.num_classes)
    first_weight = next(model.parameters())
    assert first_weight.shape[1] == spec.in_chans


def test_shortcut_a_is_parameter_free_identity_when_shapes_match() -> None:
    shortcut = ShortcutA(16, 16, stride=1)
    x = torch.randn(2, 16, 8, 8)
    assert not list(shortcut.parameters())
    assert torch.equal(shortcut(x), x)


def test_shortcut_a_subsamples_and_zero_pads_channels() -> None:
    x = torch.randn(2, 16, 8, 8)
    out = ShortcutA(16, 32, stride=2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()


def test_cifar_option_a_keys_match_the_classic_layout() -> None:
    keys = create_model("resnet20").state_dict().keys()
    pattern = re.compile(r"(conv1|bn1|fc|layer[1-3]\.[0-2]\.(conv|bn)[12])\.")
    assert all(pattern.match(key) for key in keys)


def test_cifar_option_b_projects_only_where_the_shape_changes() -> None:
    model = create_model("resnet20", shortcut="B")
    projections = [n for n, m in model.named_modules() if n.endswith("downsample")]
    assert projections == ["layer2.0.downsample", "layer3.0.downsample"]
    extra = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)  # 1x1 conv + BN gamma/beta, twice
    assert count_parameters(model) == PARAMS["resnet20"] + extra


def test_plain_twin_has_the_same_layers_but_no_addition() -> None:
    torch.manual_seed(0)
    resnet, plain = create_model("resnet20").eval(), create_model("plain20").eval()
    plain.load_state_dict(resnet.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(resnet(x), plain(x))
        for block in (resnet.layer1[1], plain.layer1[1]):
            block.conv1.weight.zero_()
            block.conv2.weight.zero_()
        features = torch.relu(torch.randn(2, 16, 8, 8))
        assert torch.allclose(resnet.layer1[1](features), features)  # relu(0 + x) = x
        assert not plain.layer1[1](features).any()  # relu(bn2(0)), bn2's beta is 0


def test_unknown_shortcut_and_plain_zero_init_are_errors() -> None:
    with pytest.raises(ResnetlabError, match="shortcut"):
        create_model("resnet20", shortcut="C")
    with pytest.raises(ResnetlabError, match="zero_init_residual"):
        create_model("plain20", zero_init_residual=True)


@pytest.mark.parametrize(
    ("name", "first"), [("resnet20", "conv1"), ("resnet_tabular", "input_layer")]
)
def test_gradients_reach_the_first_layer(name: str, first: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    x = small_input(name, batch=4)
    nn.functional.cross_entropy(model(x), torch.randint(0, 2, (4,))).backward()
    grad = getattr(model, first).weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_replace_stride_with_dilation_gives_output_stride_8() -> None:
    x = torch.zeros(1, 3, 64, 64, device="meta")
    assert meta_model("resnet50").forward_features(x).shape == (1, 2048, 2, 2)
    dilated = meta_model("resnet50", replace_stride_with_dilation=(False, True, True))
    assert dilated.forward_features(x).shape == (1, 2048, 8, 8)
    assert dilated.layer4[1].conv2.dilation == (4, 4)
    dilated18 = meta_model("resnet18", replace_stride_with_dilation=[False, True, True])
    assert dilated18.forward_features(x).shape == (1, 512, 8, 8)
    with pytest.raises(ResnetlabError, match="replace_stride_with_dilation"):
        meta_model("resnet50", replace_stride_with_dilation=(True,))


@pytest.mark.parametrize(
    ("name", "last_bn"), [("resnet18", "bn2"), ("resnet50", "bn3"), ("resnet20", "bn2")]
)
def test_zero_init_residual_zeroes_the_last_bn_gammas(name: str, last_bn: str) -> None:
    model = create_model(name, zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock | Bottleneck)]
    assert blocks
    for block in blocks:
        assert not getattr(block, last_bn).weight.any()
        assert torch.equal(block.bn1.weight, torch.ones_like(block.bn1.weight))
    assert create_model(name).layer1[0].last_bn.weight.all()


def test_misspelt_model_name_suggests_the_right_one() -> None:
    with pytest.raises(ResnetlabError, match="resnet20"):
        create_model("resnet2O")


def test_unknown_option_is_a_resnetlab_error() -> None:
    with pytest.raises(ResnetlabError, match="resnet18"):
        create_model("resnet18", no_such_option=1)


def test_invalid_option_value_is_a_resnetlab_error() -> None:
    """A model's own ValueError (here BasicBlock's) comes out as a ResnetlabError."""
    with pytest.raises(ResnetlabError, match=r"bad option for model 'resnet18': .*groups=1"):
        create_model("resnet18", groups=2)


# One model of each network class: ResNet, CifarResNet, PreActResNet, ResNet1d, TabularResNet.
ONE_PER_CLASS = ["resnet18", "resnet20", "preact_resnet18", "resnet1d", "resnet_tabular"]


@pytest.mark.parametrize("name", ONE_PER_CLASS)
def test_reset_classifier_keeps_the_features_and_changes_the_classes(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7).eval()
    head = model.get_classifier()
    assert head is model.fc and head.out_features == 7 and classifier_prefix(model) == "fc."
    backbone = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    model.reset_classifier(3)
    new = model.get_classifier()
    assert isinstance(new, nn.Linear) and new is not head
    assert (new.in_features, new.out_features) == (head.in_features, 3)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in backbone.items())
    assert state["fc.weight"].shape == (3, head.in_features)
    with torch.no_grad():
        out = model(small_input(name))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("name", "kaiming"),
    [
        ("resnet20", True),
        ("preact_resnet18", True),
        ("resnet1d", True),
        ("resnet18", False),
        ("resnet_tabular", False),
    ],
)
def test_reset_classifier_initialises_as_the_model_does(name: str, kaiming: bool) -> None:
    """Kaiming-normal weights and zero biases where the model's init gives them, else
    PyTorch's default: weights and biases uniform within 1/sqrt(in_features)."""
    torch.manual_seed(0)
    built = create_model(name, num_classes=50).get_classifier()
    model = create_model(name)
    model.reset_classifier(50)
    for head in (built, model.get_classifier()):  # the model's own init, then the reset's
        weight, bias = head.weight.detach(), head.bias.detach()
        bound = weight.shape[1] ** -0.5
        assert bool((bias == 0).all()) == kaiming
        assert bool(weight.abs().max() <= bound) == (not kaiming)
        if kaiming:
            assert weight.std().item() == pytest.approx(2**0.5 * bound, rel=0.1)


def test_reset_classifier_stays_on_the_models_device() -> None:
    model = meta_model("resnet50")
    model.reset_classifier(5)
    assert model.fc.weight.device.type == "meta" and model.fc.weight.shape == (5, 2048)


def test_preact_blocks_project_preactivated_input_where_shapes_change() -> None:
    model = meta_model("preact_resnet164")
    assert model.layer1[0].downsample.weight.shape == (64, 16, 1, 1)
    assert model.layer2[0].downsample.stride == (2, 2)
    assert model.layer1[1].downsample is None
    assert model.bn_final.num_features == 256
    x = torch.zeros(1, 3, 32, 32, device="meta")
    assert model.forward_features(x).shape == (1, 256, 8, 8)


def test_resnet1d_layout_and_any_length() -> None:
    torch.manual_seed(0)
    model = create_model("resnet1d", in_chans=3).eval()
    assert [m.conv1.kernel_size[0] for m in (model.layer1, model.layer2, model.layer3)] == [8] * 3
    assert (model.layer1.conv2.kernel_size, model.layer1.conv3.kernel_size) == ((5,), (3,))
    assert isinstance(model.layer2.shortcut, nn.Sequential)  # 64 -> 128: 1x1 conv + BN
    assert isinstance(model.layer3.shortcut, nn.BatchNorm1d)  # 128 -> 128: BN only
    x = torch.randn(2, 3, 37)
    assert model.forward_features(x).shape == (2, 128, 37)
    assert model(x).shape == (2, 2)


def test_tabular_layout() -> None:
    model = create_model("resnet_tabular")
    assert (model.input_layer.in_features, model.input_layer.out_features) == (10, 20)
    first, second = model.blocks
    assert first.projection is None and first.linear2.out_features == 20
    assert (second.projection.in_features, second.projection.out_features) == (20, 40)
    assert (model.bn_final.num_features, model.fc.in_features, model.fc.out_features) == (40, 40, 2)


def test_tabular_without_shortcuts_is_the_branch_alone() -> None:
    torch.manual_seed(0)
    plain = create_model("resnet_tabular", shortcut=False).eval()
    assert count_parameters(plain) == PARAMS["resnet_tabular"] - (20 * 40 + 40)
    block = plain.blocks[0]
    x = torch.randn(4, 20)
    with torch.no_grad():
        branch = block.linear2(torch.relu(block.linear1(block.norm(x))))
        assert torch.allclose(block(x), branch)


def test_tabular_options_are_checked() -> None:
    model = create_model("resnet_tabular", widths=(8, 8, 16), hidden_factor=2.0, dropout=0.1)
    assert len(model.blocks) == 3 and model.blocks[2].linear1.out_features == 32
    with pytest.raises(ResnetlabError, match="dropout"):
        create_model("resnet_tabular", dropout=1.5)
    with pytest.raises(ResnetlabError, match="widths"):
        create_model("resnet_tabular", widths=())


@pytest.mark.parametrize("name", ONE_PER_CLASS)
def test_forward_is_forward_head_of_forward_features(name: str) -> None:
    """timm's interface: the pooled features (``pre_logits``) are what the classifier reads."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=7).eval()
    x = small_input(name)
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        logits = model(x)
    assert pooled.shape == (2, model.get_classifier().in_features)
    torch.testing.assert_close(model.forward_head(features), logits, rtol=0, atol=0)
    torch.testing.assert_close(model.get_classifier()(pooled), logits, rtol=0, atol=0)
