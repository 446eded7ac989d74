"""Export to ONNX and pt2 with checked parity, int8 through onnxruntime, and ``resnetlab.load``."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

import resnetlab
from resnetlab.checkpoints.checkpoint import save_checkpoint
from resnetlab.cli import main
from resnetlab.errors import ResnetlabError
from resnetlab.inference import export as export_command
from resnetlab.inference.export import ExportConfig, export, quantize
from resnetlab.inference.exported import OnnxNetwork, load_network
from resnetlab.inference.int8 import int8_network
from resnetlab.models import create_model
from resnetlab.training.run import TrainResult
from tests.helpers import assert_one_line_error, run_cli


def random_checkpoint(folder: Path, name: str, input_shape: list[int]) -> tuple[Path, dict]:
    """A checkpoint of ``name`` with random weights and statistics, whose data is absent (so
    the parity check runs on random inputs)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    for module in model.modules():  # BatchNorm statistics of a trained network, roughly
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    header = {
        "model": name,
        "model_options": {},
        "num_classes": 10,
        "in_chans": input_shape[0],
        "classes": [f"c{i}" for i in range(10)],
        "input_shape": input_shape,
        "data_kind": "image",
        "mean": [0.5] * input_shape[0],
        "std": [0.25] * input_shape[0],
        "feature_names": [],
        "data": {"source": str(folder / "gone"), "target": None, "val_fraction": 0.1,
                 "test_fraction": 0.1, "seed": 0},
    }  # fmt: skip
    path = folder / f"{name}.safetensors"
    save_checkpoint(path, model.state_dict(), header)
    return path, header


def test_an_export_that_fails_its_check_leaves_the_earlier_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint, _ = random_checkpoint(tmp_path, "resnet20", [3, 16, 16])
    cfg = ExportConfig(str(checkpoint), format="onnx", parity_samples=2)
    export(cfg)
    good = {p.name: p.read_bytes() for p in tmp_path.glob("resnet20.onnx*")}
    measure = export_command.measure_parity
    monkeypatch.setattr(
        export_command,
        "measure_parity",
        lambda *args, **kwargs: dataclasses.replace(measure(*args, **kwargs), top1_agreement=50.0),
    )
    with pytest.raises(ResnetlabError, match=r"resnet20\.onnx: not written, .* is intact$"):
        export(cfg)
    assert {p.name: p.read_bytes() for p in tmp_path.glob("resnet20.onnx*")} == good
    assert not list(tmp_path.glob(".*"))  # no file left under check


@pytest.mark.parametrize("name", ["resnet20", "resnet50"])
def test_onnx_and_pt2_match_pytorch_at_batch_1_and_7(name: str, tmp_path: Path) -> None:
    checkpoint, header = random_checkpoint(tmp_path, name, [3, 32, 32])
    model = resnetlab.load(checkpoint).model
    x = torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    for fmt in ("onnx", "pt2"):
        result = export(ExportConfig(str(checkpoint), format=fmt, parity_samples=7))
        file = Path(result["file"])
        assert file == tmp_path / f"{name}.{fmt}"
        record = json.loads((tmp_path / f"{name}.{fmt}.parity.json").read_text())
        assert record["passed"] and record["batch_sizes"] == [1, 7]
        assert record["inputs"] == "7 random inputs" and record["top1_agreement"] == 100.0
        network, read_header = load_network(file)
        assert read_header["classes"] == header["classes"]
        with torch.no_grad():
            one, seven = network(x[:1]), network(x)
        tolerance = 1e-4 * float(expected.abs().max())
        torch.testing.assert_close(one, expected[:1], rtol=0, atol=tolerance)
        torch.testing.assert_close(seven, expected, rtol=0, atol=tolerance)
    metadata = {p.key: p.value for p in onnx.load(tmp_path / f"{name}.onnx").metadata_props}
    assert json.loads(metadata["classes"]) == header["classes"]
    assert json.loads(metadata["mean"]) == [0.5] * 3 and json.loads(metadata["std"]) == [0.25] * 3
    assert json.loads(metadata["input_shape"]) == [3, 32, 32]
    assert metadata["task"] == '"classification"'
    assert json.loads(metadata["resnetlab"])["exported"]["format"] == "onnx"


