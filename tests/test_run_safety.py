"""Runs that survive: a non-finite loss, a full disk and a damaged state file each end a run
with one line and leave its last good state intact; gradient clipping and TensorBoard logs."""

from __future__ import annotations

import copy
import errno
import io
import itertools
import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import assert_one_line_error, run_cli
from safetensors.torch import save as safetensors_bytes
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import TensorDataset

import resnetlab.files
from resnetlab.checkpoints.checkpoint import load_checkpoint
from resnetlab.checkpoints.state import STATE_FILE, STATE_KEYS, load_state
from resnetlab.checkpoints.state_dicts import read_weights
from resnetlab.checkpoints.weights import load_pretrained
from resnetlab.cli import main
from resnetlab.errors import ResnetlabError
from resnetlab.files import writing
from resnetlab.models import create_model
from resnetlab.runtime.precision import resolve_precision
from resnetlab.training import run as run_module
from resnetlab.training.batches import make_loader
from resnetlab.training.run import train_one_epoch
from resnetlab.training.rundir import RunDir
from resnetlab.training.step import (
    EpochTally,
    LossFn,
    Normalizer,
    StepOptions,
    TrainStep,
    make_loss,
)

# resnet_tabular on tabular-synthetic's 800 training rows: 8 steps of 100 rows per epoch.
STEPS_PER_EPOCH = 8
TRAIN = [
    "train", "--model", "resnet_tabular", "--data", "tabular-synthetic", "--batch-size", "100",
    "--quiet",
]  # fmt: skip
NO_SPACE = "No space left on device"
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs here skip their figures (a second each, and tested elsewhere)."""
    for name in ("plot_curves", "plot_confusion"):
        monkeypatch.setattr(run_module, name, lambda *_: None)


def metrics(run: Path) -> list[dict[str, Any]]:
    """The run's metrics.jsonl, a record per epoch."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def all_finite(tensors: dict[str, torch.Tensor]) -> bool:
    """Whether every floating-point tensor of a state dict is finite."""
    return all(bool(t.isfinite().all()) for t in tensors.values() if t.is_floating_point())


