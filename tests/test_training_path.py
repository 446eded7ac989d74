"""Regression tests for bugs in the training path: flips, eval splits, batch shapes, pipes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import make_folder
from safetensors.torch import load_file
from torch import nn

from resnetlab.checkpoints.checkpoint import read_header
from resnetlab.cli import main
from resnetlab.config.train import TrainConfig
from resnetlab.data.augment import BatchAugment, normalize_batch
from resnetlab.data.cache import relative_paths
from resnetlab.data.folder import scan_image_folder
from resnetlab.data.splits import unpack_ints
from resnetlab.inference.evaluate import EvalConfig, evaluate
from resnetlab.models import create_model, registry
from resnetlab.models.registry import ModelSpec
from resnetlab.training.train import train


def test_alternating_flips_get_each_samples_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[torch.Tensor, list[bool], int]] = []
    drawn: list[tuple[torch.Tensor, int]] = []  # the batch being augmented: indices, epoch
    draw, apply = BatchAugment.draw, BatchAugment.apply

    def spy_draw(self: BatchAugment, indices: torch.Tensor, epoch: int, shape: torch.Size) -> Any:
        drawn.append((indices, epoch))
        return draw(self, indices, epoch, shape)

    def spy_apply(self: BatchAugment, x: torch.Tensor, draws: Any) -> torch.Tensor:
        out = apply(self, x, draws)
        indices, epoch = drawn.pop()
        mirror = normalize_batch(x.flip(-1), self.mean, self.std)
        calls.append(
            (indices, [torch.equal(o, m) for o, m in zip(out, mirror, strict=True)], epoch)
        )
        return out

    monkeypatch.setattr(BatchAugment, "draw", spy_draw)
    monkeypatch.setattr(BatchAugment, "apply", spy_apply)
    cfg = TrainConfig(
        data="digits", epochs=2, batch_size=64, flip_alternate=True,
        out=str(tmp_path / "run"), quiet=True,
    )  # fmt: skip
    steps = train(cfg).history[0]["step"]
    assert len(calls) == 2 * steps
    epochs = [torch.cat([c[0] for c in calls if c[2] == epoch]) for epoch in (1, 2)]
    assert len(epochs[0]) == steps * 64 == len(epochs[0].unique())  # each sample once
    mirrored: dict[int, dict[int, bool]] = {1: {}, 2: {}}
    for indices, flips, epoch in calls:
        mirrored[epoch].update(zip(indices.tolist(), flips, strict=True))
    # each image alternates from its own start: about half of every epoch is mirrored
    assert 0.3 < np.mean(list(mirrored[1].values())) < 0.7
    both = mirrored[1].keys() & mirrored[2].keys()
    assert len(both) > 100 and all(mirrored[1][i] != mirrored[2][i] for i in both)


def test_training_drops_a_last_batch_of_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(161, 4))
    labels = (features[:, 0] > 0).astype(int)
    csv = tmp_path / "rows.csv"
    rows = [
        ",".join(f"{v:.4f}" for v in row) + f",{y}" for row, y in zip(features, labels, strict=True)
    ]
    csv.write_text("a,b,c,d,label\n" + "\n".join(rows) + "\n")
    result = train(
        TrainConfig(
            model="resnet_tabular",
            data=str(csv),
            target="label",
            epochs=2,
            batch_size=128,
            val_fraction=0.1,
            test_fraction=0.1,
            out=str(tmp_path / "run"),
            quiet=True,
        )
    )
    assert [r["step"] for r in result.history] == [1, 2]  # 129 training rows: one full batch
    assert result.test_report is not None and result.test_report["samples"] == 16


def test_a_batch_larger_than_the_training_split_shrinks_to_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r"
    argv = ["--data", "digits", "--epochs", "1", "--limit-steps", "1", "--quiet"]
    assert main(["train", *argv, "--batch-size", "4000", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "--batch-size 4000 is larger than the training split" in err and "1437 samples" in err
    assert json.loads((out / "metrics.jsonl").read_text())["step"] == 1


def test_a_layer_that_the_model_freezes_stays_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's model that freezes its stem: `train` leaves the stem's weights bit for bit (a
    plain run once unfroze every parameter, and weight decay moved them too)."""
    built: list[dict[str, torch.Tensor]] = []

    def frozen_stem(num_classes: int, in_chans: int) -> nn.Module:
        model = create_model("resnet20", num_classes=num_classes, in_chans=in_chans)
        model.conv1.requires_grad_(False)
        model.bn1.requires_grad_(False)
        built.append({k: v.clone() for k, v in model.state_dict().items()})
        return model

    spec = ModelSpec("frozen_stem", frozen_stem, "cifar", (1, 8, 8), 10)
    monkeypatch.setitem(registry._REGISTRY, spec.name, spec)
    cfg = TrainConfig(
        model=spec.name, data="digits", epochs=1, limit_steps=3, batch_size=32,
        weight_decay=0.1, decay_norm_and_bias=True, out=str(tmp_path / "run"), quiet=True,
    )  # fmt: skip
    trained = load_file(train(cfg).run_dir / "last.safetensors")
    for key in ("conv1.weight", "bn1.weight", "bn1.bias"):
        assert torch.equal(trained[key], built[0][key]), key
    assert not torch.equal(trained["layer1.0.conv1.weight"], built[0]["layer1.0.conv1.weight"])


