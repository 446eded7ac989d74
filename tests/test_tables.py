"""Tables as people have them: reading, the task, preprocessing kept in the checkpoint,
regression, early stopping and the scikit-learn baselines."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import assert_one_line_error, run_cli
from sklearn.preprocessing import QuantileTransformer
from test_resume import crash_after_state

from resnetlab.checkpoints.checkpoint import load_checkpoint
from resnetlab.cli import main
from resnetlab.data import TableOptions, load_data
from resnetlab.data.preprocess import quantile_normal
from resnetlab.data.splits import SplitIndices, record_split, unpack_ints
from resnetlab.data.tabular import infer_task, load_table, read_inputs, read_table, row_names
from resnetlab.errors import ResnetlabError
from resnetlab.inference.checkpoint_data import load_data_like
from resnetlab.inference.predictor import predict_inputs
from resnetlab.training.reports import epoch_line
from resnetlab.training.rundir import fingerprint
from resnetlab.training.step import make_loss


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Networks of a few thousand weights train fastest on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def people(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """A table as people have one: an ID column, a text category with empty cells, a numeric
    column with empty cells, and a text target that depends on both."""
    rng = np.random.default_rng(seed)
    size = rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue"], n).astype(object)
    label = np.where(size + 1.5 * (colour == "red") - 0.5 > 0, "yes", "no")
    size[::17] = np.nan
    colour[::13] = None
    return pd.DataFrame(
        {
            "id": [f"p{i:04d}" for i in range(n)],
            "size": size,
            "colour": colour,
            "weight": rng.normal(size=n),
            "label": label,
        }
    )


def linear(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """A regression target that is linear in three columns, with a little noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    frame["y"] = 3 * x[:, 0] - 2 * x[:, 1] + 0.5 * x[:, 2] + 10 + 0.1 * rng.normal(size=n)
    return frame


def write(frame: pd.DataFrame, path: Path, **options: object) -> str:
    frame.to_csv(path, index=False, **options)
    return str(path)


# --- reading and the task ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "task"),
    [
        ([0.5, 1.25, 3.0], "regression"),
        ([1, 2, 3, 1], "classification"),
        (list(range(21)), "regression"),
        (["a", "b"], "classification"),
        ([1.0, 2.0, np.nan, 1.0], "classification"),  # whole numbers read as floats (a gap)
    ],
)
def test_the_task_rule(values: list, task: str) -> None:
    assert infer_task(pd.Series(values), "t")[0] == task


def test_delimiters_are_sniffed_and_parquet_reads_the_same(tmp_path: Path) -> None:
    frame = people(40)
    comma = read_table(write(frame, tmp_path / "p.csv"))
    semicolon = read_table(write(frame, tmp_path / "p2.csv", sep=";"))
    tab = read_table(write(frame, tmp_path / "p.tsv", sep="\t"))
    frame.to_parquet(tmp_path / "p.parquet")
    parquet = read_table(tmp_path / "p.parquet")
    for other in (semicolon, tab, parquet):
        pd.testing.assert_frame_equal(other, comma, check_dtype=False)
    assert list(comma.columns) == ["id", "size", "colour", "weight", "label"]
    with pytest.raises(ResnetlabError, match="--target: column 'label' not in"):
        load_data(
            str(tmp_path / "p2.csv"), target="label", table_options=TableOptions(delimiter=",")
        )


