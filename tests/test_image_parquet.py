"""Image Parquet: the Hugging Face layout, string labels, plain bytes, folders of files, `pack
--format parquet`, bad cells, the rows kept by key, streamed row groups; tables stay tables."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, make_folder, run_cli
from PIL import Image

from resnetlab.data import ImageOptions, data_kind, load_data
from resnetlab.data.decode import decode_image
from resnetlab.training.batches import BatchOrder, make_loader

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

STREAM = ImageOptions(cache_mem_gb=0.0)
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
TRAIN = ["train", "--epochs", "1", "--batch-size", "8", "--quiet"]


def png(i: int, size: tuple[int, int] = (10, 14)) -> bytes:
    """A small PNG whose colour tells ``i`` apart."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (10 * i % 256, 3 * i % 256, 255 - 7 * i % 256)).save(buffer, "PNG")
    return buffer.getvalue()


def write(path: Path, columns: dict[str, pa.Array], names: list[str] | None = None) -> Path:
    """A Parquet file of ``columns`` in row groups of 4 rows; ``names`` the label column's
    class names in the metadata the datasets library writes."""
    table = pa.table(columns)
    if names is not None:
        features = {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
        metadata = {"huggingface": json.dumps({"info": {"features": features}})}
        table = table.replace_schema_metadata(metadata)
    pq.write_table(table, path, row_group_size=4)
    return path


def hub_file(path: Path, n: int = 18, first: int = 0) -> Path:
    """The hub's layout: ``{bytes, path}`` images, integer labels named in the metadata."""
    images = [{"bytes": png(i), "path": f"img_{i:03d}.png"} for i in range(first, first + n)]
    labels = pa.array([i % 3 for i in range(first, first + n)], pa.int64())
    return write(path, {"image": pa.array(images, IMAGE), "label": labels}, ["cat", "dog", "owl"])


def keys(dataset: object) -> list[str]:
    return sorted(cell.key for cell in dataset.files)


def test_a_file_in_the_hub_layout_loads_as_images_and_keeps_its_split_by_key(
    tmp_path: Path,
) -> None:
    source = str(hub_file(tmp_path / "pets.parquet"))
    assert data_kind(source) == "image"
    cached = load_data(source, val_fraction=0.2, test_fraction=0.2, seed=3)
    assert cached.classes == ["cat", "dog", "owl"] and cached.input_shape == (3, 10, 10)
    images, labels = cached.train.dataset.tensors
    assert torch.equal(images[0], decode_image(_file(tmp_path, 0), 3, 10))
    assert labels.tolist() == [i % 3 for i in range(18)]  # the rows in file order
    streamed = load_data(source, val_fraction=0.2, test_fraction=0.2, seed=3, image_options=STREAM)
    assert streamed.pipeline.startswith(f"1 Parquet file in {tmp_path} ('image'); streaming")
    assert streamed.split_record == cached.split_record
    test = keys(streamed.test)
    assert len(test) == 4 and all(key.startswith("img_") for key in test)
    # the rows found again by key in the same images rewritten in another order, with more
    table = pq.read_table(source)
    grown = pa.concat_tables([table.take(list(range(17, -1, -1))), pq.read_table(
        hub_file(tmp_path / "more.parquet", 5, first=18))])  # fmt: skip
    pq.write_table(grown.replace_schema_metadata(table.schema.metadata), source, row_group_size=4)
    record = ImageOptions(cache_mem_gb=0.0, split_record=streamed.split_record)
    with pytest.warns(UserWarning, match="5 files added, 0 removed"):
        again = load_data(source, val_fraction=0.2, test_fraction=0.2, seed=3, image_options=record)
    assert keys(again.test) == test and len(again.train) == 10 + 5


def _file(folder: Path, i: int) -> Path:
    """``png(i)`` as a file, for ``decode_image``."""
    path = folder / f"{i}.png"
    path.write_bytes(png(i))
    return path


def test_string_labels_are_classes_sorted_by_name_and_rows_without_one_are_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    species = ["owl", "cat", None, "dog", "cat", "owl"] * 3
    images = pa.array([png(i) for i in range(18)], pa.binary())
    source = write(tmp_path / "s.parquet", {"img": images, "species": pa.array(species)})
    bundle = load_data(str(source), target="species", val_fraction=0.0, test_fraction=0.0,
                       image_options=STREAM)  # fmt: skip
    assert bundle.classes == ["cat", "dog", "owl"]
    named = [name for name in species if name is not None]
    assert bundle.train.labels == [["cat", "dog", "owl"].index(name) for name in named]
    err = capsys.readouterr().err
    assert f"3 row(s) without a label in 'species' (the first: {source}/img[02])" in err
    code, _, err = run_cli(capsys, *TRAIN, "--data", str(source), "--target", "species",
                           "--strict")  # fmt: skip
    assert_one_line_error(code, err, "3 row(s) without a label", "(--strict)")


def test_a_bad_image_cell_is_named_by_file_column_and_row_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = [{"bytes": png(i), "path": f"{i}.png"} for i in range(12)]
    images[5]["bytes"] = b"no image at all"
    labels = pa.array([i % 2 for i in range(12)])
    source = write(tmp_path / "cells.parquet", {"image": pa.array(images, IMAGE), "label": labels})
    for options in (ImageOptions(), STREAM):
        bundle = load_data(str(source), val_fraction=0.0, test_fraction=0.0, image_options=options)
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[0] == (
            f"resnetlab: warning: skipped {source}/image[05]: not an image (unrecognised content)"
        )
        assert len(bundle.train) == (11 if options is not STREAM else 12)  # streamed: replaced
    code, _, err = run_cli(capsys, *TRAIN, "--data", str(source), "--strict")
    assert_one_line_error(code, err, "1 bad image file(s) (--strict)", f"{source}/image[05]")


def test_plain_bytes_columns_and_the_image_column_chosen_where_several_hold_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = pa.array([png(i) for i in range(8)], pa.binary())
    masks = pa.array([png(i, (6, 6)) for i in range(8)], pa.binary())
    digests = pa.array([bytes([i]) * 8 for i in range(8)], pa.binary())  # bytes, no image
    labels = pa.array([i % 2 for i in range(8)], pa.int8())
    one = write(tmp_path / "one.parquet", {"photo": photos, "digest": digests, "label": labels})
    bundle = load_data(str(one), val_fraction=0.0, test_fraction=0.0)
    assert bundle.classes == ["0", "1"] and bundle.input_shape == (3, 10, 10)
    two = write(tmp_path / "two.parquet", {"photo": photos, "mask": masks, "label": labels})
    chosen = load_data(str(two), val_fraction=0.0, test_fraction=0.0,
                       image_options=ImageOptions(image_column="mask"))  # fmt: skip
    assert chosen.input_shape == (3, 6, 6)
    for argv, needle in [
        (["--data", str(two)], "several columns hold images (photo, mask); name one with"),
        (["--data", str(two), "--image-column", "shape"], "--image-column shape: no such column"),
        (["--data", str(one), "--image-column", "label"], "holds int8, not encoded images"),
        (["--data", str(one), "--target", "kind"], "--target: no label column 'kind' in"),
    ]:
        code, _, err = run_cli(capsys, *TRAIN, *argv)
        assert_one_line_error(code, err, needle)


def test_a_folder_of_parquet_files_brings_its_splits(tmp_path: Path) -> None:
    (tmp_path / "hub").mkdir()
    for name, n, first in [("train-00000-of-00002", 9, 0), ("train-00001-of-00002", 9, 9),
                           ("test-00000-of-00001", 6, 18)]:  # fmt: skip
        hub_file(tmp_path / "hub" / f"{name}.parquet", n, first)
    bundle = load_data(str(tmp_path / "hub"), val_fraction=0.2, test_fraction=0.2,
                       image_options=STREAM)  # fmt: skip
    assert keys(bundle.test) == [f"img_{i:03d}.png" for i in range(18, 24)]
    assert len(bundle.train) + len(bundle.val) == 18 and len(bundle.val) == 4
    assert bundle.pipeline.startswith(f"3 Parquet files in {tmp_path / 'hub'}")


def test_pack_parquet_round_trip_gives_the_folders_bytes_labels_and_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = make_folder(tmp_path / "stripes", per_class=130, size=12)
    code, out, _ = run_cli(capsys, "pack", str(folder), "--out", str(tmp_path / "pq"),
                           "--format", "parquet", "--shard-size", "60KB")  # fmt: skip
    files = sorted((tmp_path / "pq").glob("*.parquet"))
    assert code == 0 and "260 images of 2 classes" in out and len(files) >= 2
    assert files[0].name == f"train-00000-of-{len(files):05d}.parquet"
    first = pq.ParquetFile(files[0])
    assert first.metadata.row_group(0).num_rows == 100
    rows = pa.concat_tables(pq.read_table(file) for file in files).to_pylist()
    on_disk = sorted(folder.rglob("*.png"))
    assert [row["image"]["path"] for row in rows] == [
        str(path.relative_to(folder)) for path in on_disk
    ]
    assert [row["image"]["bytes"] for row in rows] == [path.read_bytes() for path in on_disk]
    assert [row["label"] for row in rows] == [0] * 130 + [1] * 130
    # loaded, the same rows as the folder: the same split and images
    from_folder, from_parquet = (load_data(str(p), seed=1) for p in (folder, tmp_path / "pq"))
    assert from_parquet.classes == ["horizontal", "vertical"]
    for split in ("train", "val", "test"):
        a, b = getattr(from_folder, split), getattr(from_parquet, split)
        assert a.indices == b.indices and torch.equal(a.dataset.tensors[0], b.dataset.tensors[0])
    code, _, err = run_cli(capsys, "pack", str(folder), "--out", str(tmp_path / "pq"))
    assert_one_line_error(code, err, "already holds shards or Parquet files")


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_row_groups_give_every_training_row_once_an_epoch_resumable_at_a_step(
    tmp_path: Path, workers: int
) -> None:
    source = str(hub_file(tmp_path / "pets.parquet", n=30))
    bundle = load_data(source, val_fraction=0.0, test_fraction=0.0, image_options=STREAM)
    stream = bundle.train
    assert [len(group) for group in stream.shards] == [4] * 7 + [2]
    order = BatchOrder(len(stream), 6, shuffle=True, seed=5, drop_last=True)
    order.set_epoch(1)
    batches = list(make_loader(stream, order, workers=workers))
    seen = [sample for batch in batches for sample in zip(*batch, strict=True)]
    assert len(seen) == 30 and len({int(i) for *_, i in seen}) == 30
    for x, y, i in seen:
        assert int(y) == stream.labels[i] and torch.equal(x, stream[int(i)][0])
    order.set_epoch(1, start=3)  # a resumed run: the rest of the epoch, the same batches
    rest = list(make_loader(stream, order, workers=workers))
    assert [b[2].tolist() for b in rest] == [b[2].tolist() for b in batches[3:]]


def test_a_table_in_parquet_stays_a_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    table = {"x": rng.normal(size=40), "colour": ["red", "blue"] * 20, "y": [0, 1] * 20}
    source = write(tmp_path / "table.parquet", {k: pa.array(v) for k, v in table.items()})
    assert data_kind(str(source)) == "tabular"
    bundle = load_data(str(source), target="y", val_fraction=0.0, test_fraction=0.0)
    assert bundle.kind == "tabular" and bundle.input_shape == (3,)  # x and colour one-hot