@pytest.mark.parametrize("flag", ["--mixup", "--cutmix"])
def test_mixing_tabular_data_is_refused_before_the_run_folder(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["train", "--model", "resnet_tabular", "--data", "tabular-synthetic", flag, "0.2"]
    code = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--mixup/--cutmix" in err[0] and "tabular" in err[0]
    assert not out.exists()


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run on an image folder (val and test split off it); returns (folder, checkpoint)."""
    return _folder_run(tmp_path_factory.mktemp("folder-run"))


def _folder_run(where: Path) -> tuple[Path, Path]:
    root = make_folder(where / "stripes", per_class=20)
    out = where / "run"
    train(
        TrainConfig(
            data=str(root),
            epochs=1,
            batch_size=8,
            val_fraction=0.2,
            test_fraction=0.2,
            cache_dir=None,
            out=str(out),
            quiet=True,
        )
    )
    return root, out / "best.safetensors"


def test_checkpoint_records_the_split_of_the_file_list(folder_run: tuple[Path, Path]) -> None:
    _, checkpoint = folder_run
    data = read_header(checkpoint)["data"]
    assert data["split"]["files"] == 40 and len(data["split"]["sha256"]) == 64
    assert data["val_dir"] is None and data["test_dir"] is None
    report = evaluate(EvalConfig(checkpoint=str(checkpoint)))
    assert report["split"] == "test" and report["samples"] == 8


def test_eval_keeps_the_recorded_split_of_a_changed_folder(tmp_path: Path) -> None:
    root, checkpoint = _folder_run(tmp_path)
    assert evaluate(EvalConfig(checkpoint=str(checkpoint)))["samples"] == 8
    recorded = _recorded_test_files(checkpoint, root)
    held_out = sorted(recorded)[0]
    trained_on = next(p for p in ("vertical/000.png", "vertical/001.png") if p not in recorded)
    for name in (held_out, trained_on):
        (root / name).unlink()
    shutil.copy(root / "horizontal" / "002.png", root / "horizontal" / "new.png")
    with pytest.warns(UserWarning, match=r"1 files added, 2 removed"):
        after = evaluate(EvalConfig(checkpoint=str(checkpoint)))
    assert after["samples"] == 7  # the recorded test files that remain: never a new split


def _recorded_test_files(checkpoint: Path, root: Path) -> set[str]:
    """The files of the test split that ``checkpoint`` records, relative to ``root``."""
    _, samples = scan_image_folder(root)
    names = sorted(relative_paths(root, [path for path, _ in samples]))
    test = unpack_ints(read_header(checkpoint)["data"]["split"]["test"], np.int64)
    return {names[i] for i in test}


def test_a_run_with_a_test_folder_is_evaluated_on_that_folder(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", per_class=10)
    make_folder(tmp_path / "held-out", per_class=3, seed=1)
    train(
        TrainConfig(
            data=str(tmp_path / "train"),
            test_dir=str(tmp_path / "held-out"),
            epochs=1,
            batch_size=8,
            val_fraction=0.2,
            out=str(tmp_path / "run"),
            quiet=True,
        )
    )
    report = evaluate(EvalConfig(checkpoint=str(tmp_path / "run" / "best.safetensors")))
    assert report["split"] == "test" and report["samples"] == 6


def test_another_folder_is_evaluated_whole(
    folder_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, checkpoint = folder_run
    held_out = make_folder(tmp_path / "held-out", per_class=5, seed=3)
    report = evaluate(EvalConfig(checkpoint=str(checkpoint), data=str(held_out)))
    assert report["split"] == "all" and report["samples"] == 10
    code = main(["eval", "--checkpoint", str(checkpoint), "--data", str(held_out)])
    assert code == 0 and "on 10 all samples" in capsys.readouterr().out


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "resnetlab", "models", "--family", "tabular", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader goes away before a byte is written, as `| head -0`
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141 and err == ""
