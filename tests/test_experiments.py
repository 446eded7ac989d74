"""The experiments: each end to end in a tiny configuration, the verdict computed from data,
gradient numbers, the paper comparison and the case study's report."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli
from PIL import Image

from resnetlab.data import load_data
from resnetlab.experiments import degradation
from resnetlab.experiments.case_study import (
    ARTICLE_ACCURACY,
    LOGISTIC,
    PLAIN,
    RESNET,
    SCRATCH,
    CaseStudyResult,
    statement,
)
from resnetlab.experiments.config import FAST, FULL, DegradationConfig
from resnetlab.experiments.degradation import degradation_verdict, recipe_line
from resnetlab.experiments.gradients import first_last_ratio, layer_gradient_norms
from resnetlab.experiments.paper import compare_with_paper, format_comparison, macs_v1
from resnetlab.models import create_model
from resnetlab.training.step import Normalizer


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """These networks are tiny: a second thread only waits on the first (10x slower when
    the CPU is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def tiny_folder(tmp_path: Path) -> Path:
    """3 classes x 12 RGB images of 8x8 pixels, each class a different brightness."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for label in range(3):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 60, (8, 8, 3)) + 90 * label
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def history(*train_errors: float) -> list[dict[str, float]]:
    """Per-epoch records with the given training errors (%) and no validation."""
    return [
        {"epoch": e, "step": 10 * e, "train_acc": 100 - err, "val_acc": None}
        for e, err in enumerate(train_errors, 1)
    ]


# --- degradation ----------------------------------------------------------------------------


def test_degradation_runs_end_to_end(
    capsys: pytest.CaptureFixture[str], tiny_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "degradation"
    code, stdout, err = run_cli(
        capsys, "experiment", "degradation", "--data", str(tiny_folder), "--depths", "20", "32",
        "--epochs", "2", "--batch-size", "6", "--precision", "fp32", "--zero-init-residual",
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert "model_options: {}" in (out / "plain20" / "config.yaml").read_text()
    assert "zero_init_residual: true" in (out / "resnet20" / "config.yaml").read_text()
    for name in ("degradation.png", "degradation.md", "degradation.json", "log.txt"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "degradation.json").read_text())
    assert set(report) >= {"experiment", "mode", "recipe", "networks", "verdict", "elapsed_s"}
    assert "2 epochs of 5 iterations" in stdout and "over 10 iterations" in report["recipe"]
    assert list(report["networks"]) == ["plain20", "plain32", "resnet20", "resnet32"]
    for name, net in report["networks"].items():
        assert (out / name / "best.safetensors").exists()
        assert net["depth"] == int(name[-2:])
        assert net["iterations"] == 2 * 5  # 32 training images (36 - 10% val) // batch 6
        assert [r["step"] for r in net["history"]] == [5, 10]
        assert net["train_error"] == pytest.approx(100 - net["history"][-1]["train_acc"])
    histories = {name: net["history"] for name, net in report["networks"].items()}
    verdict = degradation_verdict(histories)
    assert report["verdict"] == {"reproduced": verdict.reproduced, "line": verdict.line}
    assert verdict.line in stdout
    assert "| plain32 | 32 |" in (out / "degradation.md").read_text()


def test_verdict_reproduced_when_plain_degrades_and_resnet_improves() -> None:
    verdict = degradation_verdict({
        "plain20": history(40, 20.0), "plain56": history(50, 30.0),
        "resnet20": history(40, 15.0), "resnet56": history(45, 10.0),
    })  # fmt: skip
    assert verdict.reproduced is True
    assert verdict.line == (
        "Degradation reproduced: final training error plain56 30.0% > plain20 20.0% "
        "(+10.0 points, expected >), resnet56 10.0% < resnet20 15.0% (-5.0 points, expected <)."
    )


@pytest.mark.parametrize(("plain56", "resnet56"), [(19.0, 10.0), (30.0, 16.0), (20.0, 15.0)])
def test_verdict_not_reproduced_otherwise(plain56: float, resnet56: float) -> None:
    verdict = degradation_verdict({
        "plain20": history(20.0), "plain56": history(plain56),
        "resnet20": history(15.0), "resnet56": history(resnet56),
    })  # fmt: skip
    assert verdict.reproduced is False
    assert verdict.line.startswith("Degradation not reproduced: ")
    assert f"plain56 {plain56:.1f}%" in verdict.line


def test_verdict_needs_two_depths_of_each_kind() -> None:
    verdict = degradation_verdict({"plain20": history(20.0), "resnet20": history(15.0)})
    assert verdict.reproduced is None
    assert "not checked" in verdict.line


def test_modes_fill_in_what_is_unset() -> None:
    fast = DegradationConfig(fast=True, augment=True).resolved()
    assert fast.networks == ("plain20", "plain56", "resnet20", "resnet56")
    settings = (fast.subset, fast.image_size, fast.batch_size, fast.epochs, fast.iterations)
    assert settings == (None, 16, 64, FAST.epochs, None)
    assert fast.augment is True and fast.zero_init_residual is True
    assert fast.schedule == "onecycle" and fast.val_subset == 1_000
    full = DegradationConfig(depths=(20,)).resolved()
    assert full.networks == ("plain20", "resnet20")
    settings = (full.subset, full.image_size, full.batch_size, full.epochs, full.iterations)
    assert settings == (None, None, 128, None, 64_000) and FULL.iterations == 64_000
    assert full.augment is True and full.zero_init_residual is False
    assert DegradationConfig(epochs=3).resolved().iterations is None
    assert DegradationConfig(fast=True, iterations=50).resolved().epochs is None


def test_degradation_errors_name_the_flag(
    capsys: pytest.CaptureFixture[str],
    tiny_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, _, err = run_cli(capsys, "experiment", "degradation", "--networks", "resnet50")
    assert code == 2 and "--networks: 'resnet50' is not a CIFAR network" in err
    code, _, err = run_cli(capsys, "experiment", "degradation", "--subset", "0")
    assert code == 2 and "--subset must be at least 1" in err
    missing = tmp_path / "no-cifar"
    monkeypatch.setattr(degradation, "DEFAULT_DATA", missing)
    code, _, err = run_cli(capsys, "experiment", "degradation", "--data", str(missing))
    assert code == 2 and f"--data: the CIFAR-10 training folder is not at '{missing}'" in err
    code, _, err = run_cli(
        capsys, "experiment", "degradation", "--data", str(tiny_folder), "--subset", "2",
        "--out", str(tmp_path / "x"),
    )  # fmt: skip
    assert code == 2 and "--subset 2: no stratified subset" in err
    assert "error: --subset 2: no stratified subset" in (tmp_path / "x" / "log.txt").read_text()


# --- gradients ------------------------------------------------------------------------------


def test_gradients_run_end_to_end_from_a_config_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "gradients"
    config = tmp_path / "gradients.yaml"
    config.write_text(f"depths: [20]\nsteps: 2\nbatch_size: 32\nout: {out}\n")
    code, stdout, err = run_cli(capsys, "experiment", "gradients", "--config", str(config))
    assert code == 0, err
    for name in ("gradients.png", "gradients.md", "gradients.json"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "gradients.json").read_text())
    assert report["steps"] == 2 and list(report["networks"]) == ["plain20", "resnet20"]
    for profile in report["networks"].values():
        assert len(profile["layers"]) == len(profile["init"]) == len(profile["trained"]) == 20
        assert profile["layers"][0] == "conv1" and profile["layers"][-1] == "fc"
        values = [*profile["init"], *profile["trained"]]
        assert all(math.isfinite(v) and v > 0 for v in values)
        assert profile["ratio_init"] == pytest.approx(profile["init"][0] / profile["init"][-1])
        assert math.isfinite(profile["ratio_trained"])
    assert "| plain20 | 20 |" in stdout


def test_plain_networks_gradients_explode_towards_the_input_at_init() -> None:
    """Measured, not assumed: with batch norm, a plain network's first layer gets a *larger*
    gradient than its last, more so the deeper it is; a ResNet's stay within 10x."""
    bundle = load_data("digits", val_fraction=0.0, test_fraction=0.0, seed=0)
    x = torch.stack([bundle.train[i][0] for i in range(64)])
    y = torch.tensor([int(bundle.train[i][1]) for i in range(64)])
    batch = (Normalizer(bundle.mean, bundle.std, bundle.input_shape)(x), y)
    ratios = {}
    for name in ("plain20", "plain56", "resnet20", "resnet56"):
        torch.manual_seed(0)
        model = create_model(name, num_classes=10, in_chans=1)
        norms = layer_gradient_norms(model, batch, torch.nn.CrossEntropyLoss())
        ratios[name] = first_last_ratio(norms)
    assert ratios["plain20"] > 3
    assert ratios["plain56"] > 100 * ratios["plain20"]
    assert 0.1 < ratios["resnet20"] < 10 and 0.1 < ratios["resnet56"] < 10


# --- case study -----------------------------------------------------------------------------


def test_case_study_prints_the_article_format(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "case"
    code, stdout, err = run_cli(
        capsys, "experiment", "case-study", "--seeds", "2", "--epochs", "2", "--out", str(out)
    )
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0].startswith("Epoch [1/2], Loss: ") and lines[1].startswith("Epoch [2/2], Loss: ")
    assert lines[2].startswith("Accuracy of the network on the test images: ")
    assert lines[2].endswith("%")
    report = json.loads((out / "case_study.json").read_text())
    assert list(report["accuracies"]) == [RESNET, PLAIN, SCRATCH, LOGISTIC]
    assert all(len(values) == 2 for values in report["accuracies"].values())
    assert f"{report['accuracies'][RESNET][0]:.1f}%" in lines[2]
    assert report["article_accuracy"] == ARTICLE_ACCURACY == 92.5
    assert report["statement"] in stdout
    assert (out / "case_study.md").exists() and (out / "resnet-seed1" / "best.safetensors").exists()


def test_case_study_statement_follows_the_numbers(tmp_path: Path) -> None:
    result = CaseStudyResult(
        tmp_path, [], {RESNET: [92.0, 93.0], PLAIN: [80.0, 82.0], SCRATCH: [91.0, 91.0],
                       LOGISTIC: [76.0, 77.0]},
    )  # fmt: skip
    text = statement(result)
    assert "reaches 92.5% ± 0.7% here over 2 seeds, level with the claim (within two" in text
    assert "by +11.5 points (more than the spread" in text and "reaches 76.5%" in text
    result.accuracies[RESNET] = [85.0, 85.0]
    assert "7.5 points below the claim (outside two standard deviations)" in statement(result)


# --- complexity against the paper ----------------------------------------------------------


def test_compare_paper_cifar(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run_cli(capsys, "models", "--compare-paper", "--family", "cifar", "--json")
    assert code == 0
    rows = {row["name"]: row for row in json.loads(stdout)}
    assert list(rows) == ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202"]
    assert rows["resnet20"]["params"] == 269_722 and rows["resnet20"]["paper_params"] == 0.27e6
    assert rows["resnet20"]["params_diff"] == pytest.approx(269_722 / 270_000 - 1)
    assert all(abs(row["params_diff"]) < 0.02 for row in rows.values())
    assert all(row["paper_macs"] is None and row["note"] is None for row in rows.values())


def test_v1_bottleneck_count_explains_the_paper() -> None:
    assert macs_v1("resnet50") == 3_857_973_248  # the paper's "3.8 x 10^9", cut not rounded
    assert macs_v1("resnet18") is None  # basic blocks: no strided bottleneck
    rows = compare_with_paper("imagenet")
    assert [row.name for row in rows] == [f"resnet{d}" for d in (18, 34, 50, 101, 152)]
    assert [row.macs_v1 is not None for row in rows] == [False, False, True, True, True]
    assert all(abs(row.macs_v1 / row.paper_macs - 1) < 0.016 for row in rows[2:])
    text = format_comparison(rows)
    assert "3.86G" in text and "+7.6%" in text
    assert "[1] The paper prints" in text and "[2] resnetlab's ResNet-50/101/152" in text


def test_recipe_line_names_the_schedule() -> None:
    paper = recipe_line(DegradationConfig(fast=True, schedule="step").resolved(), 2041)
    assert "lr / 10 at 50% and 75% over 2041 iterations" in paper
    onecycle = recipe_line(DegradationConfig(fast=True, schedule="onecycle").resolved(), 300)
    assert "one-cycle lr" in onecycle and "lr / 10" not in onecycle
