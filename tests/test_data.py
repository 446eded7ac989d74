"""Data sources: built-in sets, CSV tables, image folders, splits and training statistics."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from torch.utils.data import Subset

from resnetlab.data import (
    BUILTIN_DATASETS,
    ImageOptions,
    load_data,
    make_case_study_data,
    scan_image_folder,
    split_indices,
)
from resnetlab.data.bundle import DataBundle
from resnetlab.data.stats import dataset_mean_std, tensor_mean_std
from resnetlab.data.tabular import read_feature_columns
from resnetlab.errors import ResnetlabError

DIGITS = [str(d) for d in range(10)]


def split_tensors(subset: Subset) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples and labels of one split of an in-memory bundle."""
    x, y = subset.dataset.tensors
    return x[subset.indices], y[subset.indices]


@pytest.mark.parametrize(
    ("name", "kind", "shape", "total", "classes"),
    [
        ("digits", "image", (1, 8, 8), 1797, DIGITS),
        ("mnist5k", "image", (1, 28, 28), 5000, DIGITS),
        ("tabular-synthetic", "tabular", (10,), 1000, ["0", "1"]),
    ],
)
def test_builtin_sizes_shapes_ranges_and_classes(
    name: str, kind: str, shape: tuple[int, ...], total: int, classes: list[str]
) -> None:
    bundle = load_data(name)
    assert name in BUILTIN_DATASETS
    assert (bundle.name, bundle.kind, bundle.input_shape, bundle.classes) == (
        name,
        kind,
        shape,
        classes,
    )
    assert bundle.val is not None and bundle.test is not None
    sizes = [len(bundle.train), len(bundle.val), len(bundle.test)]
    assert sum(sizes) == total
    assert sizes[1] == sizes[2] == round(0.1 * total)
    x, y = bundle.train[0]
    assert x.dtype == torch.float32 and tuple(x.shape) == shape and 0 <= int(y) < len(classes)
    everything = bundle.train.dataset.tensors[0]
    assert everything.min() == 0.0 and everything.max() == 1.0
    assert len(bundle.mean) == len(bundle.std) == shape[0]


def test_builtin_image_resized_and_repeated_per_item() -> None:
    plain = load_data("digits", seed=3)
    bundle = load_data("digits", seed=3, image_size=16, in_chans=3)
    assert bundle.input_shape == (3, 16, 16)
    x, y = bundle.train[5]
    assert tuple(x.shape) == (3, 16, 16) and torch.equal(x[0], x[2])
    assert int(y) == int(plain.train[5][1])
    assert x.min() >= 0 and x.max() <= 1
    assert bundle.mean[0] == bundle.mean[2]
    assert bundle.mean[0] == pytest.approx(plain.mean[0], abs=0.01)


def test_tabular_synthetic_is_fixed_balanced_and_not_linear() -> None:
    x, y = make_case_study_data()
    x2, y2 = make_case_study_data()
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert x.shape == (1000, 10) and x.dtype == np.float32 and set(y.tolist()) == {0, 1}
    assert np.allclose(x.min(axis=0), 0) and np.allclose(x.max(axis=0), 1)
    assert 0.35 <= y.mean() <= 0.65
    bundle = load_data("tabular-synthetic")
    assert bundle.feature_names == [f"x{i}" for i in range(10)]
    assert torch.equal(bundle.train.dataset.tensors[0], torch.from_numpy(x))
    x_train, y_train = split_tensors(bundle.train)
    x_test, y_test = split_tensors(bundle.test)
    linear = LogisticRegression().fit(x_train.numpy(), y_train.numpy())
    assert linear.score(x_test.numpy(), y_test.numpy()) < 0.85  # the rule has an interaction


# --- splits -------------------------------------------------------------------------------


def digit_labels() -> np.ndarray:
    bundle = load_data("digits")
    return bundle.train.dataset.tensors[1].numpy()


