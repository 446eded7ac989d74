"""Shards: `resnetlab pack`, shards of the webdataset library, their epoch order, an exact
resume, uneven shards under torchrun, damaged shards."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, crash_after_state, make_folder, run_cli
from PIL import Image
from test_distributed import two_processes

from resnetlab.checkpoints.checkpoint import load_checkpoint
from resnetlab.cli import main
from resnetlab.data import DataBundle, ImageOptions, load_data
from resnetlab.data import shards as shards_module
from resnetlab.data.pack import pack_folder
from resnetlab.data.shard_stream import SHUFFLE_BUFFER, buffer_shuffle, lane_batches
from resnetlab.data.shards import expand_braces, scan_shard, shard_sets
from resnetlab.training.batches import BatchOrder
from resnetlab.training.run import resume_config, resume_run
from resnetlab.training.rundir import fingerprint

TRAIN = ["train", "--epochs", "2", "--batch-size", "8", "--quiet"]


def packed(tmp_path: Path, shard_size: str = "21KB", per_class: int = 20) -> Path:
    """Stripes (PNG, 12 x 12, under 512 bytes) packed into shards of 9 samples: 2 KiB each
    (a header and a block for the image, for the label), 1 KiB of end marker, records of
    10 KiB."""
    make_folder(tmp_path / "stripes", per_class=per_class, size=12)
    assert main(["pack", str(tmp_path / "stripes"), "--out", str(tmp_path / "shards"),
                 "--shard-size", shard_size]) == 0  # fmt: skip
    return tmp_path / "shards"


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {info.name: tar.extractfile(info).read() for info in tar}


def held_out(bundle: DataBundle) -> list[str]:
    """The keys of a streamed bundle's test samples."""
    return sorted(member.key for member in bundle.test.files)


