"""The training engine: schedules, losses, metrics, checkpoints, and a real training run."""

from __future__ import annotations

import errno
import math
from itertools import pairwise
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from resnetlab import files
from resnetlab.checkpoints import checkpoint as ckpt
from resnetlab.config.train import TrainConfig
from resnetlab.errors import ResnetlabError
from resnetlab.models import create_model
from resnetlab.runtime.precision import resolve_precision
from resnetlab.training.metrics import classification_report, confusion_matrix, topk_accuracy
from resnetlab.training.optim import build_optimizer, build_scheduler, lr_factor, parameter_groups
from resnetlab.training.run import TrainResult
from resnetlab.training.step import class_logits, make_loss
from resnetlab.training.train import train


def test_norm_and_bias_parameters_skip_weight_decay() -> None:
    model = create_model("resnet20")
    decay, no_decay = parameter_groups(model, 5e-4, decay_norm_and_bias=False)
    assert all(p.ndim > 1 for p in decay["params"]) and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 1 for p in no_decay["params"])
    n = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())


def test_step_schedule_divides_by_ten_at_half_and_three_quarters() -> None:
    factors = [lr_factor("step", s, total=100, warmup=0) for s in (0, 49, 50, 74, 75, 99)]
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_warmup_is_linear_and_cosine_ends_near_zero() -> None:
    assert [lr_factor("cosine", s, 100, 4) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1])
    assert lr_factor("cosine", 99, 100, 4) < 1e-3


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "step", "constant"])
def test_scheduler_runs_the_whole_budget(schedule: str) -> None:
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(schedule=schedule, lr=0.1, warmup_epochs=1)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total_steps=50, steps_per_epoch=10)
    lrs = []
    for _ in range(50):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert max(lrs) <= 0.1 + 1e-9 and all(math.isfinite(v) for v in lrs)
    if schedule != "constant":
        assert lrs[-1] < 0.1


def test_a_warmup_as_long_as_the_run_is_warned_about() -> None:
    cfg = TrainConfig(schedule="onecycle", lr=0.1, warmup_epochs=3)
    optimizer = build_optimizer(torch.nn.Linear(2, 2), cfg)
    with pytest.warns(UserWarning, match=r"--warmup-epochs 3 \(30 steps\) is not shorter"):
        build_scheduler(optimizer, cfg, total_steps=20, steps_per_epoch=10)


def test_bce_head_matches_two_class_softmax() -> None:
    z = torch.tensor([[0.3], [-2.0]])
    probs = class_logits(z).softmax(1)[:, 1]
    assert torch.allclose(probs, torch.sigmoid(z[:, 0]))
    y = torch.tensor([1, 0])
    expected = -(torch.log(torch.sigmoid(z[0, 0])) + torch.log(1 - torch.sigmoid(z[1, 0]))) / 2
    assert torch.allclose(make_loss("bce")(z, y), expected)


def test_metrics_on_a_known_example() -> None:
    logits = torch.tensor([[3.0, 1, 0], [0, 2, 1], [0, 1, 2], [2, 0, 1]])
    y = torch.tensor([0, 1, 1, 2])
    assert confusion_matrix(logits.argmax(1), y, 3).tolist() == [[1, 0, 0], [0, 1, 1], [1, 0, 0]]
    assert topk_accuracy(logits, y, 1) == 50.0 and topk_accuracy(logits, y, 2) == 100.0
    report = classification_report(logits, y, ["a", "b", "c"])
    assert report["per_class"] == {"a": 100.0, "b": 50.0, "c": 0.0} and "top5" not in report


def test_checkpoint_round_trip_and_atomic_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.safetensors"
    state = {"w": torch.arange(6.0).view(2, 3)}
    ckpt.save_checkpoint(path, state, {"model": "x", "classes": ["a"]})
    loaded, header = ckpt.load_checkpoint(path)
    assert torch.equal(loaded["w"], state["w"]) and header["classes"] == ["a"]
    plain = tmp_path / "plain"
    plain.touch()  # the mode any new file gets under this process's umask
    assert path.stat().st_mode == plain.stat().st_mode  # not mkstemp's 0600
    plain.unlink()

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "replace", broken)
    with pytest.raises(ResnetlabError, match=r"m\.safetensors: cannot write .*No space left"):
        ckpt.save_checkpoint(path, {"w": torch.zeros(1)}, {"model": "y"})
    assert torch.equal(load_file(path)["w"], state["w"])  # the earlier file survived
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left