def test_a_table_exported_to_onnx_predicts_and_scores_as_its_checkpoint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((300, 4))
    y = np.where(x[:, 0] + x[:, 1] > 1, "yes", "no")
    table = tmp_path / "data.csv"
    lines = [f"{a:.4f},{b:.4f},{c:.4f},{d:.4f},{t}" for (a, b, c, d), t in zip(x, y, strict=True)]
    table.write_text("a,b,c,d,label\n" + "\n".join(lines) + "\n")
    run = tmp_path / "run"
    argv = ["train", "--model", "resnet_tabular", "--data", str(table), "--target", "label"]
    assert main([*argv, "--epochs", "3", "--out", str(run), "--quiet"]) == 0
    checkpoint = run / "best.safetensors"
    code, out, _ = run_cli(capsys, "export", "--checkpoint", str(checkpoint))
    assert code == 0 and "passed" in out, out
    query = tmp_path / "query.csv"
    query.write_text("d,c,b,a\n0.1,0.5,0.9,0.9\n0.7,0.5,0.1,0.1\n0.2,0.2,0.5,0.45\n")
    answers = {}
    for file in (checkpoint, run / "best.onnx"):
        code, out, _ = run_cli(capsys, "predict", "--checkpoint", str(file), str(query), "--json")
        assert code == 0
        answers[file.suffix] = json.loads(out)
    ours, theirs = answers[".safetensors"], answers[".onnx"]
    assert [r["input"] for r in theirs] == [f"{query}:{i}" for i in (2, 3, 4)]
    for a, b in zip(ours, theirs, strict=True):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        for p, q in zip(a["top"], b["top"], strict=True):
            assert p["probability"] == pytest.approx(q["probability"], abs=1e-5)
    scores = {}
    for file in (checkpoint, run / "best.onnx"):
        code, out, _ = run_cli(capsys, "eval", "--checkpoint", str(file), "--json")
        assert code == 0
        scores[file.suffix] = json.loads(out)
    assert scores[".onnx"]["confusion"] == scores[".safetensors"]["confusion"]
    # The bench's int8 hook, on this network: any batch size, logits per class.
    network = int8_network(resnetlab.load(checkpoint).model, (4,))
    assert network(torch.randn(1, 4)).shape == (1, 2) and network(torch.randn(5, 4)).shape == (5, 2)


def digit_images(folder: Path, count: int) -> tuple[list[Path], np.ndarray]:
    """The first ``count`` digits of scikit-learn's set as PNG files, and their labels."""
    digits = load_digits()
    paths = []
    for i in range(count):
        path = folder / f"digit{i}.png"
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8), mode="L").save(path)
        paths.append(path)
    return paths, digits.target[:count]


def test_load_answers_alike_for_a_file_an_image_an_array_and_a_tensor(
    digits_run: TrainResult, tmp_path: Path
) -> None:
    checkpoint = digits_run.run_dir / "best.safetensors"
    predictor = resnetlab.load(checkpoint)
    assert predictor.classes == [str(i) for i in range(10)] and predictor.task == "classification"
    assert predictor.input_shape == (1, 8, 8) and predictor.model is not None
    paths, labels = digit_images(tmp_path, 4)
    pixels = np.array(Image.open(paths[0]))
    inputs = [
        str(paths[0]),
        Image.open(paths[0]),
        pixels,
        torch.from_numpy(pixels)[None],  # uint8 (C, H, W)
        torch.from_numpy(pixels)[None].float() / 255,
    ]
    answers = predictor.predict(inputs, topk=3)
    assert [a["input"] for a in answers] == [str(paths[0]), "1", "2", "3", "4"]
    first = answers[0]["top"]
    for answer in answers[1:]:
        assert [t["class"] for t in answer["top"]] == [t["class"] for t in first]
        for p, q in zip(answer["top"], first, strict=True):
            assert p["probability"] == pytest.approx(q["probability"], abs=1e-6)
    top1 = [a["top"][0]["class"] for a in predictor.predict(paths, topk=1)]
    assert sum(c == str(t) for c, t in zip(top1, labels, strict=True)) >= 3
    # The same weights as a bare state dict: classes and normalisation given, or class indices.
    bare = tmp_path / "weights.pt"
    torch.save(predictor.model.state_dict(), bare)
    header = predictor.header
    given = resnetlab.load(
        bare, model="resnet20", mean=header["mean"], std=header["std"],
        classes=header["classes"], input_size=8,
    )  # fmt: skip
    again = given.predict(str(paths[0]), topk=3)[0]["top"]
    assert [t["class"] for t in again] == [t["class"] for t in first]
    with pytest.warns(UserWarning, match="class indices"):
        indexed = resnetlab.load(bare, mean=header["mean"], std=header["std"], input_size=8)
    assert indexed.predict(str(paths[0]))[0]["top"][0]["class"] == int(first[0]["class"])