def test_pack_keeps_every_image_byte_for_byte_with_its_label_and_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = make_folder(tmp_path / "photos", per_class=9, size=12)
    jpeg = folder / "vertical" / "sub" / "a.b.JPG"  # nested, a dot in the name, a JPEG
    jpeg.parent.mkdir()
    Image.new("RGB", (12, 12), (200, 10, 10)).save(jpeg, format="JPEG")
    code, out, _ = run_cli(capsys, "pack", str(folder), "--out", "sh", "--shard-size", "21KB")
    assert code == 0 and "19 images of 2 classes" in out
    index = json.loads(Path("sh/shards.json").read_text())
    assert index["classes"] == ["horizontal", "vertical"]
    members: dict[str, bytes] = {}
    for entry in index["shards"]:
        data = Path("sh", entry["file"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"])
        assert len(data) <= 21000 and entry["split"] == "train"
        shard = tar_members(Path("sh", entry["file"]))
        assert len(shard) == 2 * entry["samples"]
        members.update(shard)
    assert len(index["shards"]) > 1 and sum(e["samples"] for e in index["shards"]) == 19
    assert members["vertical/sub/a%2Eb.jpg"] == jpeg.read_bytes()
    assert members["vertical/sub/a%2Eb.cls"] == b"1"
    for label, name in enumerate(index["classes"]):
        for file in (folder / name).glob("*.png"):
            assert members[f"{name}/{file.stem}.png"] == file.read_bytes()
            assert members[f"{name}/{file.stem}.cls"] == str(label).encode()
    pack_folder(folder, "again", 21000)  # the same folder packs into the same bytes
    assert Path("again/train-000001.tar").read_bytes() == Path("sh/train-000001.tar").read_bytes()
    # loaded, the same images in the same order as from the folder: the same split and rows
    from_folder, from_shards = (load_data(source, seed=1) for source in (str(folder), "sh"))
    for split in ("train", "val", "test"):
        a, b = getattr(from_folder, split), getattr(from_shards, split)
        assert a.indices == b.indices and torch.equal(a.dataset.tensors[0], b.dataset.tensors[0])
    assert from_shards.classes == from_folder.classes and from_shards.mean == from_folder.mean


def test_shards_made_by_the_webdataset_library_load_and_it_reads_ours(tmp_path: Path) -> None:
    wds = pytest.importorskip("webdataset")
    (tmp_path / "wds").mkdir()
    images = {}
    with wds.ShardWriter(str(tmp_path / "wds" / "part-%04d.tar"), maxcount=7) as sink:
        for i in range(17):
            buffer = io.BytesIO()
            Image.new("RGB", (10, 14), (12 * i, 0, 255 - 12 * i)).save(buffer, format="PNG")
            images[f"s{i:03d}"] = buffer.getvalue()
            sink.write({"__key__": f"s{i:03d}", "png": buffer.getvalue(), "cls": i % 3})
    pattern = str(tmp_path / "wds" / "part-{0000..0002}.tar")
    bundle = load_data(pattern, val_fraction=0.2, test_fraction=0.0, image_options=ImageOptions(
        cache_mem_gb=0.0))  # fmt: skip
    assert bundle.classes == ["0", "1", "2"] and bundle.input_shape == (3, 10, 10)
    assert len(bundle.train) + len(bundle.val) == 17
    assert {m.key: m.read() for m in bundle.train.files + bundle.val.files} == images
    # and the library reads what `pack` writes: the keys, the bytes and the labels
    shards = packed(tmp_path)
    names = sorted(p.name for p in shards.glob("*.tar"))
    read = list(wds.WebDataset([str(shards / n) for n in names], shardshuffle=False))
    assert len(read) == 40 and read[0]["__key__"] == "horizontal/000"
    first = tmp_path / "stripes" / "horizontal" / "000.png"
    assert read[0]["png"] == first.read_bytes() and read[0]["cls"] == b"0"


@pytest.mark.parametrize(("world", "lanes"), [(1, 1), (2, 2), (3, 1)])
def test_an_epoch_reads_every_sample_once_in_the_same_steps_per_process(
    world: int, lanes: int
) -> None:
    """Uneven shards: each process and lane reads its own stretch of the permuted shards, every
    process makes the same number of steps, and a loader started at batch k gives the rest."""
    sizes = [13, 5, 22, 1, 9, 30]
    epochs = []
    for epoch in (1, 2):
        seen = []
        for rank in range(world):
            order = BatchOrder(sum(sizes), 6, shuffle=True, seed=4, drop_last=True,
                               rank=rank, world=world)  # fmt: skip
            order.set_epoch(epoch)
            lane = [lane_batches(order, sizes, i, lanes) for i in range(lanes)]
            batches = [lane[j % lanes][j // lanes] for j in range(len(order))]
            assert len(batches) == 80 // 6 and {len(b) for b in batches} == {6 // world}
            seen += [position for batch in batches for position in batch]
            order.set_epoch(epoch, start=5)  # a resumed loader: lane (5 + i) % lanes first
            later = [lane_batches(order, sizes, (i + 5) % lanes, lanes) for i in range(lanes)]
            resumed = [later[j % lanes][j // lanes] for j in range(len(order) - 5)]
            assert resumed == batches[5:]
        assert len(set(seen)) == len(seen) == 78  # 2 samples left over by the whole batches
        assert all(position < sizes[shard] for shard, position in seen)
        epochs.append(seen)
    assert epochs[0] != epochs[1]


def test_a_shuffle_buffer_holds_at_most_its_size() -> None:
    order = buffer_shuffle(5000, SHUFFLE_BUFFER, np.random.default_rng(0))
    assert sorted(order) == list(range(5000))
    assert max(item - at for at, item in enumerate(order)) < SHUFFLE_BUFFER
    assert expand_braces("a-{08..10}-{x,y}.tar") == [
        "a-08-x.tar", "a-08-y.tar", "a-09-x.tar", "a-09-y.tar", "a-10-x.tar", "a-10-y.tar",
    ]  # fmt: skip


def test_a_run_from_streamed_shards_resumes_exactly_after_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two DataLoader workers, random crops and flips: a crash after step 4 (epoch 2 goes on
    with its second batch, the second worker's), then --resume, ends as the run that never
    stopped; its checkpoint finds the run's test samples again, by key also in shards packed
    anew, and predicts a shard's images."""
    shards = packed(tmp_path)
    argv = [*TRAIN, "--data", str(shards), "--cache-mem", "0", "--workers", "2", "--flip",
            "--save-every", "1", "--test-fraction", "0.2"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    crash_after_state(monkeypatch, at_step=4)  # 3 steps an epoch: the middle of epoch 2
    with pytest.raises(MemoryError):
        main([*argv, "--out", str(tmp_path / "crashed")])
    monkeypatch.undo()
    assert main(["train", "--resume", str(tmp_path / "crashed")]) == 0
    log = (tmp_path / "crashed" / "log.txt").read_text()
    assert "streaming from shards" in log and "resuming after epoch 1, step 4" in log
    assert fingerprint(tmp_path / "crashed") == fingerprint(tmp_path / "whole")
    with pytest.warns(UserWarning, match="--workers 1, the run had 2; each worker reads its own"):
        resume_run(resume_config(tmp_path / "crashed", workers=1))
    bundle = load_data(str(shards), seed=0, test_fraction=0.2, image_options=ImageOptions(
        cache_mem_gb=0.0))  # fmt: skip
    best = tmp_path / "whole" / "best.safetensors"
    record = load_checkpoint(best)[1]["data"]["split"]
    assert record == bundle.split_record
    capsys.readouterr()
    code, out, _ = run_cli(capsys, "eval", "--checkpoint", str(best), "--json")
    assert code == 0 and json.loads(out)["samples"] == len(bundle.test) == 8
    shard = str(shards / "train-000000.tar")  # predict: each image of a shard
    code, out, _ = run_cli(capsys, "predict", "--checkpoint", str(best), shard, "--json")
    named = [row["input"] for row in json.loads(out)]
    assert code == 0 and named == [f"{shard}/horizontal/{i:03d}.png" for i in range(9)]
    pack_folder(tmp_path / "stripes", tmp_path / "repacked", 20_000)  # other shards, same keys
    again = load_data(str(tmp_path / "repacked"), image_options=ImageOptions(
        cache_mem_gb=0.0, split_record=record))  # fmt: skip
    assert held_out(again) == held_out(bundle)


def test_uneven_shards_keep_two_gloo_processes_in_step(tmp_path: Path) -> None:
    """Shards of 2, 11 and 27 samples, streamed: both processes make the epoch's steps and end
    with the same weights (no process waits at an epoch's end for another)."""
    make_folder(tmp_path / "stripes", per_class=20, size=12)
    shards = tmp_path / "uneven"
    shards.mkdir()
    files = sorted((tmp_path / "stripes").rglob("*.png"))
    for number, (start, stop) in enumerate([(0, 2), (2, 13), (13, 40)]):
        with tarfile.open(shards / f"part-{number}.tar", "w") as tar:
            for i in range(start, stop):
                tar.add(files[i], f"{i:03d}.png")
                label = str(int(files[i].parent.name == "vertical")).encode()
                info = tarfile.TarInfo(f"{i:03d}.cls")
                info.size = len(label)
                tar.addfile(info, io.BytesIO(label))
    argv = [*TRAIN, "--data", str(shards), "--cache-mem", "0", "--val-fraction", "0.2",
            "--test-fraction", "0", "--out", "run"]  # fmt: skip
    codes, output = two_processes(argv, tmp_path)
    assert codes == [0, 0], output[-3000:]
    run = tmp_path / "run"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").open()]
    assert steps == [4, 8]  # 32 training samples, global batch 8
    assert (run / "rank0.sha256").read_text() == (run / "rank1.sha256").read_text()


def test_a_packed_set_is_listed_from_shards_json_without_reading_a_tar_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = packed(tmp_path)
    scanned = {sample for tar in shards.glob("*.tar") for sample in scan_shard(tar, 2).samples}

    def no_headers(path: Path, size: int) -> None:
        raise AssertionError(f"{path}: tar headers read")

    monkeypatch.setattr(shards_module, "_tar_members", no_headers)
    listed = shard_sets(str(shards), strict=False)[1]["train"][1]
    assert len(listed) == 40 and set(listed) == scanned
    first = shards / "train-000000.tar"
    first.write_bytes(first.read_bytes()[:-1024])  # another size: its headers are read again
    with pytest.raises(AssertionError, match="tar headers read"):
        shard_sets(str(shards), strict=False)


@pytest.mark.parametrize("cache", ["4", "0"])
def test_a_damaged_shard_is_named_its_readable_samples_used_and_strict_refuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cache: str
) -> None:
    shards = packed(tmp_path)
    index = json.loads((shards / "shards.json").read_text())
    entry = index["shards"][1]
    damaged = shards / entry["file"]
    with tarfile.open(damaged) as tar:
        third = [info for info in tar if info.name.endswith(".png")][2]
    damaged.write_bytes(damaged.read_bytes()[: third.offset_data + 10])  # inside its 3rd image
    options = ImageOptions(cache_mem_gb=float(cache))
    bundle = load_data(str(shards), val_fraction=0.0, test_fraction=0.0, image_options=options)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"resnetlab: warning: {damaged}: truncated")
    lost = entry["samples"] - 2
    assert f"; 2 readable samples, {lost} of {entry['samples']} lost; its readable" in lines[0]
    assert len(bundle.train) == 40 - lost
    argv = [*TRAIN, "--data", str(shards), "--cache-mem", cache, "--strict"]
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, "1 damaged shard(s) (--strict)", str(damaged), "truncated")
    damaged.write_bytes(b"")  # and one that is not a tar file at all
    _, _, err = run_cli(capsys, *argv)
    assert "not a readable tar file (empty file)" in err


def test_a_changed_shard_of_the_same_size_is_refused_by_strict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = packed(tmp_path)
    first = shards / "train-000000.tar"
    data = bytearray(first.read_bytes())
    data[700] ^= 0xFF  # inside the first image's bytes: the tar reads, the image may not
    first.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, *TRAIN, "--data", str(shards), "--strict")
    assert_one_line_error(code, err, str(first), "size or sha256 differs from shards.json")


def test_shard_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_folder(tmp_path / "stripes", per_class=2, size=12)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "shards.json").write_text("{}")
    for argv, needle in [
        (["pack", "stripes"], "pack needs --out"),
        (["pack", "nowhere", "--out", "x"], "pack: no such folder: 'nowhere'"),
        (["pack", "stripes", "--out", "y", "--shard-size", "big"], "--shard-size must be a size"),
        ([*TRAIN, "--data", "bad"], "bad/shards.json: not the index that resnetlab pack writes"),
        ([*TRAIN, "--data", "none-{0..3}.tar"], "--data none-{0..3}.tar: none of its 4 shards"),
    ]:
        code, _, err = run_cli(capsys, *argv)
        assert_one_line_error(code, err, needle)