def test_preprocessing_is_fitted_on_the_training_rows(tmp_path: Path) -> None:
    source = write(people(), tmp_path / "people.csv")
    with pytest.warns(UserWarning, match=r"column 'id' dropped: a distinct value on \d+ of \d+"):
        bundle = load_data(source, target="label", val_fraction=0.2, test_fraction=0.2)
    assert bundle.task == "classification" and bundle.classes == ["no", "yes"]
    assert bundle.feature_names == [
        "size", "size missing", "colour=blue", "colour=green", "colour=red", "colour=<missing>",
        "weight",
    ]  # fmt: skip
    assert bundle.mean == [0.0] * 7 and bundle.std == [1.0] * 7  # the table is scaled already
    x, _ = bundle.train.dataset.tensors
    train = torch.tensor(bundle.train.indices)
    size, missing = x[train, 0], x[train, 1]
    assert set(missing.unique().tolist()) == {0.0, 1.0}
    assert float(size.mean()) == pytest.approx(0, abs=1e-5)  # standardised after imputation
    assert float(size.std(unbiased=False)) == pytest.approx(1, abs=1e-4)
    column = bundle.table["columns"][0]
    sizes = people()["size"].to_numpy()[bundle.train.indices]
    assert column["median"] == pytest.approx(np.nanmedian(sizes))
    assert (x[:, 2:6].sum(1) == 1).all()  # one category each, missing included


def test_quantile_transform_matches_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    train, new = rng.exponential(size=500), rng.exponential(size=50) * 1.5
    ours = quantile_normal(new, np.quantile(train, np.linspace(0, 1, 500)))
    sklearn = QuantileTransformer(n_quantiles=500, output_distribution="normal").fit(train[:, None])
    assert np.allclose(ours, sklearn.transform(new[:, None])[:, 0], atol=1e-6)


def test_columns_that_cannot_help_are_dropped_with_a_warning(tmp_path: Path) -> None:
    frame = people(60).drop(columns=["id"])
    frame["constant"], frame["empty"] = 4.0, np.nan
    frame["code"] = [f"c{i % 30}" for i in range(60)]
    source = write(frame, tmp_path / "t.csv")
    with pytest.warns(UserWarning) as caught:
        bundle = load_data(source, target="label", table_options=TableOptions(max_categories=20))
    messages = " | ".join(str(w.message) for w in caught)
    assert "column 'constant' dropped: constant (4)" in messages
    assert "column 'empty' dropped: every value is missing" in messages
    assert re.search(
        r"column 'code' dropped: \d\d distinct values, more than --max-categorie", messages
    )
    assert not any(name.startswith(("constant", "empty", "code")) for name in bundle.feature_names)


def test_numbers_named_categorical_are_one_hot(tmp_path: Path) -> None:
    frame = pd.DataFrame({"grade": [1, 2, 3] * 10, "t": ["a", "b"] * 15})
    options = TableOptions(categorical=("grade",))
    bundle = load_data(write(frame, tmp_path / "g.csv"), target="t", table_options=options)
    assert bundle.feature_names == ["grade=1", "grade=2", "grade=3"]


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        ("a,t\n1,x\n2,x\n", {}, "--target: column 't' has only one class ('x')"),
        ("", {}, "data.csv: the file is empty"),
        ("a,t\n", {}, "data.csv: no data rows"),
        ("a,t\n1,0\n2,1,5\n", {}, "data.csv: Error tokenizing data"),
        ("a,b,t\n5,,0\n5,,1\n", {}, "no usable feature column ('a': constant (5); 'b': every"),
        ("a,t\n1,0\n2,\n3,1\n", {"strict": True}, "data.csv: line 3: no value for the target 't'"),
        ("a,t\n1,x\n2,y\n", {"task": "regression"}, "line 2: regression: target 't' must be a"),
        ("a,t\n1,2\n2,inf\n", {"task": "regression"}, "number (got inf)"),
        ("a,t\n1,\n2,\n", {}, "data.csv: the target 't' has no value in any row"),
        ("a,t\n1,0\n2,1\n", {"categorical": ("b",)}, "--categorical: no column(s) 'b'"),
        ("a,a,t\n1,2,0\n", {}, "data.csv: duplicate column name(s): a"),
    ],
)
def test_bad_tables_get_one_line_errors(
    tmp_path: Path, text: str, options: dict, message: str
) -> None:
    (tmp_path / "data.csv").write_text(text)
    with pytest.raises(ResnetlabError, match=re.escape(message)):
        load_data("data.csv", target="t", table_options=TableOptions(**options), val_fraction=0,
                  test_fraction=0)  # fmt: skip