def test_splits_are_stratified_disjoint_and_complete() -> None:
    labels = digit_labels()
    split = split_indices(labels, val_fraction=0.15, test_fraction=0.2, seed=0)
    assert split.val is not None and split.test is not None
    joined = np.concatenate([split.train, split.val, split.test])
    assert len(joined) == len(labels) and set(joined.tolist()) == set(range(len(labels)))
    assert (len(split.val), len(split.test)) == (round(0.15 * 1797), round(0.2 * 1797))
    counts = np.bincount(labels)
    for indices, fraction in ((split.train, 0.65), (split.val, 0.15), (split.test, 0.2)):
        per_class = np.bincount(labels[indices], minlength=10)
        assert np.all(np.abs(per_class - fraction * counts) <= 1), per_class


def test_splits_are_seeded() -> None:
    labels = digit_labels()
    first = split_indices(labels, val_fraction=0.1, test_fraction=0.1, seed=7)
    again = split_indices(labels, val_fraction=0.1, test_fraction=0.1, seed=7)
    other = split_indices(labels, val_fraction=0.1, test_fraction=0.1, seed=8)
    for a, b, c in zip(
        (first.train, first.val, first.test),
        (again.train, again.val, again.test),
        (other.train, other.val, other.test),
        strict=True,
    ):
        assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_zero_fraction_gives_no_split() -> None:
    bundle = load_data("digits", val_fraction=0.0, test_fraction=0.25)
    assert bundle.val is None and bundle.test is not None
    assert (len(bundle.train), len(bundle.test)) == (1797 - 449, 449)


@pytest.mark.parametrize(
    ("val", "test", "message"),
    [
        (1.0, 0.1, "--val-fraction must be in [0, 1)"),
        (0.1, -0.1, "--test-fraction must be in [0, 1)"),
        (0.5, 0.5, "--val-fraction + --test-fraction must be below 1"),
    ],
)
def test_bad_fractions_name_the_flag(val: float, test: float, message: str) -> None:
    with pytest.raises(ResnetlabError, match=re.escape(message)):
        load_data("digits", val_fraction=val, test_fraction=test)


def test_class_too_small_to_stratify_splits_at_random_with_a_warning() -> None:
    labels = np.array([0] * 20 + [1] * 20 + [2])
    with pytest.warns(UserWarning, match="class 'rare' has only 1 sample"):
        split = split_indices(
            labels, val_fraction=0.2, test_fraction=0.2, seed=0, class_names=["a", "b", "rare"]
        )
    assert split.val is not None and split.test is not None
    assert (len(split.train), len(split.val), len(split.test)) == (25, 8, 8)


def test_too_few_samples_for_the_fractions() -> None:
    with pytest.raises(ResnetlabError, match="2 samples are too few"):
        split_indices([0, 1], val_fraction=0.3, test_fraction=0.3, seed=0)


# --- statistics ---------------------------------------------------------------------------


def test_mean_std_come_from_the_training_split_only() -> None:
    bundle = load_data("tabular-synthetic", seed=1)
    x_train, _ = split_tensors(bundle.train)
    direct = x_train.double().numpy()
    assert np.allclose(bundle.mean, direct.mean(axis=0), atol=1e-12)
    assert np.allclose(bundle.std, direct.std(axis=0), atol=1e-12)
    everything = bundle.train.dataset.tensors[0].double().numpy()
    assert not np.allclose(bundle.mean, everything.mean(axis=0), atol=1e-6)

    digits = load_data("digits", seed=1)
    pixels, _ = split_tensors(digits.train)
    assert digits.mean == pytest.approx([pixels.double().mean().item()], abs=1e-12)
    assert digits.std == pytest.approx([pixels.double().std(correction=0).item()], abs=1e-12)


