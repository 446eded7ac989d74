"""Fine-tuning: phases and their gradients, BatchNorm policies, provenance, CLI."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset
from torchvision.ops import FrozenBatchNorm2d

from resnetlab.checkpoints.checkpoint import read_header, save_checkpoint
from resnetlab.checkpoints.state_dicts import WeightsFile, read_weights
from resnetlab.checkpoints.weights import model_from_checkpoint
from resnetlab.cli import main
from resnetlab.config.finetune import FinetuneConfig, Phase, plan_phases
from resnetlab.config.train import TrainConfig
from resnetlab.data import load_data
from resnetlab.data.bundle import DataBundle
from resnetlab.errors import ResnetlabError
from resnetlab.models import create_model
from resnetlab.training.finetune import finetune
from resnetlab.training.phases import (
    describe_phase,
    freeze_batchnorm,
    parameter_stages,
    phase_mode,
    phase_param_groups,
)
from resnetlab.training.run import Start, Training, prepare, train_phases
from resnetlab.training.rundir import RunDir
from resnetlab.training.start import checkpoint_header


def _randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that a kept or a changed buffer shows."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnetlab checkpoint of a seeded resnet20 for 'digits' (1x8x8, 10 classes)."""
    torch.manual_seed(0)
    model = _randomise_batchnorm(create_model("resnet20", num_classes=10, in_chans=1))
    cfg = TrainConfig(model="resnet20", data="digits")
    path = tmp_path_factory.mktemp("source") / "digits-r20.safetensors"
    save_checkpoint(path, model.state_dict(), checkpoint_header(cfg, load_data("digits")))
    return path


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An RGB image folder of 3 classes (red, green, blue tints), 12 images of 8x8 each."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for label, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir()
        for i in range(12):
            pixels = rng.integers(0, 90, (8, 8, 3), dtype=np.uint8)
            pixels[..., label] += 160
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_plan_phases() -> None:
    assert plan_phases("linear-probe", 6, 1.0, 0.25) == [Phase("head", 6, 1.0, None)]
    assert plan_phases("full", 6, 1.0, 0.25) == [Phase("all", 6, 1.0, 0.25)]
    assert plan_phases("gradual", 6, 1.0, 0.25) == [
        Phase("head", 1, 1.0, None),
        Phase("all", 5, 0.5, 0.125),
    ]
    assert plan_phases("lp-ft", 6, 1.0, 0.25) == [
        Phase("head", 3, 1.0, None),
        Phase("all", 3, 0.25, 0.25),
    ]
    assert plan_phases("gradual", 6, 1.0, 0.25, head_epochs=4)[1].epochs == 2


def _stage_names(model: nn.Module) -> tuple[list[str], list[set[str]]]:
    """Names of the head's parameters, and the module prefixes of each stage's."""
    names = {id(p): n for n, p in model.named_parameters()}
    head, stages = parameter_stages(model)
    prefixes = [{names[id(p)].rsplit(".", 1)[0] for p in stage} for stage in stages]
    return [names[id(p)] for p in head], prefixes


def test_stages_of_each_family() -> None:
    head, stages = _stage_names(create_model("resnet20"))
    assert head == ["fc.weight", "fc.bias"]
    assert stages[0] == {"conv1", "bn1"}
    assert [{prefix.split(".")[0] for prefix in stage} for stage in stages[1:]] == [
        {"layer1"},
        {"layer2"},
        {"layer3"},
    ]
    _, stages = _stage_names(create_model("resnet_tabular"))
    assert stages == [
        {"input_layer"},
        {"blocks.0.norm", "blocks.0.linear1", "blocks.0.linear2"},
        {
            "blocks.1.norm",
            "blocks.1.linear1",
            "blocks.1.linear2",
            "blocks.1.projection",
            "bn_final",
        },
    ]
    _, stages = _stage_names(create_model("preact_resnet18"))
    assert len(stages) == 5 and "bn_final" in stages[4]  # the final norm joins the last stage


@pytest.mark.parametrize(
    "name", ["resnet18", "resnet20", "preact_resnet18", "resnet1d", "resnet_tabular"]
)
def test_head_is_exactly_the_classifier(name: str) -> None:
    with torch.device("meta"):
        model = create_model(name)
    head, stages = parameter_stages(model)
    assert [id(p) for p in head] == [id(p) for p in model.get_classifier().parameters()]
    everything = head + [p for stage in stages for p in stage]
    assert sorted(map(id, everything)) == sorted(id(p) for p in model.parameters())  # once each