def test_training_on_digits_learns(digits_run: TrainResult) -> None:
    losses = [h["train_loss"] for h in digits_run.history]
    assert losses[-1] < 0.5 * losses[0]
    assert digits_run.test_report is not None and digits_run.test_report["accuracy"] >= 90.0
    files = {p.name for p in digits_run.run_dir.iterdir()}
    assert {
        "config.yaml",
        "metrics.jsonl",
        "log.txt",
        "curves.png",
        "confusion.png",
        "time_to_accuracy.png",
        "confusion.json",
        "best.safetensors",
        "last.safetensors",
    } <= files


def test_checkpoint_header_describes_the_run(digits_run: TrainResult) -> None:
    header = ckpt.read_header(digits_run.run_dir / "best.safetensors")
    assert header["model"] == "resnet20" and header["classes"] == [str(i) for i in range(10)]
    assert header["input_shape"] == [1, 8, 8] and len(header["mean"]) == 1
    assert header["recipe"]["lr"] == 0.1 and "val_acc" in header["metrics"]


def test_config_yaml_says_what_auto_resolved_to(digits_run: TrainResult) -> None:
    text = (digits_run.run_dir / "config.yaml").read_text()
    config, ran_as = yaml.safe_load(text), text.splitlines()[0]
    assert (config["device"], config["precision"]) == ("auto", "auto")  # replays anywhere
    expected = resolve_precision("auto", torch.device("cpu"), "image").name  # as measured
    assert ran_as.startswith(f"# ran as: cpu {expected}, channels-last (auto resolves")


def test_seeded_runs_are_reproducible(tmp_path: Path) -> None:
    def weights(out: str) -> dict[str, torch.Tensor]:
        train(
            TrainConfig(
                model="resnet20",
                data="digits",
                epochs=1,
                limit_steps=3,
                precision="fp32",
                out=str(tmp_path / out),
                quiet=True,
                seed=3,
            )
        )
        return load_file(tmp_path / out / "last.safetensors")

    a, b = weights("a"), weights("b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tabular_model_learns_the_case_study(tmp_path: Path) -> None:
    result = train(
        TrainConfig(
            model="resnet_tabular",
            data="tabular-synthetic",
            epochs=10,
            batch_size=32,
            out=str(tmp_path / "t"),
            quiet=True,
        )
    )
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.test_report["accuracy"] >= 80.0


def test_each_epoch_logs_the_lr_it_trained_at(tmp_path: Path) -> None:
    """The step schedule divides at the start of epochs 3 and 4 of 4: each epoch's line holds
    the lr its last step trained at, not the one the optimiser holds for the next step."""
    cfg = TrainConfig(
        model="resnet_tabular", data="tabular-synthetic", epochs=4, schedule="step",
        warmup_epochs=0, lr=0.1, out=str(tmp_path / "t"), quiet=True,
    )  # fmt: skip
    result = train(cfg)
    assert [h["lr"] for h in result.history] == pytest.approx([0.1, 0.1, 0.01, 0.001])


def test_bce_loss_trains_a_single_logit_head(tmp_path: Path) -> None:
    result = train(
        TrainConfig(
            model="resnet_tabular",
            data="tabular-synthetic",
            epochs=3,
            loss="bce",
            out=str(tmp_path / "b"),
            quiet=True,
        )
    )
    assert ckpt.read_header(result.run_dir / "best.safetensors")["num_classes"] == 1
    assert result.test_report["accuracy"] > 60.0


@pytest.mark.parametrize(
    ("changes", "flag"),
    [({"epochs": 0}, "--epochs"), ({"lr": -0.1}, "--lr"), ({"batch_size": -1}, "--batch-size")],
)
def test_bad_config_names_the_flag(changes: dict, flag: str) -> None:
    with pytest.raises(ResnetlabError, match=flag):
        TrainConfig(**changes).validate()


def test_onecycle_rises_then_anneals() -> None:
    factors = [lr_factor("onecycle", s, total=100, warmup=0) for s in range(100)]
    peak = factors.index(max(factors))
    assert factors[0] == pytest.approx(1 / 25) and peak == 25 and max(factors) == pytest.approx(1)
    assert all(a <= b for a, b in pairwise(factors[: peak + 1]))
    assert all(a >= b for a, b in pairwise(factors[peak:]))
    assert factors[-1] < 1e-3
