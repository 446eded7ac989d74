"""The speed-run recipe: whitening stem, weight averaging, --time-budget and the time plot."""

from __future__ import annotations

from dataclasses import astuple
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from helpers import assert_one_line_error, crash_after_state, make_folder, run_cli
from safetensors.torch import load_file

from resnetlab.checkpoints.state import STATE_FILE, load_state
from resnetlab.cli import main
from resnetlab.models import create_model
from resnetlab.training import run
from resnetlab.training.budget import (
    MARGIN_S,
    MARGIN_SHARE,
    Length,
    Pace,
    Speed,
    fit_length,
    pace_of,
)
from resnetlab.training.optim import lr_factor
from resnetlab.training.rundir import fingerprint

# 40 training images in 5 batches of 8, 10 validation images
RECIPE = [
    "train", "--recipe", "speedrun", "--batch-size", "8", "--lr", "0.05", "--val-fraction",
    "0.2", "--quiet",
]  # fmt: skip
# 15 steps; the state saved within epochs too; an average of the last few steps
RESUMABLE = ["--epochs", "3", "--save-every", "3", "--ema", "0.5"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("data") / "stripes", per_class=25)


def test_the_whitening_stem_decorrelates_the_patches() -> None:
    torch.manual_seed(0)
    images = torch.randn(64, 3, 12, 12)
    images[:, 1] += images[:, 0]  # correlated channels
    images[:, :, :, 1:] += images[:, :, :, :-1].clone()  # correlated neighbours
    model = create_model("speedrun")
    model.whiten_(images, eps=0.0)
    out = torch.nn.functional.conv2d(images, model.whiten.weight[:12])  # the positive half
    flat = out.permute(1, 0, 2, 3).reshape(12, -1)
    covariance = torch.cov(flat)
    assert torch.allclose(covariance, torch.eye(12), atol=1e-3)
    assert torch.equal(model.whiten.weight[12:], -model.whiten.weight[:12])
    assert not model.whiten.weight.requires_grad