def poison_loss(
    monkeypatch: pytest.MonkeyPatch, bad: Callable[[int], bool]
) -> list[tuple[int, float, int]]:
    """Make the runs' training loss NaN at the (1-based) steps where ``bad(step)``; return the
    list that records each finite training step's ``(step, loss, batch size)``."""
    finite: list[tuple[int, float, int]] = []
    real_make_loss = make_loss

    def make(
        kind: str, label_smoothing: float = 0.0, class_weight: torch.Tensor | None = None
    ) -> LossFn:
        loss_fn, step = real_make_loss(kind, label_smoothing, class_weight), 0

        def poisoned(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            nonlocal step
            loss = loss_fn(output, y)
            if not torch.is_grad_enabled():  # validation
                return loss
            step += 1
            if bad(step):
                return loss * float("nan")
            finite.append((step, float(loss.detach()), len(y)))
            return loss

        return poisoned

    monkeypatch.setattr(run_module, "make_loss", make)
    return finite


def train_steps(
    loss_fn: LossFn, options: StepOptions, momentum: float
) -> tuple[nn.Module, list[dict[str, torch.Tensor]], EpochTally]:
    """Four steps of SGD at lr 1 (no weight decay) of resnet_tabular on random rows: the model,
    its state dict before the first step and after each, and the epoch's tally."""
    torch.manual_seed(0)
    model = create_model("resnet_tabular", num_classes=2, in_chans=10)
    rows = TensorDataset(torch.randn(64, 10), torch.randint(0, 2, (64,)))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0, momentum=momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    tally = EpochTally(CPU)
    states = [copy.deepcopy(model.state_dict())]
    step = TrainStep(
        model, optimizer, loss_fn, resolve_precision("fp32", CPU, "tabular"),
        Normalizer([0.0] * 10, [1.0] * 10, (10,)),
        scaler=torch.amp.GradScaler("cpu", enabled=False), options=options,
    )  # fmt: skip
    train_one_epoch(
        step,
        make_loader(rows, 16),
        scheduler,
        epoch=1,
        tally=tally,
        after_step=lambda: states.append(copy.deepcopy(model.state_dict())),
    )
    return model, states, tally


# --- a non-finite loss, --on-nan stop ---------------------------------------------------------


def test_a_nan_loss_stops_the_run_naming_epoch_step_and_lr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    poison_loss(monkeypatch, lambda step: step >= 11)
    code, _, err = run_cli(capsys, *TRAIN, "--epochs", "3", "--save-every", "2", "--out", "run")
    run = Path("run")
    state = load_state(run / STATE_FILE)
    lr = state["optimizer"]["param_groups"][0]["lr"]  # the lr that step 11 trained at
    assert_one_line_error(
        code, err, "non-finite loss at epoch 2, step 11", f"(lr {lr:.4g})", "last good state is"
    )
    assert state["steps_done"] == 10 and all_finite(state["model"])
    assert [record["epoch"] for record in metrics(run)] == [1]
    for name in ("last", "best"):
        weights, header = load_checkpoint(run / f"{name}.safetensors")
        assert header["epoch"] == 1 and all_finite(weights)
    assert not list(run.glob(".*.tmp"))


def test_a_nan_loss_before_any_saved_state_says_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    poison_loss(monkeypatch, lambda step: step >= 3)
    code, _, err = run_cli(capsys, *TRAIN, "--epochs", "2", "--out", "run")
    assert_one_line_error(
        code, err, "non-finite loss at epoch 1, step 3", "no training state was saved"
    )
    assert not Path("run", STATE_FILE).exists() and not Path("run", "last.safetensors").exists()


def test_a_diverging_run_keeps_its_last_finite_state(capsys: pytest.CaptureFixture[str]) -> None:
    """At lr 1e6 an update overflows the weights while its own loss is still finite: the
    state of that step is refused, the one before it kept."""
    code, _, err = run_cli(
        capsys, *TRAIN, "--epochs", "2", "--lr", "1e6", "--save-every", "1", "--out", "run"
    )
    assert_one_line_error(code, err, "non-finite", "epoch 1, step", "(lr ", "last good state")
    bad_step = int(re.search(r"step (\d+)", err)[1])
    state = load_state(Path("run", STATE_FILE))
    assert state["steps_done"] == bad_step - 1 and all_finite(state["model"])


# --- --on-nan skip ----------------------------------------------------------------------------


def nan_at(steps: set[int]) -> LossFn:
    """Cross-entropy, NaN at the (1-based) calls in ``steps``."""
    loss_fn, calls = make_loss("ce"), 0

    def loss(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return loss_fn(output, y) * (float("nan") if calls in steps else 1.0)

    return loss


def test_a_skipped_step_changes_nothing() -> None:
    _, states, tally = train_steps(nan_at({2}), StepOptions(skip_nonfinite=True), momentum=0.9)
    before, skipped, after = states[1], states[2], states[3]
    assert all(torch.equal(before[key], skipped[key]) for key in before)  # BatchNorm stats too
    assert not all(torch.equal(skipped[key], after[key]) for key in before)
    assert tally.skipped == 1 and tally.summary()["skipped_steps"] == 1


def test_skipped_steps_are_counted_and_left_out_of_the_mean_loss(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    finite = poison_loss(monkeypatch, lambda step: step in (3, 5))
    code, _, _ = run_cli(capsys, *TRAIN, "--epochs", "2", "--on-nan", "skip", "--out", "run")
    assert code == 0
    first, second = metrics(Path("run"))
    assert first["skipped_steps"] == 2 and "skipped_steps" not in second
    counted = [(loss, rows) for step, loss, rows in finite if step <= STEPS_PER_EPOCH]
    mean = sum(loss * rows for loss, rows in counted) / sum(rows for _, rows in counted)
    assert first["train_loss"] == pytest.approx(mean, rel=1e-5)
    assert load_state(Path("run", STATE_FILE))["skipped_steps"] == 2


def test_more_skipped_steps_than_allowed_stop_the_run_at_once(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    poison_loss(monkeypatch, lambda step: step >= 3)
    code, _, err = run_cli(
        capsys, *TRAIN, "--epochs", "2", "--on-nan", "skip", "--max-nan-steps", "3", "--out", "r"
    )
    assert_one_line_error(
        code, err, "4 steps had a non-finite loss by epoch 1, step 6", "--max-nan-steps 3"
    )


# --- --clip-grad ------------------------------------------------------------------------------


def test_clipping_bounds_each_update_to_the_norm() -> None:
    clip = 1e-3
    model, states, tally = train_steps(make_loss("ce"), StepOptions(clip_grad=clip), momentum=0)
    names = [name for name, _ in model.named_parameters()]
    for before, after in itertools.pairwise(states):
        update = torch.cat([(after[name] - before[name]).flatten() for name in names])
        assert float(update.norm()) == pytest.approx(clip, rel=1e-4)  # lr 1: the clipped gradient
    summary = tally.gradient_summary()
    assert summary["clipped_frac"] == 1.0 and summary["grad_norm"] > 100 * clip


def test_clip_grad_logs_gradient_norms_and_slows_the_weights(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for out, flags in (("clipped", ["--clip-grad", "1e-3"]), ("plain", [])):
        assert run_cli(capsys, *TRAIN, "--epochs", "2", *flags, "--out", out)[0] == 0
    for record in metrics(Path("clipped")):
        assert record["clipped_frac"] == 1.0 and record["grad_norm"] > 1e-3
    assert all("grad_norm" not in r and "clipped_frac" not in r for r in metrics(Path("plain")))
    assert not Path("plain", "tensorboard").exists()
    torch.manual_seed(0)  # the run's initial weights, built as `train` builds them
    initial = create_model("resnet_tabular", num_classes=2, in_chans=10).state_dict()

    def moved(run: str) -> float:
        weights, _ = load_checkpoint(Path(run, "last.safetensors"))
        return sum(float((weights[k] - initial[k]).norm()) for k in initial if "weight" in k)

    assert moved("clipped") < moved("plain") / 10


# --- a full disk ------------------------------------------------------------------------------


def fail_renames(monkeypatch: pytest.MonkeyPatch, name: str, after: int) -> None:
    """Make every atomic write of the file ``name`` after the first ``after`` fail at its
    rename, as a full disk would."""
    real_replace, calls = os.replace, 0

    def replace(src: str | Path, dst: str | Path) -> None:
        nonlocal calls
        if Path(dst).name == name:
            calls += 1
            if calls > after:
                raise OSError(errno.ENOSPC, NO_SPACE)
        real_replace(src, dst)

    monkeypatch.setattr(resnetlab.files.os, "replace", replace)


# The epoch a run's file is from.
EPOCH_OF: dict[str, Callable[[Path], int]] = {
    STATE_FILE: lambda path: load_state(path)["epoch"],
    "last.safetensors": lambda path: load_checkpoint(path)[1]["epoch"],
}


@pytest.mark.parametrize(("name", "after"), [(STATE_FILE, 2), ("last.safetensors", 1)])
def test_a_full_disk_ends_the_run_with_one_line_and_the_previous_file_intact(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str, after: int
) -> None:
    """The ``after + 1``-th write of ``name`` fails: the run stops at once with one line, and
    the file is still the whole one of epoch ``after``, as is the state."""
    fail_renames(monkeypatch, name, after)
    code, _, err = run_cli(capsys, *TRAIN, "--epochs", "3", "--out", "run")
    run = Path("run")
    assert_one_line_error(code, err, f"{run / name}: cannot write", NO_SPACE, "is intact")
    assert EPOCH_OF[name](run / name) == after
    assert load_state(run / STATE_FILE)["steps_done"] == STEPS_PER_EPOCH * after
    assert not list(run.glob(".*.tmp"))
    message = err.strip().removeprefix("resnetlab: error: ")
    assert (run / "log.txt").read_text().splitlines()[-1] == f"error: {message}"


def test_a_torch_save_on_a_full_disk_is_one_line_naming_the_file(tmp_path: Path) -> None:
    """torch.save reports a failed write as a RuntimeError ("unexpected pos"), whose context
    is the OSError."""

    class FullDisk(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, NO_SPACE)

    path = tmp_path / STATE_FILE
    with (
        pytest.raises(ResnetlabError, match=rf"^{re.escape(str(path))}: cannot write .*{NO_SPACE}"),
        writing(path, "the training state"),
    ):
        torch.save({"weights": torch.zeros(1000)}, FullDisk())


APPENDED_FILES: dict[str, Callable[[RunDir], None]] = {
    "log.txt": lambda run: run.print("a line"),
    "metrics.jsonl": lambda run: run.append_metrics({"epoch": 1}),
}
REPLACED_FILES: dict[str, Callable[[RunDir], None]] = {
    "config.yaml": lambda run: run.write_config({"epoch": 2}),
    "confusion.json": lambda run: run.write_json("confusion.json", {"accuracy": 1.0}),
    "metrics.jsonl": lambda run: run.rewrite_metrics([{"epoch": 2}]),
}


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("name", APPENDED_FILES)
def test_the_run_folder_s_files_on_a_full_disk_are_one_line_errors(name: str) -> None:
    """/dev/full fails every write with ENOSPC; leaving the RunDir (which logs the error)
    must not fail again."""
    Path("run").mkdir()
    Path("run", name).symlink_to("/dev/full")
    expected = rf"^run/{re.escape(name)}: cannot write .*{NO_SPACE}"
    with pytest.raises(ResnetlabError, match=expected), RunDir("run") as run:
        APPENDED_FILES[name](run)


@pytest.mark.parametrize("name", REPLACED_FILES)
def test_a_run_folder_s_file_rewritten_on_a_full_disk_keeps_its_last_version(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config.yaml is rewritten during a run (a budget's re-fit), and the JSON reports at its
    end: a failed write is one line, and the file written before is intact."""
    Path("run").mkdir()
    Path("run", name).write_text("before")

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, NO_SPACE)

    monkeypatch.setattr(resnetlab.files.os, "replace", full)
    expected = rf"^run/{re.escape(name)}: cannot write .*{NO_SPACE}.*{re.escape(name)} is intact"
    with pytest.raises(ResnetlabError, match=expected), RunDir("run") as run:
        REPLACED_FILES[name](run)
    assert Path("run", name).read_text() == "before"
    assert sorted(p.name for p in Path("run").iterdir()) == sorted({name, "log.txt"})


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs in the test's folder (skipped where mounting one is not allowed)."""
    where = tmp_path / "disk"
    where.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)]
    try:
        mounted = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        pytest.skip("no mount command")
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here (root only): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def fill(folder: Path) -> None:
    """Fill the file system of ``folder`` to its last byte."""
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(1 << 16))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


@pytest.mark.parametrize(
    ("flags", "full_after", "failed", "steps"),
    [(["--save-every", "1"], 3, STATE_FILE, 3), ([], 1, "last.safetensors", STEPS_PER_EPOCH)],
    ids=["state", "checkpoint"],
)
def test_a_real_disk_that_fills_up_ends_the_run_with_one_line(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    small_disk: Path,
    flags: list[str],
    full_after: int,
    failed: str,
    steps: int,
) -> None:
    """The disk fills up after the run's ``full_after``-th state: the next file it writes
    (``failed``) cannot be written."""
    real_save, saves = run_module.save_training_state, 0

    def save_then_fill(t: run_module.Training, tally: EpochTally | None) -> None:
        nonlocal saves
        real_save(t, tally)
        saves += 1
        if saves == full_after:
            fill(small_disk)

    monkeypatch.setattr(run_module, "save_training_state", save_then_fill)
    run = small_disk / "run"
    code, _, err = run_cli(capsys, *TRAIN, "--epochs", "3", *flags, "--out", str(run))
    assert_one_line_error(code, err, f"{run / failed}: cannot write", NO_SPACE)
    assert load_state(run / STATE_FILE)["steps_done"] == steps
    assert not list(run.glob(".*.tmp"))


# --- a bad state file -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The state.pt of a finished one-epoch run."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main([*TRAIN, "--epochs", "1", "--out", str(run)]) == 0
    return (run / STATE_FILE).read_bytes()


def torch_bytes(value: object) -> bytes:
    """What ``torch.save(value)`` writes."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def flip(data: bytes, at: float) -> bytes:
    """``data`` with 64 bytes inverted at fraction ``at`` of its length (bit rot)."""
    start = int(len(data) * at)
    return data[:start] + bytes(b ^ 0xFF for b in data[start : start + 64]) + data[start + 64 :]


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "random bytes": lambda data: random.Random(0).randbytes(len(data)),
    "bit rot in the weights": lambda data: flip(data, 0.75),
    "bit rot in the pickle": lambda data: flip(data, 0.01),
    "a plain dict": lambda data: torch_bytes({"weights": torch.zeros(2)}),
    "a dict with our format but not our keys": lambda data: torch_bytes({"format": 1}),
    "a safetensors file": lambda data: safetensors_bytes({"weights": torch.zeros(2)}),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_resuming_from_a_bad_state_is_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], state_bytes: bytes, damage: str
) -> None:
    Path("run").mkdir()
    Path("run", STATE_FILE).write_bytes(DAMAGE[damage](state_bytes))
    code, _, err = run_cli(capsys, "train", "--resume", "run")
    assert_one_line_error(code, err, f"'run/{STATE_FILE}'")


def test_resuming_a_folder_without_a_state_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    Path("run").mkdir()
    code, _, err = run_cli(capsys, "train", "--resume", "run")
    assert_one_line_error(code, err, f"no training state at 'run/{STATE_FILE}'")


def test_a_saved_state_holds_exactly_the_keys_a_resume_requires(state_bytes: bytes) -> None:
    state = torch.load(io.BytesIO(state_bytes), weights_only=True)
    # and "averaged": the --ema weights (None without), and "ran_as": the device and precision,
    # optional so that older states resume
    assert set(state) == STATE_KEYS | {"format", "averaged", "ran_as"}


def test_a_state_file_given_as_a_checkpoint_or_as_weights(
    capsys: pytest.CaptureFixture[str], state_bytes: bytes
) -> None:
    """`eval` says what the file is; `train --weights` takes its model weights (it names no
    architecture: a tabular one must be given)."""
    path = Path(STATE_FILE)
    path.write_bytes(state_bytes)
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(path))
    assert_one_line_error(code, err, f"{path}: a torch.save file", "best.safetensors")
    code, _, err = run_cli(capsys, "train", "--data", "tabular-synthetic", "--weights", str(path))
    assert_one_line_error(code, err, "--model")
    code, out, _ = run_cli(capsys, *TRAIN, "--epochs", "1", "--weights", str(path), "--out", "r")
    assert code == 0 and "29 matched" in out
    model, _ = load_pretrained(
        read_weights(path), model_name="resnet_tabular", num_classes=2, in_chans=10
    )
    saved = torch.load(path, weights_only=True)["model"]
    assert all(torch.equal(value, saved[key]) for key, value in model.state_dict().items())


# --- TensorBoard ------------------------------------------------------------------------------

SCALARS = {  # TensorBoard tag -> metrics.jsonl key
    "loss/train": "train_loss",
    "accuracy/val": "val_acc",
    "lr": "lr",
    "speed/samples_per_s": "samples_per_s",
}


def assert_board_matches_metrics(run: Path, epochs: int) -> None:
    """One value per epoch for each scalar, at steps 1..epochs, equal to metrics.jsonl's."""
    board = EventAccumulator(str(run / "tensorboard"))
    board.Reload()
    records = metrics(run)
    assert len(records) == epochs
    for tag, key in SCALARS.items():
        events = board.Scalars(tag)
        assert [event.step for event in events] == list(range(1, epochs + 1)), tag
        expected = [record[key] for record in records]
        assert [event.value for event in events] == pytest.approx(expected, rel=1e-6), tag


def test_tensorboard_gets_each_epoch_s_scalars(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run_cli(capsys, *TRAIN, "--epochs", "3", "--tensorboard", "--out", "run")
    assert code == 0
    assert_board_matches_metrics(Path("run"), 3)


class Crash(Exception):
    """A crash of the run, simulated."""


def test_a_resumed_run_s_tensorboard_curves_do_not_double_back(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run crashes in epoch 3 after its scalars went to TensorBoard but before its state
    was saved; the resumed run writes epoch 3 again, and the first one's is purged."""
    real_end_epoch = run_module.end_epoch

    def crash_in_epoch_3(t: run_module.Training, record: dict[str, Any]) -> None:
        real_end_epoch(t, record)
        if record["epoch"] == 3:
            raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(run_module, "end_epoch", crash_in_epoch_3)
        with pytest.raises(Crash):
            main([*TRAIN, "--epochs", "3", "--tensorboard", "--out", "run"])
    assert load_state(Path("run", STATE_FILE))["epoch"] == 2
    code, _, _ = run_cli(capsys, "train", "--resume", "run")
    assert code == 0
    assert_board_matches_metrics(Path("run"), 3)


def test_tensorboard_without_its_package_is_one_line_before_the_run_starts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    code, _, err = run_cli(capsys, *TRAIN, "--epochs", "1", "--tensorboard", "--out", "run")
    assert_one_line_error(code, err, "--tensorboard needs the tensorboard package")
    assert not Path("run").exists()


def test_a_failed_write_that_is_no_os_error_is_not_hidden(tmp_path: Path) -> None:
    """Only an OSError (or torch's RuntimeError wrapping one) becomes a one-line error."""
    with pytest.raises(RuntimeError, match="a bug"), writing(tmp_path / "x", "x"):
        raise RuntimeError("a bug")