def test_discriminative_lrs_and_weight_decay_groups() -> None:
    model = create_model("resnet20")
    cfg = TrainConfig(weight_decay=0.01)
    groups = phase_param_groups(model, Phase("all", 1, 1.0, 0.5), stage_decay=0.5, cfg=cfg)
    lrs = {(g["name"], g["weight_decay"]): g["lr"] for g in groups}
    assert lrs == {
        **{("head", wd): 1.0 for wd in (0.01, 0.0)},
        **{(f"stage{s}", wd): 0.5 * 0.5 ** (3 - s) for s in range(4) for wd in (0.01, 0.0)},
    }
    grouped = sorted(id(p) for g in groups for p in g["params"])
    assert grouped == sorted(id(p) for p in model.parameters())  # each exactly once
    assert all(p.ndim == 1 for g in groups if g["weight_decay"] == 0 for p in g["params"])
    head_only = phase_param_groups(model, Phase("head", 1, 1.0, None), 1.0, cfg)
    assert [g["params"] for g in head_only] == [[model.fc.weight], [model.fc.bias]]


@pytest.mark.parametrize(("phase", "trained"), [("all", 497_250), ("head", 1_290)])
def test_a_phase_trains_none_of_what_the_model_froze(phase: str, trained: int) -> None:
    """The speed-run network freezes its whitening filters and BatchNorm scales (864 of its
    498,114 parameters): no phase unfreezes them, and the phase's line counts without them."""
    model = create_model("speedrun")
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    plan = Phase(phase, 1, 1.0, 0.5 if phase == "all" else None)
    with phase_mode(model, plan, "train"):
        assert not any(p.requires_grad for p in model.parameters() if id(p) in frozen)
        groups = phase_param_groups(model, plan, 1.0, TrainConfig())
    assert not {id(p) for g in groups for p in g["params"]} & frozen
    assert f" {trained:,} parameters train" in describe_phase(1, 1, 1, plan, groups)
    assert {id(p) for p in model.parameters() if not p.requires_grad} == frozen  # as before


def _tiny_bundle() -> DataBundle:
    torch.manual_seed(0)
    x, y = torch.rand(32, 3, 8, 8), torch.arange(32) % 3
    return DataBundle(
        name="tiny",
        kind="image",
        classes=["a", "b", "c"],
        input_shape=(3, 8, 8),
        train=TensorDataset(x, y),
        val=None,
        test=None,
        mean=[0.5] * 3,
        std=[0.25] * 3,
    )


def _training(tmp_path: Path, cfg: TrainConfig, bn: str = "train") -> Training:
    torch.manual_seed(0)
    model = _randomise_batchnorm(create_model("resnet20", num_classes=3))
    if bn == "frozen":
        freeze_batchnorm(model)
    cfg = replace(cfg, batch_size=16, precision="fp32", quiet=True)
    return prepare(Start(cfg, _tiny_bundle(), model), RunDir(tmp_path))


@pytest.mark.parametrize(
    ("strategy", "head_only_epochs"),
    [("linear-probe", 4), ("full", 0), ("gradual", 1), ("lp-ft", 2)],
)
def test_which_parameters_get_gradients_in_which_epoch(
    strategy: str, head_only_epochs: int, tmp_path: Path
) -> None:
    cfg = FinetuneConfig(weights="w", data="d", strategy=strategy, epochs=4, lr=0.01)
    training = _training(tmp_path, cfg)
    seen: dict[int, set[str]] = defaultdict(set)
    for name, param in training.model.named_parameters():
        param.register_hook(lambda _, n=name: seen[len(training.history) + 1].add(n))
    train_phases(training, cfg.phases(), cfg.bn, cfg.stage_decay)
    everything = {name for name, _ in training.model.named_parameters()}
    expected = {
        epoch: {"fc.weight", "fc.bias"} if epoch <= head_only_epochs else everything
        for epoch in range(1, 5)
    }
    assert dict(seen) == expected
    assert all(p.requires_grad for p in training.model.parameters())  # restored after


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


@pytest.mark.parametrize(
    ("strategy", "bn", "stats_kept", "affine_trains"),
    [
        ("full", "train", False, True),
        ("full", "freeze-stats", True, True),
        ("full", "frozen", True, False),
        ("linear-probe", "train", True, False),
    ],
)
def test_batchnorm_policies(
    strategy: str, bn: str, stats_kept: bool, affine_trains: bool, tmp_path: Path
) -> None:
    cfg = FinetuneConfig(weights="w", data="d", strategy=strategy, bn=bn, epochs=1, lr=0.01)
    training = _training(tmp_path, cfg, bn)
    model = training.model
    before, bn_weight = _buffers(model), model.layer2[0].bn1.weight.clone()
    train_phases(training, cfg.phases(), cfg.bn, cfg.stage_decay)
    after = _buffers(model)
    assert all(torch.equal(before[k], after[k]) for k in before) == stats_kept
    assert (not torch.equal(model.layer2[0].bn1.weight, bn_weight)) == affine_trains
    assert isinstance(model.bn1, FrozenBatchNorm2d) == (bn == "frozen")