@pytest.fixture(scope="module")
def recipe_run(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A 3-epoch run of the recipe, its training, and its weights as training began (the
    stem whitened) and as it left them (not averaged) before the final evaluation."""
    out = tmp_path_factory.mktemp("speedrun") / "run"
    seen: dict[str, object] = {}
    train_phase, test_best = run.train_phase, run.test_best

    def keep_then_train(t: run.Training, *args: object) -> None:
        seen["initial"] = {k: v.clone() for k, v in t.model.state_dict().items()}
        train_phase(t, *args)

    def keep_then_test(t: run.Training, title: str) -> object:
        seen["training"] = t
        seen["trained"] = {k: v.clone() for k, v in t.model.state_dict().items()}
        return test_best(t, title)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run, "train_phase", keep_then_train)
        patch.setattr(run, "test_best", keep_then_test)
        assert main([*RECIPE, "--data", str(folder), *RESUMABLE, "--out", str(out)]) == 0
    return SimpleNamespace(out=out, **seen)


def test_the_recipe_trains_end_to_end_and_plots_accuracy_against_time(
    recipe_run: SimpleNamespace,
) -> None:
    out = recipe_run.out
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"] == "speedrun" and config["ema"] == 0.5 and config["tta"] == "flip"
    metrics = [yaml.safe_load(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["val_acc"] >= 80.0  # stripes: learnt in a few steps
    assert (out / "time_to_accuracy.png").stat().st_size > 10_000


def test_the_evaluated_model_is_the_average_with_its_batchnorm_recomputed(
    recipe_run: SimpleNamespace,
) -> None:
    training = recipe_run.training
    assert training.average is not None
    last = load_file(recipe_run.out / "last.safetensors")
    averaged = training.average.module.state_dict()
    trained = recipe_run.trained
    assert all(torch.equal(last[key], averaged[key].contiguous()) for key in last)
    conv = "layer2.conv2.weight"
    assert not torch.equal(last[conv], trained[conv].contiguous())  # an average, not the weights
    # the first BatchNorm's mean: that of its inputs over the 5 training batches (in the run's
    # precision, bf16 where the CPU has it), not the running mean that training left
    block = training.average.module.layer1
    inputs = []
    handle = block.bn1.register_forward_hook(lambda m, i, o: inputs.append(i[0]))
    with torch.no_grad(), training.precision.autocast():
        for x in run.batchnorm_inputs(training):
            training.average.module.eval()(x)
    handle.remove()
    assert len(inputs) == 5
    mean = torch.cat(inputs).float().mean((0, 2, 3))
    assert torch.allclose(last["layer1.bn1.running_mean"], mean, atol=1e-5)
    assert not torch.allclose(trained["layer1.bn1.running_mean"], mean, atol=1e-3)


# What the speed-run network freezes: its whitening filters and every BatchNorm scale.
FROZEN = [
    "whiten.weight",
    *(f"layer{stage}.bn{bn}.weight" for stage in (1, 2, 3) for bn in (1, 2)),
]


def test_the_frozen_whitening_filters_and_batchnorm_scales_stay_as_they_were(
    recipe_run: SimpleNamespace,
) -> None:
    """Bit for bit, in the trained weights and in the average that the checkpoints hold
    (every speed run once trained them, the filters with weight decay)."""
    model = create_model("speedrun")
    assert [name for name, p in model.named_parameters() if not p.requires_grad] == FROZEN
    initial, trained = recipe_run.initial, recipe_run.trained
    averaged = load_file(recipe_run.out / "last.safetensors")
    for name in FROZEN:
        assert torch.equal(trained[name], initial[name]), name
        assert torch.equal(averaged[name], initial[name]), name
    assert all(torch.equal(initial[name], torch.ones_like(initial[name])) for name in FROZEN[1:])
    for name in ("whiten.bias", "layer1.bn1.bias"):  # what trains beside them
        assert not torch.equal(trained[name], initial[name]), name


def test_the_average_s_batchnorm_leaves_out_a_last_batch_of_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """800 training rows in batches of 17 end with a batch of one, which BatchNorm1d refuses
    in training mode (and which would weigh as much as a whole batch)."""
    argv = ["train", "--model", "resnet_tabular", "--data", "tabular-synthetic", "--epochs", "1"]
    code, _, err = run_cli(capsys, *argv, "--batch-size", "17", "--ema", "0.9", "--quiet")
    assert code == 0, err


def test_a_run_with_weight_averaging_resumes_exactly(
    recipe_run: SimpleNamespace, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = [*RECIPE, "--data", str(folder), *RESUMABLE, "--out", str(tmp_path / "crashed")]
    crash_after_state(monkeypatch, at_step=6)  # in epoch 2
    with pytest.raises(MemoryError):
        main(argv)
    monkeypatch.undo()
    assert load_state(tmp_path / "crashed" / STATE_FILE)["averaged"]["n_averaged"] == 6
    assert main(["train", "--resume", str(tmp_path / "crashed")]) == 0
    assert fingerprint(tmp_path / "crashed") == fingerprint(recipe_run.out)


def test_a_state_saved_while_the_frozen_parameters_trained_resumes_as_saved(
    folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A state from before the frozen parameters stayed frozen holds optimiser groups (and
    momentum) for them: its run goes on training them, to the run never stopped."""
    phase_mode = run.phase_mode

    def old_phase_mode(*args: object, unfreeze: bool = False) -> object:
        return phase_mode(*args, unfreeze=True)  # every 'all' phase trained every parameter

    argv = [*RECIPE, "--data", str(folder), *RESUMABLE]
    monkeypatch.setattr(run, "phase_mode", old_phase_mode)
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    crash_after_state(monkeypatch, at_step=6)  # in epoch 2
    with pytest.raises(MemoryError):
        main([*argv, "--out", str(tmp_path / "crashed")])
    monkeypatch.undo()
    groups = load_state(tmp_path / "crashed" / STATE_FILE)["optimizer"]["param_groups"]
    every = len(list(create_model("speedrun").parameters()))
    assert sum(len(group["params"]) for group in groups) == every  # the frozen ones too
    code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path / "crashed"))
    assert code == 0 and "trained the parameters its model freezes" in err
    assert fingerprint(tmp_path / "crashed") == fingerprint(tmp_path / "whole")
    scale = load_file(tmp_path / "whole" / "last.safetensors")["layer1.bn1.weight"]
    assert not torch.equal(scale, torch.ones_like(scale))  # they trained


