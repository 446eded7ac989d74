"""Image folders end to end: cache, bad files, --strict, split folders, recipes, TTA."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import make_folder

from resnetlab.cli import main
from resnetlab.config.train import TrainConfig
from resnetlab.data import ImageOptions, load_data
from resnetlab.training.train import train


def add_bad_files(root: Path) -> list[Path]:
    bad = [
        root / "horizontal" / "empty.jpg",
        root / "vertical" / "truncated.png",
        root / "vertical" / "notes.jpg",
    ]
    bad[0].write_bytes(b"")
    good = (root / "vertical" / "000.png").read_bytes()
    bad[1].write_bytes(good[: len(good) // 2])
    bad[2].write_text("this is not an image")
    return bad


def test_cached_folder_reuses_and_rebuilds_its_cache(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "stripes", per_class=6)
    options = ImageOptions(cache_dir=str(tmp_path / "cache"))
    first = load_data(str(root), val_fraction=0.25, test_fraction=0.0, image_options=options)
    cached = list((tmp_path / "cache").iterdir())
    assert first.pipeline.startswith("cached") and len(cached) == 1
    again = load_data(str(root), val_fraction=0.25, test_fraction=0.0, image_options=options)
    assert list((tmp_path / "cache").iterdir()) == cached and again.mean == first.mean
    make_folder(tmp_path / "more", per_class=1)
    (tmp_path / "more" / "vertical" / "000.png").rename(root / "vertical" / "new.png")
    load_data(str(root), val_fraction=0.25, test_fraction=0.0, image_options=options)
    rebuilt = list((tmp_path / "cache").iterdir())
    assert len(rebuilt) == 1 and rebuilt != cached  # the stale cache was replaced


def test_bad_files_are_skipped_with_one_warning_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_folder(tmp_path / "stripes", per_class=6)
    bad = add_bad_files(root)
    code = main(
        [
            "train",
            "--data",
            str(root),
            "--epochs",
            "1",
            "--limit-steps",
            "1",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0
    for path in bad:
        assert sum(path.name in line for line in err.splitlines()) == 1, err
    assert "skipped 3 bad image files" in err, err


def test_strict_stops_before_training_listing_every_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_folder(tmp_path / "stripes", per_class=6)
    bad = add_bad_files(root)
    code = main(["train", "--data", str(root), "--strict", "--out", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert code == 2 and "Epoch" not in captured.out
    assert all(path.name in captured.err for path in bad)


def test_separate_val_and_test_folders(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", per_class=6)
    make_folder(tmp_path / "val", per_class=2, seed=1)
    make_folder(tmp_path / "test", per_class=3, seed=2)
    options = ImageOptions(
        cache_dir=str(tmp_path / "cache"),
        val_dir=str(tmp_path / "val"),
        test_dir=str(tmp_path / "test"),
    )
    bundle = load_data(str(tmp_path / "train"), image_options=options)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (12, 4, 6)


def test_recipe_sets_defaults_and_flags_override(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "stripes", per_class=6)
    assert (
        main(
            [
                "train",
                "--data",
                str(root),
                "--recipe",
                "paper",
                "--epochs",
                "1",
                "--limit-steps",
                "1",
                "--no-decay-norm-and-bias",
                "--out",
                str(tmp_path / "run"),
                "--quiet",
            ]
        )
        == 0
    )
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["weight_decay"] == 1e-4 and config["schedule"] == "step"
    assert config["crop_padding"] == 4 and config["flip"] is True
    assert config["epochs"] == 1 and config["limit_steps"] == 1  # flags beat the recipe
    assert config["decay_norm_and_bias"] is False  # and so does a recipe's on/off switch


def test_a_tiny_folder_run_learns_with_batch_augmentation(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "stripes", per_class=40)
    result = train(
        TrainConfig(
            model="resnet20",
            data=str(root),
            epochs=8,
            batch_size=16,
            lr=0.05,
            crop_padding=2,
            flip=True,
            tta="flip",
            val_fraction=0.2,
            test_fraction=0.2,
            cache_dir=str(tmp_path / "cache"),
            out=str(tmp_path / "run"),
            quiet=True,
        )
    )
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.test_report is not None and result.test_report["accuracy"] >= 90.0


def test_tta_on_tabular_data_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "train",
            "--model",
            "resnet_tabular",
            "--data",
            "tabular-synthetic",
            "--tta",
            "flip",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 2 and "--tta" in capsys.readouterr().err