def test_frozen_batchnorm_computes_what_eval_batchnorm_does() -> None:
    torch.manual_seed(0)
    model = _randomise_batchnorm(create_model("resnet20")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(freeze_batchnorm(model)(x), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ema", [None, 0.9])  # the average's BatchNorm statistics kept too
def test_linear_probe_keeps_the_backbone_and_records_its_source(
    source: Path, colours: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], ema: float
) -> None:
    cfg = FinetuneConfig(
        weights=str(source),
        data=str(colours),
        strategy="linear-probe",
        epochs=2,
        ema=ema,
        out=str(tmp_path / "lp"),
        quiet=True,
    )
    result = finetune(cfg)
    out = capsys.readouterr().out
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert (
        f"weights '{source}' (sha256 {digest[:8]}) -> resnet20: 113 matched, "
        "1 adapted (conv1.weight: 1->3 channels), "
        "2 re-initialised (fc.weight, fc.bias: 10->3 classes)"
    ) in out
    header = read_header(result.run_dir / "best.safetensors")
    assert header["weights"] == {"file": source.name, "sha256": digest}
    assert header["finetune"]["strategy"] == "linear-probe"
    assert header["finetune"]["phases"] == [
        {"name": "head", "epochs": 2, "head_lr": cfg.lr, "backbone_lr": None}
    ]
    assert (header["num_classes"], header["in_chans"]) == (3, 3)
    assert header["input_shape"] == [3, 8, 8]  # the source's input size, not the folder's
    assert header["mean"] == [read_header(source)["mean"][0]] * 3

    tuned, _ = model_from_checkpoint(result.run_dir / "best.safetensors")
    kept = tuned.state_dict()
    for key, tensor in load_file(str(source)).items():
        if key == "conv1.weight":  # one grey channel -> three, each a third of it
            torch.testing.assert_close(kept[key], tensor.expand(-1, 3, -1, -1) / 3)
        elif not key.startswith("fc."):
            assert torch.equal(kept[key], tensor), key


def test_frozen_bn_checkpoint_evaluates(
    source: Path, colours: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = FinetuneConfig(
        weights=str(source),
        data=str(colours),
        strategy="gradual",
        bn="frozen",
        epochs=2,
        out=str(tmp_path / "ft"),
        quiet=True,
    )
    result = finetune(cfg)
    assert result.test_report is not None
    capsys.readouterr()
    checkpoint = str(result.run_dir / "best.safetensors")
    assert main(["eval", "--checkpoint", checkpoint, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy"] == pytest.approx(result.test_report["accuracy"])


def test_checkpoint_that_contradicts_its_header(source: Path, tmp_path: Path) -> None:
    state = load_file(str(source))
    state["fc.weight"], state["fc.bias"] = torch.zeros(3, 64), torch.zeros(3)
    save_checkpoint(tmp_path / "bad.safetensors", state, read_header(source))
    with pytest.raises(ResnetlabError) as caught:
        model_from_checkpoint(tmp_path / "bad.safetensors")
    assert str(caught.value) == (
        f"{tmp_path / 'bad.safetensors'}: weights do not fit the header's resnet20: "
        "fc.weight (3->10 classes); fc.bias (3->10 classes)"
    )


def test_train_and_eval_take_weights(
    source: Path, colours: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tmp_path / "raw.pth"  # foreign: a wrapped state dict, no preprocessing metadata
    torch.save({"model": load_file(str(source)), "epoch": 3}, raw)
    out = tmp_path / "t"
    flags = ["--data", str(colours), "--epochs", "1", "--out", str(out), "--quiet"]
    assert main(["train", "--weights", str(raw), "--mean", "0.5", "--std", "0.25", *flags]) == 0
    assert "-> resnet20 (inferred): 113 matched" in capsys.readouterr().out
    header = read_header(out / "best.safetensors")
    assert header["weights"]["file"] == "raw.pth"
    assert (header["model"], header["model_options"]) == ("resnet20", {"shortcut": "A"})
    assert (header["mean"], header["std"]) == ([0.5] * 3, [0.25] * 3)
    again = tmp_path / "again"  # the run's config.yaml repeats it, weights included
    assert main(["train", "--config", str(out / "config.yaml"), "--out", str(again)]) == 0
    assert read_header(again / "best.safetensors")["weights"] == header["weights"]

    assert main(["eval", "--weights", str(source), "--data", "digits", "--split", "all"]) == 0
    text = capsys.readouterr().out
    assert "-> resnet20: 116 matched" in text and "on 1797 all samples" in text
    code = main(["eval", "--weights", str(source), "--data", str(colours)])
    err = capsys.readouterr().err
    assert code == 2 and "classifier does not fit" in err and "10->3 classes" in err


def test_cli_finetune_and_lr_find(
    source: Path, colours: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--weights", str(source), "--data", str(colours), "--quiet"]
    assert main(["finetune", *argv, "--epochs", "2", "--out", str(tmp_path / "f")]) == 0
    out = capsys.readouterr().out
    assert "phase 1/2 'head', epochs 1-1" in out and "phase 2/2 'all', epochs 2-2" in out
    assert "Accuracy of the network on the test images" in out
    assert main(["lr-find", *argv, "--steps", "12", "--out", str(tmp_path / "l")]) == 0
    assert "suggested lr: " in capsys.readouterr().out


def test_finetune_help_names_the_config_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    d = FinetuneConfig()
    for needle in (
        f"{d.strategy} (default)",
        f"{d.bn} (default;",
        f"(default: {d.backbone_lr_mult})",
        f"{d.strategy} over {d.epochs} epochs, AdamW, lr {d.lr:g}, batch {d.batch_size}",
    ):
        assert needle in text, needle


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["finetune", "--data", "digits"], "finetune needs --weights FILE"),
        (["finetune", "--weights", "missing.pth", "--data", "digits"], "missing.pth"),
        (["finetune", "--weights", "w", "--data", "digits", "--strategy", "x"], "--strategy"),
        (["finetune", "--weights", "w", "--data", "digits", "--bn", "off"], "--bn must be"),
        (
            [
                "finetune",
                "--weights",
                "w",
                "--data",
                "d",
                "--strategy",
                "gradual",
                "--head-epochs",
                "3",
                "--epochs",
                "3",
            ],
            "--head-epochs (3) must be at least 1 and below --epochs (3)",
        ),
        (["finetune", "--weights", "w", "--data", "d", "--stage-decay", "2"], "--stage-decay"),
        (["finetune", "--weights", "w", "--data", "digits", "--mean", "0.5"], "--std"),
        (["lr-find", "--strategy", "full"], "--strategy: fine-tuning flags"),
        (["lr-find", "--steps", "3"], "--steps must be at least 10"),
        (["train", "--mean", "0.5", "--std", "0.2"], "--mean and --std describe --weights"),
        (["eval", "--data", "digits"], "either --checkpoint or --weights"),
    ],
)
def test_bad_flags_give_one_line_errors(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("resnetlab: error: "), err
    assert needle in err


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--epochs", "1"],
        ["finetune", "--strategy", "linear-probe", "--epochs", "1"],
        ["lr-find", "--steps", "10"],
        ["eval"],
    ],
    ids=["train", "finetune", "lr-find", "eval"],
)
def test_a_run_from_weights_opens_the_file_once(
    argv: list[str],
    source: Path,
    colours: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The file exists only while ``read_weights`` runs, so any other open of it would fail;
    and ``read_weights`` opens it once."""
    path = tmp_path / "w.safetensors"
    reads: list[str] = []
    opens: list[object] = []

    def read_while_present(given: str) -> WeightsFile:
        reads.append(given)
        shutil.copyfile(source, path)
        try:
            with mock.patch("io.open", wraps=io.open) as opened:
                weights = read_weights(given)
        finally:
            path.unlink()
        opens.extend(call for call in opened.call_args_list if Path(call.args[0]) == path)
        return weights

    for module in ("training.run", "inference.evaluate"):
        monkeypatch.setattr(f"resnetlab.{module}.read_weights", read_while_present)
    data = "digits" if argv[0] == "eval" else str(colours)
    flags = ["--weights", str(path), "--data", data]
    if argv[0] != "eval":
        flags += ["--out", str(tmp_path / "run"), "--quiet"]
    assert main([*argv, *flags]) == 0, capsys.readouterr().err
    assert reads == [str(path)] and len(opens) == 1


@pytest.mark.parametrize("command", ["train", "finetune", "lr-find"])
@pytest.mark.parametrize("damage", ["missing", "cut"])
def test_a_bad_weights_file_fails_before_the_run_folder(
    command: str, damage: str, source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "w.safetensors"
    if damage == "cut":
        path.write_bytes(source.read_bytes()[:500])
    assert main([command, "--weights", str(path), "--data", "digits"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("resnetlab: error: "), err
    expected = "no such weights file" if damage == "missing" else "not a readable safetensors"
    assert expected in err and str(path) in err
    assert not (tmp_path / "runs").exists()  # the default run folder (tests run in tmp_path)