def test_dataset_statistics_agree_with_tensor_statistics_and_floor_the_std() -> None:
    torch.manual_seed(0)
    x = torch.rand(50, 3, 4, 5)
    x[:, 2] = 0.5  # a constant channel
    dataset = torch.utils.data.TensorDataset(x, torch.zeros(50, dtype=torch.long))
    mean, std = tensor_mean_std(x)
    assert std[2] == 1e-6 and mean[2] == pytest.approx(0.5)
    streamed_mean, streamed_std = dataset_mean_std(dataset, max_items=None)
    assert streamed_mean == pytest.approx(mean, abs=1e-9)
    assert streamed_std == pytest.approx(std, abs=1e-7)
    sampled_mean, _ = dataset_mean_std(dataset, max_items=10, seed=4)
    chosen = np.sort(np.random.default_rng(4).choice(50, size=10, replace=False))
    assert sampled_mean == pytest.approx(tensor_mean_std(x[chosen])[0], abs=1e-9)


# --- CSV ----------------------------------------------------------------------------------


def write_csv(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_csv_with_string_target(tmp_path: Path) -> None:
    rows = ["a,b,label,c"] + [
        f"{i},{i * 0.5},{['dog', 'cat', 'ant'][i % 3]},{-i}" for i in range(30)
    ]
    source = write_csv(tmp_path / "pets.csv", "\n".join(rows) + "\n")
    bundle = load_data(source, target="label", val_fraction=0.2, test_fraction=0.0, seed=0)
    assert (bundle.name, bundle.kind, bundle.input_shape) == ("pets.csv", "tabular", (3,))
    assert bundle.classes == ["ant", "cat", "dog"]
    assert bundle.feature_names == ["a", "b", "c"]
    assert bundle.test is None and (len(bundle.train), len(bundle.val)) == (24, 6)
    _, y = bundle.train.dataset.tensors
    x_train, _ = split_tensors(bundle.train)
    mean, std = x_train.double().mean(0), x_train.double().std(0, unbiased=False)
    assert mean.tolist() == pytest.approx([0, 0, 0], abs=1e-6)  # standardised on the train rows
    assert std.tolist() == pytest.approx([1, 1, 1], abs=1e-6)
    assert bundle.classes[int(y[4])] == "cat"


def test_csv_integer_target_sorts_numerically(tmp_path: Path) -> None:
    rows = ["x,y"] + [f"{i},{[10, 2, 1][i % 3]}" for i in range(12)]
    source = write_csv(tmp_path / "n.csv", "\n".join(rows))
    bundle = load_data(source, target="y", val_fraction=0.0, test_fraction=0.0)
    assert bundle.classes == ["1", "2", "10"]
    assert bundle.train.dataset.tensors[1][:3].tolist() == [2, 1, 0]


@pytest.mark.parametrize(
    ("text", "target", "message"),
    [
        ("a,b,c\n1,2,3\n", "label", "--target: column 'label' not in data.csv (columns: a, b, c)"),
        ("a,b,c\n1,2,3\n", None, "--target is required for tables (columns: a, b, c)"),
        ("t\n1\n2\n", "t", "data.csv: no feature columns besides the target 't'"),
    ],
)
def test_csv_errors_name_the_column_or_file(
    tmp_path: Path, target: str | None, text: str, message: str
) -> None:
    write_csv(tmp_path / "data.csv", text)
    with pytest.raises(ResnetlabError, match=re.escape(message)):
        load_data("data.csv", target=target)


def test_read_feature_columns_picks_columns_by_name(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "rows.csv", "b,label,a\n1,x,2\n3,,4\n")
    assert read_feature_columns(source, ["a", "b"]).tolist() == [[2.0, 1.0], [4.0, 3.0]]
    with pytest.raises(ResnetlabError, match=re.escape("no column(s) c (the model takes a, c)")):
        read_feature_columns(source, ["a", "c"])


def test_csv_feature_count_must_match_in_chans(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "d.csv", "a,b,t\n" + "1,2,0\n3,4,1\n" * 10)
    assert load_data(source, target="t", in_chans=2).input_shape == (2,)
    with pytest.raises(ResnetlabError, match=r"--in-chans 5: .* has 2 feature columns"):
        load_data(source, target="t", in_chans=5)
    with pytest.raises(ResnetlabError, match="--image-size"):
        load_data(source, target="t", image_size=32)


def test_missing_source_and_misplaced_flags() -> None:
    missing = "--data: no such file or directory: 'nowhere/x.csv'"
    with pytest.raises(ResnetlabError, match=re.escape(missing)):
        load_data("nowhere/x.csv", target="t")
    with pytest.raises(ResnetlabError, match="--target applies to table files and image Parquet"):
        load_data("digits", target="label")
    with pytest.raises(ResnetlabError, match="--in-chans must be 1 or 3"):
        load_data("digits", in_chans=2)


# --- image folders ------------------------------------------------------------------------

COLOURS = {"cat": (255, 0, 0), "dog": (0, 0, 255), "ant": (0, 255, 0)}


def make_images(
    folder: Path,
    colour: tuple[int, int, int],
    count: int,
    mode: str = "RGB",
    size: tuple[int, int] = (6, 6),
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fill = colour if mode == "RGB" else colour[0]
    for i in range(count):
        Image.new(mode, size, fill).save(folder / f"img{i}.png")


def test_class_layout_loads_sorted_classes_and_splits(tmp_path: Path) -> None:
    for name, colour in COLOURS.items():
        make_images(tmp_path / "pets" / name, colour, 10)
    (tmp_path / "pets" / "cat" / "notes.txt").write_text("not an image")
    bundle = load_data(str(tmp_path / "pets"), val_fraction=0.2, test_fraction=0.2, seed=0)
    assert bundle.name == "pets" and bundle.kind == "image"
    assert bundle.classes == ["ant", "cat", "dog"] and bundle.input_shape == (3, 6, 6)
    assert bundle.val is not None and bundle.test is not None
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (18, 6, 6)
    for x, y in (bundle.train[i] for i in range(len(bundle.train))):
        assert x.dtype == torch.uint8 and x.shape == (3, 6, 6)  # decoded once, cached
        assert torch.equal(x[:, 0, 0], torch.tensor(COLOURS[bundle.classes[int(y)]]))
    assert bundle.mean == pytest.approx([1 / 3] * 3) and bundle.std == pytest.approx(
        [(2 / 9) ** 0.5] * 3
    )


def test_split_layout_with_greyscale_images(tmp_path: Path) -> None:
    root = tmp_path / "gray"
    for split, count in (("train", 8), ("test", 2)):
        make_images(root / split / "b", (200, 0, 0), count, mode="L", size=(10, 8))
        make_images(root / split / "a", (50, 0, 0), count, mode="L", size=(10, 8))
    bundle = load_data(str(root), val_fraction=0.25, test_fraction=0.5, seed=0)
    assert bundle.classes == ["a", "b"] and bundle.input_shape == (1, 8, 8)
    assert bundle.val is not None and bundle.test is not None
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (12, 4, 4)
    x, y = bundle.test[0]
    assert x.shape == (1, 8, 8) and x[0, 0, 0].item() == [50, 200][int(y)]
    resized = load_data(str(root), image_size=4, in_chans=3)
    assert resized.input_shape == (3, 4, 4) and resized.train[0][0].shape == (3, 4, 4)


def test_scan_image_folder_and_empty_class_warning(tmp_path: Path) -> None:
    make_images(tmp_path / "z", (1, 2, 3), 2)
    (tmp_path / "y").mkdir()
    with pytest.warns(UserWarning, match=f"class folder {tmp_path / 'y'} has no images"):
        classes, samples = scan_image_folder(tmp_path)
    assert classes == ["y", "z"]
    assert samples == [(tmp_path / "z" / "img0.png", 1), (tmp_path / "z" / "img1.png", 1)]


def test_hidden_files_and_folders_are_skipped(tmp_path: Path) -> None:
    make_images(tmp_path / "cat", COLOURS["cat"], 2)
    make_images(tmp_path / "cat" / ".thumbs", COLOURS["dog"], 2)
    (tmp_path / "cat" / "._img0.png").write_bytes(b"AppleDouble")
    _, samples = scan_image_folder(tmp_path)
    assert samples == [(tmp_path / "cat" / "img0.png", 0), (tmp_path / "cat" / "img1.png", 0)]


def test_an_unreadable_first_file_is_skipped_like_any_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, colour in COLOURS.items():
        make_images(tmp_path / name, colour, 3, size=(8, 6))
    (tmp_path / "ant" / "0bad.png").write_bytes(b"not an image")  # the first file
    bundle = load_data(str(tmp_path), val_fraction=0.0, test_fraction=0.0)
    assert bundle.input_shape == (3, 6, 6) and len(bundle.train) == 9
    assert "skipped" in capsys.readouterr().err
    with pytest.raises(ResnetlabError, match=r"1 bad image file\(s\) \(--strict\): .*0bad.png"):
        load_data(str(tmp_path), image_options=ImageOptions(strict=True))


def test_the_cached_and_streaming_pipelines_number_the_files_alike(tmp_path: Path) -> None:
    make_images(tmp_path / "a", COLOURS["cat"], 6)  # "a-b/..." sorts before "a/..." as text
    make_images(tmp_path / "a-b", COLOURS["dog"], 6)

    def load(**options: Any) -> DataBundle:
        image_options = ImageOptions(cache_dir=None, **options)
        return load_data(str(tmp_path), val_fraction=0.25, test_fraction=0.25, seed=0,
                         image_options=image_options)  # fmt: skip

    cached, streamed = load(), load(cache_mem_gb=0.0)
    assert cached.pipeline.startswith("cached") and streamed.pipeline.startswith("streaming")
    assert streamed.split_record == cached.split_record
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "the folder has changed"
        again = load(cache_mem_gb=0.0, split_record=cached.split_record)
    assert again.split_record == cached.split_record


def test_a_bad_held_out_file_streamed_is_replaced_from_its_own_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Streaming replaces an unreadable image by the next readable one: of the same split, so
    no training image is validated on and no held-out image trained on."""
    for name, colour in COLOURS.items():
        make_images(tmp_path / name, colour, 8)
    options = ImageOptions(cache_dir=None, cache_mem_gb=0.0)
    bundle = load_data(str(tmp_path), val_fraction=0.25, test_fraction=0.25, image_options=options)
    parts = [bundle.train, bundle.val, bundle.test]
    files = [set(part.files) for part in parts]
    assert not (files[0] & files[1] or files[0] & files[2] or files[1] & files[2])
    bad = bundle.val.files[-1]  # its replacement wraps round to the val split's first file
    Path(bad).write_bytes(b"damaged since")
    assert torch.equal(bundle.val[len(bundle.val) - 1][0], bundle.val[0][0])
    assert Path(bad).name in capsys.readouterr().err  # reported


def test_empty_folders_are_errors_naming_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ResnetlabError, match=f"{tmp_path}: no class folders"):
        load_data(str(tmp_path))
    (tmp_path / "cat").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ResnetlabError, match=f"{tmp_path}: no images .*png"):
            load_data(str(tmp_path))


def test_train_and_test_with_different_classes(tmp_path: Path) -> None:
    for split, names in (("train", ["ant", "cat"]), ("test", ["cat", "dog"])):
        for name in names:
            make_images(tmp_path / split / name, COLOURS[name], 2)
    message = "differ between train/ and test/ (only in train: ant; only in test: dog)"
    with pytest.raises(ResnetlabError, match=re.escape(message)):
        load_data(str(tmp_path))


def test_split_folders_without_train_are_an_error(tmp_path: Path) -> None:
    make_images(tmp_path / "val" / "cat", COLOURS["cat"], 2)
    with pytest.raises(ResnetlabError, match="has val/ but no train/ folder"):
        load_data(str(tmp_path))
