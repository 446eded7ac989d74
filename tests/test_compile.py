"""`--compile` (torch.compile of the training step, and of inference with freezing) and
`resnetlab bench`. Compiling is slow, so these tests use tiny networks; Inductor's cache
folder lies under the session's resnetlab cache (conftest.py), so a graph compiled once is
loaded by later tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, crash_after_state, run_cli
from PIL import Image
from torch import nn

from resnetlab.cli import main
from resnetlab.data.augment import BatchAugment
from resnetlab.models.cifar import CifarResNet
from resnetlab.runtime.compiled import compile_static, should_compile
from resnetlab.runtime.precision import resolve_precision
from resnetlab.training.batches import BatchOrder, TensorBatches
from resnetlab.training.rundir import fingerprint
from resnetlab.training.step import (
    InferenceModel,
    Normalizer,
    predict,
)

CPU = torch.device("cpu")
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.2, 0.2]


def tiny_net() -> nn.Module:
    """A CIFAR-style residual network with one block per stage (8 layers), seeded."""
    torch.manual_seed(0)
    return CifarResNet(1, num_classes=4, in_chans=3)


def images(n: int = 16, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    return x, torch.randint(0, 4, (n,), generator=generator)


def test_compiled_augmentation_matches_eager() -> None:
    augment = BatchAugment(MEAN, STD, crop_padding=2, flip=True, cutout=3)
    x, _ = images()
    draws = augment.draw(torch.arange(len(x)), 3, x.shape)
    compiled = compile_static(augment.apply)(x, draws)
    torch.testing.assert_close(compiled, augment.apply(x, draws), rtol=1e-6, atol=1e-6)


def test_compiled_inference_with_freezing_matches_eager_on_a_padded_last_batch(
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = tiny_net().eval()
    x, y = images(n=11)
    precision = resolve_precision("fp32", CPU, "image")
    normalize = Normalizer(MEAN, STD, (3, 12, 12))
    batches = TensorBatches(x, y, BatchOrder(len(x), 4))  # 4 + 4 + 3: the last one is padded
    eager, targets, _ = predict(model, batches, precision, normalize)
    compiled, _, _ = predict(InferenceModel(model, compile=True), batches, precision, normalize)
    assert compiled.shape == eager.shape == (11, 4) and torch.equal(targets, y)
    scale = eager.abs().max()
    assert (compiled - eager).abs().max() <= 1e-4 * scale  # BatchNorm folded into the convs
    assert torch.equal(compiled.argmax(1), eager.argmax(1))
    assert "compiled the model for inference in" in capsys.readouterr().out


def test_predict_compiled_gives_the_eager_answers(
    capsys: pytest.CaptureFixture[str], run_dir: Path
) -> None:
    rng = np.random.default_rng(0)
    for i in range(3):  # two batches of predictions would be padded alike
        Image.fromarray(rng.integers(0, 16, (8, 8), dtype=np.uint8)).save(f"{i}.png")
    files = ["0.png", "1.png", "2.png"]
    args = ("predict", "--checkpoint", str(run_dir / "best.safetensors"), *files, "--json")
    eager = json.loads(run_cli(capsys, *args)[1])
    code, out, _ = run_cli(capsys, *args, "--compile", "on")
    compiled = json.loads(out.splitlines()[-1])
    assert code == 0 and "compiled the model for inference in" in out
    for first, second in zip(eager, compiled, strict=True):
        assert [t["class"] for t in first["top"]] == [t["class"] for t in second["top"]]
        assert [t["probability"] for t in first["top"]] == pytest.approx(
            [t["probability"] for t in second["top"]], abs=1e-4
        )


def test_auto_compiles_only_long_image_training_on_a_gpu() -> None:
    gpu = torch.device("cuda")
    assert should_compile("auto", "image", gpu, steps=5000)
    assert not should_compile("auto", "image", gpu, steps=100)  # compiling would not pay back
    assert not should_compile("auto", "tabular", gpu, steps=10**6)  # tiny nets stay eager
    assert not should_compile("auto", "image", CPU, steps=10**6)  # measured: no gain on CPUs
    assert not should_compile("auto", "image", gpu)  # inference
    assert should_compile("on", "tabular", CPU, steps=1) and not should_compile("off", "image", gpu)


TABLE = [
    "train", "--data", "tabular-synthetic", "--model", "resnet_tabular", "--epochs", "2",
    "--batch-size", "64", "--save-every", "5", "--quiet",
]  # fmt: skip


def test_a_compiled_run_trains_as_eager_and_resumes_exactly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run_cli(capsys, *TABLE, "--compile", "on", "--out", "whole")
    assert code == 0 and out.count("compiled the training step in") == 1
    assert run_cli(capsys, *TABLE, "--out", "eager")[0] == 0
    compiled, eager = (
        [
            json.loads(line)["train_loss"]
            for line in Path(run, "metrics.jsonl").read_text().splitlines()
        ]
        for run in ("whole", "eager")
    )
    assert compiled == pytest.approx(eager, rel=1e-3) and compiled[1] < compiled[0]
    with pytest.MonkeyPatch.context() as patch, pytest.raises(MemoryError):
        crash_after_state(patch, at_step=15)  # 12 steps an epoch: in the middle of epoch 2
        main([*TABLE, "--compile", "on", "--out", "crashed"])
    code, out, err = run_cli(capsys, "train", "--resume", "crashed")
    assert code == 0 and "compiled the training step in" in out, err
    assert fingerprint(Path("crashed")) == fingerprint(Path("whole"))


def test_bench_runs_every_row_and_writes_them_to_json(capsys: pytest.CaptureFixture[str]) -> None:
    user_loop = Path(__file__).resolve().parents[1] / "benchmarks" / "user_loop.py"
    args = ("--batch", "4", "--input-size", "8", "--steps", "1", "--rounds", "1")
    code, out, err = run_cli(
        capsys, "bench", "--model", "resnet20", "--mode", "infer", *args,
        "--user-loop", str(user_loop), "--json", "bench.json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(Path("bench.json").read_text())
    rows = {row["row"]: row for row in result["rows"]}
    names = ["seed-style", "user", "resnetlab", "resnetlab --compile", "resnetlab int8"]
    assert list(rows) == names
    assert rows["seed-style"]["vs_seed"] == pytest.approx(1.0)
    assert rows["user"]["vs_user"] == pytest.approx(1.0)
    assert all(row["images_per_s"] > 0 and row["peak_share"] > 0 for row in rows.values())
    assert list(result["matmul_tflops"]) == ["fp32", "bf16", "fp16"]
    assert result["matmul_tflops"]["fp32"] > 0 and result["input_shape"] == [3, 8, 8]
    assert result["macs_per_image"] > 0 and "resnetlab --compile" in out and "TFLOP/s" in out


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("--batch", "0"), ("--batch",)),
        (("--model", "resnet_tabular"), ("--model resnet_tabular", "image models")),
        (("--user-loop", "missing.py"), ("--user-loop missing.py", "no such file")),
        (("--json", "no/such/folder/b.json"), ("--json", "does not exist")),
    ],
)
def test_bench_refuses_bad_flags_in_one_line(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    code, _, err = run_cli(capsys, "bench", "--no-compile", "--steps", "1", *args)
    assert_one_line_error(code, err, *needles)