def test_rows_without_a_target_are_dropped_with_their_count(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,t\n" + "1,0\n2,\n3,1\n" * 4)
    with pytest.warns(UserWarning, match=r"4 rows without a target 't' dropped \(the first: "):
        bundle = load_data("d.csv", target="t", val_fraction=0, test_fraction=0)
    assert len(bundle.train) == 8


def test_cli_errors_for_tables_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(people(40).drop(columns=["id"]), tmp_path / "p.csv")
    write(linear(100), tmp_path / "linear.csv")
    code, _, err = run_cli(capsys, "train", "--data", "p.csv", "--target", "label", "--loss", "mse")
    assert_one_line_error(code, err, "--loss mse does not fit classification")
    code, _, err = run_cli(capsys, "train", "--data", "linear.csv", "--target", "y",
                           "--class-weight", "balanced")  # fmt: skip
    assert_one_line_error(code, err, "--class-weight applies to classes; --data linear.csv is")
    code, _, err = run_cli(capsys, "train", "--data", "digits", "--baselines")
    assert_one_line_error(code, err, "--baselines applies to tables; --data digits is image data")


@pytest.mark.parametrize("name", ["tabular-synthetic", "digits"])
def test_built_in_data_counts_its_training_classes(name: str) -> None:
    """What --class-weight balanced needs (it crashed on the built-in table)."""
    bundle = load_data(name)
    labels = torch.tensor([int(y) for _, y in bundle.train])
    assert bundle.class_counts == torch.bincount(labels, minlength=len(bundle.classes)).tolist()


def test_class_weights_weigh_each_sample_by_its_class() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(6, 2), torch.tensor([0, 0, 0, 0, 1, 1])
    weight = torch.tensor([0.75, 1.5])  # balanced: 6 / (2 * 4) and 6 / (2 * 2)
    per_sample = torch.nn.functional.cross_entropy(logits, y, reduction="none") * weight[y]
    ce = make_loss("ce", class_weight=weight)(logits, y)
    assert float(ce) == pytest.approx(float(per_sample.mean()))  # additive over batches
    halves = [make_loss("ce", class_weight=weight)(logits[i : i + 3], y[i : i + 3]) for i in (0, 3)]
    assert float(sum(halves) / 2) == pytest.approx(float(ce))
    single = logits[:, 1:] - logits[:, :1]
    bce = make_loss("bce", class_weight=weight)(single, y)
    assert float(bce) == pytest.approx(float(per_sample.mean()), rel=1e-5)


# --- training, the checkpoint, eval and predict ------------------------------------------


def test_preprocessing_round_trips_through_the_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Predictions on a file with shuffled columns, no target and an unseen category are
    those of the original rows; `eval` rescores the test split exactly as the run did."""
    frame = people()
    source = write(frame, tmp_path / "people.csv")
    code, out, err = run_cli(
        capsys, "train", "--data", source, "--target", "label", "--epochs", "12",
        "--class-weight", "balanced",
        "--out", "run", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert "task: classification (target 'label' holds text; --task overrides)" in out
    assert "column 'id' dropped" in err
    accuracy = float(re.search(r"on the test images: ([\d.]+)%", out).group(1))
    assert accuracy >= 85
    header = load_checkpoint("run/best.safetensors")[1]
    assert json.loads(json.dumps(header["table"])) == header["table"]  # plain JSON
    shuffled = frame[["weight", "colour", "id", "size"]].copy()
    shuffled.loc[5, "colour"] = "purple"  # never seen in training
    write(shuffled, tmp_path / "new.csv")
    before = predict_inputs("run/best.safetensors", [source], topk=2)
    after = predict_inputs("run/best.safetensors", ["new.csv"], topk=2)
    same = [i for i in range(len(frame)) if i != 5]
    assert [after[i]["top"] for i in same] == [before[i]["top"] for i in same]
    row = read_inputs("new.csv", header["table"])[5]
    colours = [i for i, name in enumerate(header["feature_names"]) if name.startswith("colour=")]
    assert row[colours].tolist() == [0.0] * len(colours)
    code, out, _ = run_cli(capsys, "eval", "--checkpoint", "run/best.safetensors", "--json")
    assert code == 0 and json.loads(out)["accuracy"] == pytest.approx(accuracy, abs=0.05)
    write(frame.drop(columns=["size"]), tmp_path / "partial.csv")
    code, _, err = run_cli(capsys, "predict", "--checkpoint", "run/best.safetensors", "partial.csv")
    assert_one_line_error(code, err, "partial.csv: no column(s) 'size'")


def test_a_table_changed_after_training_keeps_its_split_row_by_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Held-out rows are recorded by their values: a table reordered, with rows added, still
    gives eval the run's test rows (not training rows), and a resume refuses it."""
    frame = linear(200)
    source = write(frame, tmp_path / "t.csv")
    argv = ["train", "--data", source, "--target", "y", "--epochs", "1", "--quiet"]
    assert run_cli(capsys, *argv, "--out", "run")[0] == 0
    header = load_checkpoint("run/best.safetensors")[1]

    def test_rows() -> list[tuple[float, ...]]:
        return sorted(tuple(x.tolist()) for x, _ in load_data_like(header, None).test)

    before = test_rows()
    write(pd.concat([frame.sample(frac=1, random_state=1), linear(5, seed=1)]), tmp_path / "t.csv")
    with pytest.warns(UserWarning, match=r"the table has changed .* \(5 rows added, 0 removed\)"):
        assert test_rows() == before
    code, _, err = run_cli(capsys, "train", "--resume", "run")
    assert_one_line_error(code, err, f"--data {source} changed since the run started (200 samples")


def test_duplicate_rows_of_a_changed_table_stay_in_one_split(tmp_path: Path) -> None:
    """Copies of a row share one id. The table as recorded keeps the recorded positions; once
    it is reordered and grown, every copy of a row recorded in validation is a validation row,
    every copy of one recorded in test (only) a test row, and no copy of either trains."""
    frame, path = linear(12), tmp_path / "t.csv"
    copies = [0, 0, 0, 1, 1, 2, 2, 3, *range(4, 12)]  # rows 0, 1 and 2 repeat
    write(frame.iloc[copies], path)
    # row 0: a copy in val, in test and in training; row 1: test and training; row 2: val and
    # training; rows 4 and 5: once, in val and in test
    val, test = np.array([0, 5, 8]), np.array([1, 3, 9])
    train = np.setdiff1d(np.arange(len(copies)), [*val, *test])
    recorded = record_split(row_names(read_table(path)), SplitIndices(train, val, test))

    def held_out() -> tuple[list[int], list[int], int]:
        options = TableOptions(split_record=recorded)
        bundle = load_table(path, "y", options, val_fraction=0, test_fraction=0, seed=0)
        split = bundle.split_record
        positions = [unpack_ints(split[key], np.int64).tolist() for key in ("val", "test")]
        return *positions, len(bundle.train)

    assert held_out() == ([0, 5, 8], [1, 3, 9], 10)
    changed = [*copies, 1, 5][::-1]  # reordered, with another copy of rows 1 and 5
    write(pd.concat([frame.iloc[changed], linear(2, seed=1)]), path)
    origin = [*changed, None, None]

    def positions(rows: set[int]) -> list[int]:
        return [i for i, row in enumerate(origin) if row in rows]

    with pytest.warns(UserWarning, match=r"the table has changed .* \(4 rows added, 0 removed\)"):
        assert held_out() == (
            positions({0, 2, 4}), positions({1, 5}), len(positions({3, *range(6, 12), None}))
        )


def test_regression_on_a_linear_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = linear()
    source = write(frame, tmp_path / "linear.csv")
    code, out, err = run_cli(
        capsys, "train", "--data", source, "--target", "y", "--epochs", "10", "--baselines",
        "--loss", "huber", "--out", "run", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert "task: regression (target 'y' holds fractional numbers" in out
    assert re.search(r"RMSE of the network on the test rows: [\d.]+\n", out)
    report = json.loads(Path("run/test_metrics.json").read_text())
    assert report["r2"] > 0.95
    baselines = json.loads(Path("run/baselines.json").read_text())
    assert baselines["baselines"]["ridge regression"]["r2"] > 0.99
    assert baselines["network"] == report
    assert Path("run/curves.png").is_file() and not Path("run/confusion.json").exists()
    code, out, _ = run_cli(capsys, "eval", "--checkpoint", "run/best.safetensors", "--json")
    assert code == 0 and json.loads(out)["rmse"] == pytest.approx(report["rmse"], rel=1e-6)
    write(frame.head(3).drop(columns=["y"]), tmp_path / "three.csv")
    values = [item["value"] for item in predict_inputs("run/best.safetensors", ["three.csv"])]
    assert np.allclose(values, frame["y"].head(3), atol=4 * report["rmse"])


def test_throughput_is_printed_only_for_epochs_long_enough_to_time() -> None:
    record = {"epoch": 3, "train_loss": 0.5, "val_acc": None, "lr": 0.001, "elapsed_s": 4.0}
    short = epoch_line({**record, "samples_per_s": 131656.0, "train_s": 0.004}, 10)
    long = epoch_line({**record, "samples_per_s": 2000.0, "train_s": 1.5}, 10)
    assert short == "Epoch [3/10], Loss: 0.5000, LR: 0.001, 0:00:04"
    assert long == "Epoch [3/10], Loss: 0.5000, LR: 0.001, 2000 samples/s, 0:00:04"


# --- early stopping and the best epoch ---------------------------------------------------

NOISE = ["--target", "t", "--epochs", "40", "--patience", "3", "--quiet"]


@pytest.fixture(scope="module")
def noise(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Labels that no feature predicts, where the validation loss soon rises: the table, and
    a run on it that stopped early (in the folder ``whole`` next to it)."""
    folder = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, 8)), columns=[f"x{i}" for i in range(8)])
    frame["t"] = rng.integers(0, 2, 200)
    source = write(frame, folder / "noise.csv")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--data", source, *NOISE, "--out", str(folder / "whole")]) == 0
    finally:
        torch.set_num_threads(threads)
    return Path(source)


def test_early_stopping_stops_at_the_epoch_of_lowest_validation_loss(noise: Path) -> None:
    run = noise.parent / "whole"
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [record["val_loss"] for record in history]
    best = int(np.argmin(losses)) + 1
    assert len(history) == best + 3 < 40
    log = (run / "log.txt").read_text()
    assert f"Best epoch: {best} (best.safetensors)" in log
    assert (
        f"Early stop: no better validation loss in 3 epochs (--patience 3); best epoch {best}"
        in log
    )
    assert load_checkpoint(run / "best.safetensors")[1]["epoch"] == best


def test_an_early_stopping_run_resumes_exactly(
    noise: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after an epoch without progress (its state saved): the resumed run counts on
    from the saved patience counter, and stops where the run that never stopped did."""
    whole = noise.parent / "whole"
    best = load_checkpoint(whole / "best.safetensors")[1]["epoch"]
    steps_per_epoch = json.loads((whole / "metrics.jsonl").read_text().splitlines()[0])["step"]
    crash_after_state(monkeypatch, at_step=(best + 1) * steps_per_epoch)
    with pytest.raises(MemoryError):
        main(["train", "--data", str(noise), *NOISE, "--out", str(tmp_path / "crashed")])
    monkeypatch.undo()
    assert main(["train", "--resume", str(tmp_path / "crashed")]) == 0
    assert fingerprint(tmp_path / "crashed") == fingerprint(whole)
