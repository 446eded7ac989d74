"""Pretrained weights from torchvision, classic CIFAR scripts, safetensors and resnetlab files."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import Tensor, nn

from resnetlab.checkpoints.checkpoint import read_header, save_checkpoint
from resnetlab.checkpoints.state_dicts import infer_model, read_weights
from resnetlab.checkpoints.weights import adapt_input_channels, load_pretrained, load_weights
from resnetlab.errors import ResnetlabError
from resnetlab.models import create_model

IMAGE = (1, 3, 64, 64)


def _randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms, so a swapped key shows."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for tensor, low, high in (
                (module.weight, 0.5, 1.5),
                (module.bias, -0.2, 0.2),
                (module.running_mean, -0.2, 0.2),
                (module.running_var, 0.5, 1.5),
            ):
                tensor.data.uniform_(low, high)
    return model.eval()


@pytest.fixture(scope="module")
def source() -> nn.Module:
    """A seeded torchvision resnet18, the stand-in for downloaded ImageNet weights."""
    torch.manual_seed(0)
    return _randomise_batchnorm(torchvision.models.resnet18(weights=None))


@pytest.fixture(scope="module")
def r18_file(source: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "r18.pth"
    torch.save(source.state_dict(), path)
    return path


def _cifar_source(shortcut: str) -> nn.Module:
    torch.manual_seed(1)
    return _randomise_batchnorm(create_model("resnet20", shortcut=shortcut))


def _same_output(model: nn.Module, reference: nn.Module, shape: tuple[int, ...] = IMAGE) -> bool:
    x = torch.randn(shape)
    with torch.no_grad():
        return torch.equal(model.eval()(x), reference(x))


def _prefixed(prefix: str) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
    return lambda sd: {prefix + k: v for k, v in sd.items()}


def _wrapped(key: str) -> Callable[[dict[str, Tensor]], dict[str, object]]:
    return lambda sd: {key: sd, "epoch": 90, "best_acc": 71.5}


@pytest.mark.parametrize(
    "pack",
    [
        lambda sd: sd,
        *(_wrapped(key) for key in ("state_dict", "model", "model_state_dict", "net")),
        _prefixed("module."),
        _prefixed("_orig_mod."),
        _prefixed("_orig_mod.module."),
        lambda sd: {"model": _prefixed("module._orig_mod.")(sd), "optimizer": {"lr": 0.1}},
    ],
    ids=[
        "raw",
        "state_dict",
        "model",
        "model_state_dict",
        "net",
        "module",
        "orig_mod",
        "compiled_ddp",
        "nested",
    ],
)
def test_torchvision_pickles_load_exactly(
    pack: Callable[[dict[str, Tensor]], object], source: nn.Module, tmp_path: Path
) -> None:
    path = tmp_path / "weights.pth"
    torch.save(pack(source.state_dict()), path)
    model, report = load_pretrained(read_weights(path))
    assert (report.model, report.inferred_model) == ("resnet18", True)
    assert len(report.matched) == len(source.state_dict())
    assert report.adapted == report.reinitialised == []
    assert _same_output(model, source)


def test_safetensors_load_exactly(source: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "r18.safetensors"
    save_file(source.state_dict(), path)
    model, report = load_pretrained(read_weights(path), model_name="resnet18")
    assert (report.header, report.inferred_model) == (None, False)
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert _same_output(model, source)


def test_resnetlab_checkpoint_uses_its_header(tmp_path: Path) -> None:
    reference = _cifar_source("B")
    header = {
        "model": "resnet20",
        "model_options": {"shortcut": "B"},
        "num_classes": 10,
        "in_chans": 3,
        "classes": [str(i) for i in range(10)],
        "input_shape": [3, 32, 32],
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
    }
    save_checkpoint(tmp_path / "best.safetensors", reference.state_dict(), header)
    weights = read_weights(tmp_path / "best.safetensors")
    assert weights.header == read_header(tmp_path / "best.safetensors")
    assert weights.header is not None and weights.header["mean"] == header["mean"]
    model, report = load_pretrained(weights)
    assert report.header is not None and report.header["classes"] == header["classes"]
    assert not report.inferred_model
    assert _same_output(model, reference, (2, 3, 32, 32))


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: torchvision.models.resnet18(), ("resnet18", {})),
        (lambda: torchvision.models.resnet50(), ("resnet50", {})),
        (lambda: torchvision.models.resnext50_32x4d(), ("resnext50_32x4d", {})),
        (lambda: torchvision.models.wide_resnet50_2(), ("wide_resnet50_2", {})),
        (lambda: create_model("resnet20"), ("resnet20", {"shortcut": "A"})),
        (lambda: create_model("resnet56", shortcut="B"), ("resnet56", {"shortcut": "B"})),
        (lambda: create_model("preact_resnet18"), ("preact_resnet18", {})),
        (lambda: create_model("preact_resnet164"), ("preact_resnet164", {})),
    ],
)
def test_infer_model(build: Callable[[], nn.Module], expected: tuple[str, dict[str, str]]) -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        state_dict = build().state_dict()
    assert infer_model(state_dict) == expected


def test_infer_model_refuses_what_it_cannot_tell() -> None:
    with torch.device("meta"):
        mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).state_dict()
        resnet32 = create_model("resnet32").state_dict()
        resnet18 = create_model("resnet18").state_dict()
    with pytest.raises(ResnetlabError, match=r"no 'conv1.weight'.*pass --model"):
        infer_model(mlp)
    uneven = {k: v for k, v in resnet32.items() if not k.startswith("layer3.4.")}
    with pytest.raises(
        ResnetlabError,
        match=r"basic blocks \(5, 5, 4\) per stage \(read as resnet30\) fit no registered model; "
        r"pass --model \(known cifar models: resnet20, resnet32, resnet44",
    ):
        infer_model(uneven)
    with pytest.raises(ResnetlabError, match=r"\(read as resnet18\) fit no registered model"):
        infer_model({**resnet18, "layer1.0.se.weight": torch.empty(4, device="meta")})


@pytest.mark.parametrize(
    ("shortcut", "wrap"),
    [
        # akamaster/pytorch_resnet_cifar10: option A, DataParallel, {'state_dict', 'best_prec1'}
        ("A", lambda sd: {"state_dict": sd, "best_prec1": 91.7}),
        # kuangliu/pytorch-cifar: projection shortcuts named 'shortcut', {'net', 'acc', 'epoch'}
        ("B", lambda sd: {"net": sd, "acc": 93.0, "epoch": 199}),
    ],
)
def test_classic_cifar_checkpoint(
    shortcut: str, wrap: Callable[[dict[str, Tensor]], object], tmp_path: Path
) -> None:
    reference = _cifar_source(shortcut)
    classic_names = {
        "module." + k.replace("fc.", "linear.").replace("downsample.", "shortcut."): v
        for k, v in reference.state_dict().items()
    }
    torch.save(wrap(classic_names), tmp_path / "resnet20.th")
    model, report = load_pretrained(read_weights(tmp_path / "resnet20.th"))
    assert report.model == "resnet20" and model.shortcut == shortcut
    assert _same_output(model, reference, (2, 3, 32, 32))


def test_new_class_count_reinitialises_only_the_head(source: nn.Module, r18_file: Path) -> None:
    model, report = load_pretrained(read_weights(r18_file), num_classes=4)
    assert report.reinitialised == ["fc.weight", "fc.bias"]
    assert model.fc.weight.shape == (4, 512)
    loaded = model.state_dict()
    for key, tensor in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], tensor), key
    digest = hashlib.sha256(r18_file.read_bytes()).hexdigest()[:8]
    assert report.summary() == (
        f"weights '{r18_file}' (sha256 {digest}) -> resnet18 (inferred): "
        f"{len(loaded) - 2} matched, 2 re-initialised (fc.weight, fc.bias: 1000->4 classes)"
    )


def test_grayscale_stem_matches_rgb_on_replicated_gray(source: nn.Module, r18_file: Path) -> None:
    model, report = load_pretrained(read_weights(r18_file), in_chans=1, num_classes=1000)
    assert report.adapted == ["conv1.weight"]
    assert "1 adapted (conv1.weight: 3->1 channels)" in report.summary()
    gray = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(gray), source(gray.expand(-1, 3, -1, -1)), atol=1e-5, rtol=0
        )


def test_stem_to_more_channels(source: nn.Module, r18_file: Path, tmp_path: Path) -> None:
    rgb = source.conv1.weight.detach()
    model, report = load_pretrained(read_weights(r18_file), in_chans=5)
    assert report.reasons == {"conv1.weight": "3->5 channels"}
    expected = rgb[:, [0, 1, 2, 0, 1]] * (3 / 5)
    torch.testing.assert_close(model.conv1.weight.detach(), expected, atol=0, rtol=0)

    gray_model, _ = load_pretrained(read_weights(r18_file), in_chans=1)
    torch.save(gray_model.state_dict(), tmp_path / "gray.pth")
    model, report = load_pretrained(read_weights(tmp_path / "gray.pth"), in_chans=3)
    assert model.conv1.weight.shape == (64, 3, 7, 7) and report.adapted == ["conv1.weight"]
    gray = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(gray.expand(-1, 3, -1, -1)), gray_model.eval()(gray), atol=1e-5, rtol=0
        )


def test_sequence_net_adapts_every_input_conv(tmp_path: Path) -> None:
    torch.manual_seed(2)
    mono = _randomise_batchnorm(create_model("resnet1d"))  # 1 channel in
    torch.save(mono.state_dict(), tmp_path / "ecg.pth")
    model, report = load_pretrained(
        read_weights(tmp_path / "ecg.pth"), model_name="resnet1d", in_chans=3
    )
    assert report.adapted == ["layer1.conv1.weight", "layer1.shortcut.0.weight"]
    signal = torch.randn(2, 1, 128)
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(signal.expand(-1, 3, -1)), mono(signal), atol=1e-5, rtol=0
        )


def test_adapt_input_channels_works_from_any_source_count() -> None:
    weight = torch.randn(8, 4, 3, 3)
    assert torch.equal(adapt_input_channels(weight, 1), weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(adapt_input_channels(weight, 2), weight[:, :2] * 2.0, atol=0, rtol=0)
    assert adapt_input_channels(torch.randn(8, 4, 5), 6).shape == (8, 6, 5)  # 1-D stems too


class _Payload:
    """Unpickling this opens (creates) a marker file: stands in for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_code_running_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "x": _Payload(marker)}, path)
    with pytest.raises(ResnetlabError, match=r"evil.pth: refused: this file would run code"):
        read_weights(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: an unsafe load does run it
    assert marker.exists()


@pytest.mark.parametrize(
    ("weights", "target"), [("resnet50", "resnet18"), ("resnet18", "resnet50")]
)
def test_other_architecture_lists_keys_at_fault(weights: str, target: str) -> None:
    with torch.device("meta"):
        given = getattr(torchvision.models, weights)().state_dict()
        model = create_model(target)
    expected = model.state_dict()
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    mis_shaped = [k for k in expected if k in given and given[k].shape != expected[k].shape]
    with pytest.raises(ResnetlabError) as caught:
        load_weights(model, given, source=f"{weights}.pth", model_name=target)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{weights}.pth: weights do not fit model '{target}': ")
    extra = missing or unexpected
    label = "missing" if missing else "unexpected"
    assert f"{label} {len(extra)} ({', '.join(extra[:5])} and {len(extra) - 5} more); " in message
    first = mis_shaped[0]
    shapes = ["x".join(map(str, sd[first].shape)) for sd in (given, expected)]
    listed = f"{first}: {shapes[0]} in weights, {shapes[1]} in model, "
    assert f"mis-shaped {len(mis_shaped)} ({listed}" in message


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ResnetlabError, match=r"no such weights file: '.*missing\.pth'"):
        read_weights(tmp_path / "missing.pth")
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "whole.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "whole.pth").read_bytes()[:2000])
    with pytest.raises(ResnetlabError, match=r"cut\.pth: not a readable weights file"):
        read_weights(tmp_path / "cut.pth")
    torch.save({"epoch": 3}, tmp_path / "meta.pth")
    with pytest.raises(ResnetlabError, match=r"meta\.pth: no state dict found"):
        read_weights(tmp_path / "meta.pth")
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "whole.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "whole.safetensors").read_bytes()[:99])
    with pytest.raises(ResnetlabError, match=r"cut\.safetensors: not a readable safetensors file"):
        read_weights(tmp_path / "cut.safetensors")


class _HeadNotNamedFc(nn.Module):
    """A network whose classifier is ``head``, with a hidden layer named ``fc``."""

    def __init__(self, num_classes: int, hidden: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.head


def test_the_classifier_is_the_models_not_the_fc_prefix() -> None:
    model = _HeadNotNamedFc(num_classes=2)
    report = load_weights(model, _HeadNotNamedFc(num_classes=5).state_dict())
    assert report.reinitialised == ["head.weight", "head.bias"]
    assert report.reasons["head.weight"] == "5->2 classes"
    assert "fc.weight" in report.matched
    with pytest.raises(ResnetlabError, match=r"mis-shaped 3 \(fc\.weight: 6x4 in weights"):
        load_weights(model, _HeadNotNamedFc(num_classes=2, hidden=6).state_dict())