def test_int8_agrees_with_the_float_network_on_digits(
    digits_run: TrainResult, tmp_path: Path
) -> None:
    checkpoint = digits_run.run_dir / "best.safetensors"
    out = tmp_path / "digits.int8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # VNNI/AMX absent: the speed warning
        result = quantize(
            ExportConfig(str(checkpoint), out=str(out), calibration_batches=4, parity_samples=180)
        )
    parity = result["parity"]
    assert parity["int8"] and parity["passed"] and parity["top1_agreement"] >= 95.0
    assert parity["inputs"] == "180 test samples of digits"
    assert result["split"] == "test" and result["samples"] == 180
    assert result["float_accuracy"] == pytest.approx(digits_run.test_report["accuracy"])
    assert result["drop"] == pytest.approx(result["float_accuracy"] - result["int8_accuracy"])
    assert abs(result["drop"]) <= 3.0
    int8 = resnetlab.load(out)
    assert int8.model is None and isinstance(int8.network, OnnxNetwork)
    assert out.stat().st_size < 0.5 * (checkpoint.stat().st_size)  # int8 weights


def test_bad_export_requests_end_in_one_line(
    capsys: pytest.CaptureFixture[str], digits_run: TrainResult, tmp_path: Path
) -> None:
    checkpoint = str(digits_run.run_dir / "best.safetensors")
    cases = [
        (["export", "--checkpoint", checkpoint, "--format", "pt2", "--int8"], "--int8"),
        (["export", "--checkpoint", checkpoint, "--out", "x.pt2"], "--out x.pt2"),
        (["export", "--checkpoint", checkpoint, "--parity-samples", "0"], "--parity-samples"),
        (["export", "--checkpoint", str(tmp_path / "none.safetensors")], "none.safetensors"),
        (["quantize", "--checkpoint", checkpoint, "--out", "q.onnx", "--data", "nope/"], "nope"),
    ]
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"not an onnx file")
    cases.append((["eval", "--checkpoint", str(damaged)], "damaged.onnx"))
    cases.append((["predict", "--checkpoint", str(damaged), checkpoint], "damaged.onnx"))
    for argv, needle in cases:
        code, _, err = run_cli(capsys, *argv)
        assert_one_line_error(code, err, needle)


def test_quantize_refuses_a_regression_network_before_writing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    x = np.random.default_rng(0).random((120, 3))
    table = tmp_path / "data.csv"
    lines = [f"{a:.4f},{b:.4f},{c:.4f},{a + 2 * b - c:.4f}" for a, b, c in x]
    table.write_text("a,b,c,y\n" + "\n".join(lines) + "\n")
    run = tmp_path / "run"
    argv = ["train", "--model", "resnet_tabular", "--data", str(table), "--target", "y"]
    assert main([*argv, "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    checkpoint, out = str(run / "best.safetensors"), tmp_path / "q.onnx"
    code, _, err = run_cli(capsys, "quantize", "--checkpoint", checkpoint, "--out", str(out))
    assert_one_line_error(code, err, f"--checkpoint {checkpoint}: quantize takes classifiers")
    assert list(tmp_path.glob("q.onnx*")) == []
