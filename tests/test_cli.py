"""The command line: each command end to end, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error, run_cli
from PIL import Image
from sklearn.datasets import load_digits

from resnetlab.cli import main


def test_train_prints_the_article_format(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run_cli(
        capsys,
        "train",
        "--model",
        "resnet20",
        "--data",
        "digits",
        "--epochs",
        "2",
        "--limit-steps",
        "4",
        "--out",
        str(tmp_path / "r"),
        "--quiet",
    )
    assert code == 0
    assert "Epoch [1/2], Loss: " in out
    assert "Accuracy of the network on the test images: " in out
    assert (tmp_path / "r" / "log.txt").read_text().count("Epoch [") >= 1


def test_eval_reproduces_the_training_test_accuracy(
    capsys: pytest.CaptureFixture[str], run_dir: Path
) -> None:
    code, out, _ = run_cli(
        capsys, "eval", "--checkpoint", str(run_dir / "best.safetensors"), "--json"
    )
    assert code == 0
    report = json.loads(out)
    trained = json.loads((run_dir / "confusion.json").read_text())
    assert report["accuracy"] == pytest.approx(trained["accuracy"], abs=1e-9)
    assert set(report) >= {"accuracy", "top5", "per_class", "confusion"}
    assert sum(map(sum, report["confusion"])) == report["samples"]


def test_eval_text_output(capsys: pytest.CaptureFixture[str], run_dir: Path) -> None:
    code, out, _ = run_cli(
        capsys, "eval", "--checkpoint", str(run_dir / "best.safetensors"), "--split", "val"
    )
    assert code == 0 and "accuracy" in out and "confusion matrix" in out


def test_predict_images(capsys: pytest.CaptureFixture[str], run_dir: Path, tmp_path: Path) -> None:
    digits = load_digits()
    paths = []
    for i in range(3):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8), mode="L").save(path)
        paths.append(str(path))
    code, out, _ = run_cli(
        capsys,
        "predict",
        "--checkpoint",
        str(run_dir / "best.safetensors"),
        *paths,
        "--topk",
        "2",
        "--json",
    )
    assert code == 0
    results = json.loads(out)
    assert [r["input"] for r in results] == paths
    for r in results:
        assert len(r["top"]) == 2 and r["top"][0]["probability"] >= r["top"][1]["probability"]
    assert sum(r["top"][0]["class"] == str(digits.target[i]) for i, r in enumerate(results)) >= 2


def test_predict_csv_rows(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((200, 3))
    y = np.where(x[:, 0] + x[:, 1] > 1, "yes", "no")
    csv = tmp_path / "data.csv"
    rows = ["a,b,c,label"] + [
        f"{r[0]:.4f},{r[1]:.4f},{r[2]:.4f},{t}" for r, t in zip(x, y, strict=True)
    ]
    csv.write_text("\n".join(rows) + "\n")
    out_dir = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                "resnet_tabular",
                "--data",
                str(csv),
                "--target",
                "label",
                "--epochs",
                "3",
                "--out",
                str(out_dir),
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    query = tmp_path / "query.csv"
    query.write_text("c,b,a\n0.5,0.9,0.9\n0.5,0.1,0.1\n")
    code, out, _ = run_cli(
        capsys, "predict", "--checkpoint", str(out_dir / "best.safetensors"), str(query), "--json"
    )
    assert code == 0
    results = json.loads(out)
    assert [r["top"][0]["class"] for r in results] == ["yes", "no"]


def test_models_json_counts(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "models", "--family", "cifar", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["resnet20"]["params"] == 269_722
    assert rows["resnet20"]["macs"] == pytest.approx(40.6e6, rel=0.01)


def test_config_file_sets_flags_and_flags_override(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: resnet_tabular\ndata: tabular-synthetic\nepochs: 3\nlimit-steps: 2\n"
        f"out: {tmp_path / 'cfg'}\nquiet: true\n"
    )
    code, out, _ = run_cli(capsys, "train", "--config", str(config), "--epochs", "2")
    assert code == 0 and "Epoch [1/2]" in out
    assert "epochs: 2" in (tmp_path / "cfg" / "config.yaml").read_text()


def test_python_dash_m_works() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "resnetlab", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "train" in result.stdout


def test_the_package_namespace_is_its_api() -> None:
    """`dir(resnetlab)` is the API and the dunders, whatever subpackage has been imported;
    neither the package nor its listing imports torch."""
    import resnetlab
    import resnetlab.detection

    api = ["Predictor", "TrainConfig", "create_model", "list_models", "load", "train"]
    assert [name for name in dir(resnetlab) if not name.startswith("__")] == api
    assert resnetlab.detection.__name__ == "resnetlab.detection"  # still reached by import
    code = "import sys, resnetlab; dir(resnetlab); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["train", "--model", "resnet2O"], ["resnet2O", "resnet20"]),
        (["train", "--data", "no/such/dir"], ["no/such/dir"]),
        (["train", "--epochs", "0"], ["--epochs"]),
        (["train", "--lr", "-0.1"], ["--lr"]),
        (["train", "--warmup-epochs", "inf"], ["--warmup-epochs must be >= 0 and finite"]),
        (["train", "--momentum", "0", "--nesterov"], ["--nesterov needs a --momentum above 0"]),
        (["train", "--seed", "-1"], ["--seed must be in [0, 2**32) (got -1)"]),
        (["train", "--batch-size", "1"], ["--batch-size must be 0 (from the data) or at least 2"]),
        (["eval", "--checkpoint", "x.safetensors", "--batch-size", "0"], ["--batch-size must"]),
        (["eval", "--checkpoint", "missing.safetensors"], ["missing.safetensors"]),
        (["models", "--family", "nope"], ["--family"]),
        (["train", "--config", "missing.yaml"], ["--config", "missing.yaml"]),
    ],
)
def test_bad_input_gives_one_line_error(
    capsys: pytest.CaptureFixture[str], argv: list[str], needles: list[str]
) -> None:
    assert_one_line_error(*run_cli(capsys, *argv)[::2], *needles)


def test_invalid_model_option_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """BasicBlock raises ValueError for groups=2; the CLI names the model, no traceback."""
    code, _, err = run_cli(
        capsys,
        "train",
        "--model",
        "resnet18",
        "--model-option",
        "groups=2",
        "--data",
        "digits",
        "--out",
        str(tmp_path / "o"),
    )
    assert_one_line_error(code, err, "bad option for model 'resnet18'", "groups=1")


def test_empty_folder_is_an_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(
        capsys, "train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")
    )
    assert_one_line_error(code, err, "empty")


def test_csv_without_target_column(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    csv = tmp_path / "d.csv"
    csv.write_text("a,b\n1,2\n3,4\n")
    code, _, err = run_cli(
        capsys,
        "train",
        "--model",
        "resnet_tabular",
        "--data",
        str(csv),
        "--target",
        "label",
        "--out",
        str(tmp_path / "o"),
    )
    assert_one_line_error(code, err, "label")


def test_unwritable_out_folder_fails_before_training(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    code, out, err = run_cli(capsys, "train", "--data", "digits", "--out", str(blocker / "run"))
    assert_one_line_error(code, err, "--out", str(blocker / "run"))
    assert "Epoch" not in out


def test_checkpoint_of_another_architecture(
    capsys: pytest.CaptureFixture[str], run_dir: Path
) -> None:
    code, _, err = run_cli(
        capsys, "eval", "--checkpoint", str(run_dir / "best.safetensors"), "--model", "resnet56"
    )
    assert_one_line_error(code, err, "resnet20", "resnet56")