def test_a_tiny_time_budget_cuts_the_run_and_still_writes_its_outputs(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = [*RECIPE, "--data", str(folder), "--epochs", "50", "--out", str(out)]
    code, stdout, _ = run_cli(capsys, *argv, "--time-budget", "0.01")  # 0.6 s: below the margin
    assert code == 0 and "--time-budget:" in stdout
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["epochs"], config["limit_steps"], config["time_budget"]) == (1, 1, None)
    metrics = (out / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 1 and yaml.safe_load(metrics[0])["step"] == 1
    for name in ("last.safetensors", "best.safetensors", "time_to_accuracy.png"):
        assert (out / name).is_file()
    assert load_state(out / STATE_FILE)["config"]["epochs"] == 1  # what a resume repeats


def test_the_budget_buys_steps_after_compiling_validation_and_the_final_evaluation() -> None:
    """A run of 10 steps an epoch of batch 512, 2 validation batches, weight averaging (4,096
    BatchNorm samples: 4 evaluation batches' worth of forward passes) and flip TTA."""
    speed = Speed(first_step_s=31.0, step_s=1.0, eval_batch_s=0.5)
    pace = pace_of(speed, val_batches=2, bn_batches=4096 / (2 * 512), tta=True)
    # an epoch: 10 steps + (2 validation + 4 BatchNorm batches) x 0.5 s = 13 s; compiling
    # 30 s; final TTA 2 x 2 x 0.5 = 2 s
    assert pace == Pace(step_s=1.0, epoch_s=3.0, final_s=2.0, once_s=30.0)
    whole = (MARGIN_S + 30 + 2 + 7 * 13) / (1 - MARGIN_SHARE)
    assert fit_length(pace, whole, per_epoch=10) == Length(7, None)
    cut = (MARGIN_S + 30 + 2 + 7 * 13 + 3 + 4.5) / (1 - MARGIN_SHARE)  # 8th: 3 s + 4.5 steps
    assert fit_length(pace, cut, per_epoch=10) == Length(8, 74)
    assert fit_length(pace, cut, per_epoch=10, most=60) == Length(6, None)  # at most 60 steps
    assert fit_length(pace, 1.0, per_epoch=10) == Length(1, 1)
    # re-fitted after 3 epochs, nothing left to compile: 4 more epochs, 30 + 40 steps
    later = Pace(step_s=1.0, epoch_s=3.0, final_s=2.0)
    left = (MARGIN_S + 2 + 4 * 13) / (1 - MARGIN_SHARE)
    assert fit_length(later, left, per_epoch=10, steps_done=30, most=100) == Length(7, None)


@pytest.fixture
def optimistic_speed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first fit of the budget 100 times too optimistic, as a noisy machine can give."""
    measure = run.measure_speed
    monkeypatch.setattr(
        run, "measure_speed", lambda *args: Speed(*(s / 100 for s in astuple(measure(*args))))
    )


def _budget_run(argv: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> tuple:
    """Train ``argv`` into ``out`` within 9 s; its config and metrics."""
    code, stdout, _ = run_cli(capsys, *argv, "--out", str(out), "--time-budget", "0.15")
    assert code == 0 and "steps instead of" in stdout, stdout
    config = yaml.safe_load((out / "config.yaml").read_text())
    metrics = [yaml.safe_load(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return config, metrics


@pytest.mark.usefixtures("optimistic_speed")
def test_the_budget_is_refitted_after_each_epoch_and_its_schedule_still_ends(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first fit is cut back after the first epoch: the run takes the length of its
    re-fitted config, its warmup keeps its share of the run, and the lr still anneals to zero
    at the last step."""
    argv = [*RECIPE, "--data", str(folder), "--epochs", "50", "--warmup-epochs", "5"]
    config, metrics = _budget_run(argv, tmp_path / "run", capsys)
    steps = config["limit_steps"]
    assert len(metrics) == config["epochs"] and metrics[-1]["step"] == steps
    assert config["warmup_epochs"] == pytest.approx(5 / 50 * steps / 5, abs=1e-4)  # a 10% share
    warmup = round(config["warmup_epochs"] * 5)  # 5 steps an epoch
    last = config["lr"] * lr_factor(config["schedule"], steps - 1, steps, warmup)
    assert metrics[-1]["lr"] == pytest.approx(last) and lr_factor("onecycle", steps, steps, 0) == 0


@pytest.mark.usefixtures("optimistic_speed")
def test_a_budget_cut_to_whole_epochs_ends_there(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With one step an epoch every re-fit lands on whole epochs; the run still stops at the
    cut (it once trained on to the first fit's length at lr 0). How many epochs fit depends on
    the machine's speed, not on --epochs, which the budget replaces."""
    argv = [*RECIPE, "--data", str(folder), "--epochs", "50", "--batch-size", "40"]
    config, metrics = _budget_run(argv, tmp_path / "run", capsys)
    assert config["limit_steps"] == config["epochs"]
    assert [m["step"] for m in metrics] == list(range(1, config["epochs"] + 1))


def test_a_run_shortened_while_it_trains_resumes_exactly(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run cut from 15 to 12 steps after its first epoch (as a budget's re-fit cuts it):
    killed in its second epoch, it resumes to the run never stopped."""

    class CutOnce:
        cut = False

        def after_epoch(self, *args: object) -> Length | None:
            self.cut, first = True, not self.cut
            return Length(3, 12) if first else None

    prepare = run.prepare

    def prepare_with_cut(*args: object) -> run.Training:
        training = prepare(*args)
        training.budget = CutOnce()  # type: ignore[assignment]
        return training

    argv = [*RECIPE, "--data", str(folder), *RESUMABLE]
    monkeypatch.setattr(run, "prepare", prepare_with_cut)
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    crash_after_state(monkeypatch, at_step=9)  # in epoch 2, after the cut
    with pytest.raises(MemoryError):
        main([*argv, "--out", str(tmp_path / "crashed")])
    monkeypatch.undo()
    assert main(["train", "--resume", str(tmp_path / "crashed")]) == 0
    metrics = (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    assert yaml.safe_load(metrics[-1])["step"] == 12
    assert fingerprint(tmp_path / "crashed") == fingerprint(tmp_path / "whole")


@pytest.mark.parametrize(
    ("flag", "value"), [("--time-budget", "0"), ("--time-budget", "nan"), ("--ema", "1.5")]
)
def test_bad_budget_or_decay_is_a_one_line_error(
    flag: str, value: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, *RECIPE, "--data", str(folder), flag, value)
    assert_one_line_error(code, err, flag)
