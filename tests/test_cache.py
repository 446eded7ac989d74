"""Decode-once cache: parallel decoding, exact statistics, reuse, rebuild and atomic writes."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.data import cache
from resnetlab.data.cache import (
    cache_key,
    channel_stats,
    decode_all,
    default_cache_dir,
    default_memory_budget,
    fits_in_memory,
    load_or_build,
)
from resnetlab.data.stats import STD_FLOOR
from resnetlab.errors import ResnetlabError

CLASSES = ["cat", "dog"]


@pytest.fixture()
def folder(tmp_path: Path) -> tuple[Path, list[Path], list[int]]:
    """root/{cat,dog}/N.png: image i of class c is filled with grey 10 * i + 100 * c,
    plus one zero-byte file in dog/."""
    root = tmp_path / "images"
    files, labels = [], []
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(3):
            path = root / name / f"{i}.png"
            Image.new("RGB", (8, 8), (10 * i + 100 * label,) * 3).save(path)
            files.append(path)
            labels.append(label)
    (root / "dog" / "broken.png").touch()
    files.append(root / "dog" / "broken.png")
    labels.append(1)
    return root, files, labels


def build(
    folder: tuple[Path, list[Path], list[int]],
    cache_dir: Path | None,
    files: list[Path] | None = None,
) -> cache.CachedImages:
    root, all_files, _ = folder
    files = all_files if files is None else files
    labels = [CLASSES.index(f.parent.name) for f in files]
    return load_or_build(root, files, labels, CLASSES, channels=3, size=4, cache_dir=cache_dir)


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(cache, "decode_array", fail)


def test_decode_all_returns_good_rows_and_reports_bad_files(
    folder: tuple[Path, list[Path], list[int]],
) -> None:
    _, files, _ = folder
    images, ok, report = decode_all(files, channels=1, size=4, workers=2)
    assert ok == [0, 1, 2, 3, 4, 5]
    assert images.shape == (6, 1, 4, 4) and images.dtype == torch.uint8
    assert images[:, 0, 0, 0].tolist() == [0, 10, 20, 100, 110, 120]
    assert [(path.name, reason) for path, reason in report.entries] == [
        ("broken.png", "empty file (0 bytes)")
    ]
    serial, _, _ = decode_all(files, channels=1, size=4, workers=1)
    assert torch.equal(images, serial)


def test_channel_stats_are_exact() -> None:
    images = torch.randint(0, 256, (5, 3, 7, 7), dtype=torch.uint8)
    mean, std = channel_stats(images)
    scaled = images.double() / 255
    assert mean == pytest.approx(scaled.mean((0, 2, 3)).tolist(), abs=1e-12)
    assert std == pytest.approx(scaled.std((0, 2, 3), unbiased=False).tolist(), abs=1e-12)


def test_a_constant_channel_gets_the_floored_std() -> None:
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    images[:, 2] = 0  # a blue channel that is always 0 would normalise to 0 / 0
    assert channel_stats(images)[1][2] == STD_FLOOR


def test_build_then_reuse_without_decoding(
    folder: tuple[Path, list[Path], list[int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build(folder, tmp_path / "cache")
    assert first.images.shape == (6, 3, 4, 4) and first.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert first.classes == CLASSES
    assert [f.name for f in first.files] == ["0.png", "1.png", "2.png"] * 2
    grey = [0, 10, 20, 100, 110, 120]
    assert first.mean == pytest.approx([np.mean(grey) / 255] * 3)
    assert first.std == pytest.approx([np.std(grey) / 255] * 3)
    assert first.cache_file is not None and first.cache_file.parent == tmp_path / "cache"
    forbid_decoding(monkeypatch)
    again = build(folder, tmp_path / "cache")
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert again.mean == first.mean and again.files == first.files
    assert again.bad.entries == first.bad.entries  # the bad file is still reported
    assert [p.name for p, _ in again.bad.entries] == ["broken.png"]


def test_file_order_does_not_matter(
    folder: tuple[Path, list[Path], list[int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build(folder, tmp_path / "cache")
    shuffled = list(folder[1])
    random.Random(0).shuffle(shuffled)
    forbid_decoding(monkeypatch)
    again = build(folder, tmp_path / "cache", files=shuffled)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert all(
        CLASSES[label] == path.parent.name
        for label, path in zip(again.labels.tolist(), again.files, strict=True)
    )


def test_touched_or_added_files_rebuild(
    folder: tuple[Path, list[Path], list[int]], tmp_path: Path
) -> None:
    root, files, labels = folder
    other_size = load_or_build(
        root, files, labels, CLASSES, channels=3, size=8, cache_dir=tmp_path / "cache"
    )
    first = build(folder, tmp_path / "cache")
    stat = files[0].stat()
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    touched = build(folder, tmp_path / "cache")
    assert touched.cache_file != first.cache_file
    new_file = root / "cat" / "3.png"
    Image.new("RGB", (8, 8), (30, 30, 30)).save(new_file)
    added = build(folder, tmp_path / "cache", files=[*files, new_file])
    assert added.images.shape[0] == 7 and added.cache_file not in (
        first.cache_file,
        touched.cache_file,
    )
    # each rebuild deletes the folder's older cache at that size; other sizes stay
    remaining = set((tmp_path / "cache").glob("images-*.safetensors"))
    assert remaining == {added.cache_file, other_size.cache_file}


def test_cache_key_covers_settings_and_files(folder: tuple[Path, list[Path], list[int]]) -> None:
    root, files, _ = folder
    key = cache_key(root, files, 3, 32)
    assert len(key) == 64 and key == cache_key(root, files[::-1], 3, 32)
    assert (
        len(
            {
                key,
                cache_key(root, files, 1, 32),
                cache_key(root, files, 3, 16),
                cache_key(root, files[1:], 3, 32),
            }
        )
        == 4
    )
    files[2].write_bytes(files[2].read_bytes() + b"\0")  # a different size
    assert cache_key(root, files, 3, 32) != key


def test_write_is_atomic_and_leaves_no_temporary_files(
    folder: tuple[Path, list[Path], list[int]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    build(folder, tmp_path / "good")
    assert [p.suffix for p in (tmp_path / "good").iterdir()] == [".safetensors"]

    def die_halfway(tensors: object, filename: str, metadata: object) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache, "save_file", die_halfway)
    result = build(folder, tmp_path / "full")
    assert result.cache_file is None and result.images.shape[0] == 6
    assert list((tmp_path / "full").iterdir()) == []
    assert "No space left on device" in capsys.readouterr().err


def test_corrupt_cache_is_rebuilt(
    folder: tuple[Path, list[Path], list[int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build(folder, tmp_path / "cache")
    assert first.cache_file is not None
    first.cache_file.write_bytes(b"garbage")
    again = build(folder, tmp_path / "cache")
    assert torch.equal(again.images, first.images)
    forbid_decoding(monkeypatch)  # the rebuilt cache is valid again
    assert torch.equal(build(folder, tmp_path / "cache").images, first.images)


def test_unwritable_cache_dir_warns_once(
    folder: tuple[Path, list[Path], list[int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for _ in range(2):
        result = build(folder, blocker / "cache")
        assert result.cache_file is None and result.images.shape[0] == 6
    warnings = [line for line in capsys.readouterr().err.splitlines() if "cache" in line]
    assert len(warnings) == 1 and str(blocker) in warnings[0]


def test_default_cache_dir_is_created_under_home(
    folder: tuple[Path, list[Path], list[int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RESNETLAB_CACHE_DIR", raising=False)
    root, files, labels = folder
    result = load_or_build(root, files, labels, CLASSES, 3, 4, cache_dir=default_cache_dir())
    assert result.cache_file is not None
    assert result.cache_file.parent == tmp_path / "home" / ".cache" / "resnetlab"
    monkeypatch.setenv("RESNETLAB_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert default_cache_dir() == str(tmp_path / "elsewhere")


def test_nothing_decodable_is_an_error(
    folder: tuple[Path, list[Path], list[int]], tmp_path: Path
) -> None:
    root, files, _ = folder
    with pytest.raises(ResnetlabError, match=r"none of the 1 image files .*broken\.png: empty"):
        load_or_build(root, files[-1:], [1], CLASSES, 3, 4, cache_dir=tmp_path)
    with pytest.raises(ResnetlabError, match="no image files under"):
        load_or_build(root, [], [], CLASSES, 3, 4, cache_dir=tmp_path)


def test_fits_in_memory() -> None:
    assert fits_in_memory(1000, 3, 32, budget_bytes=3_072_000)
    assert not fits_in_memory(1000, 3, 32, budget_bytes=3_071_999)
    assert 0 < default_memory_budget() <= 4 << 30
    assert fits_in_memory(50_000, 3, 32)  # CIFAR-10 takes 150 MB
