"""Batched augmentation (crop, flip, Cutout, normalisation) and the streaming pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from resnetlab.data.augment import BatchAugment, normalize_batch
from resnetlab.data.streaming import ImageFileDataset, mixup_cutmix, train_transforms
from resnetlab.errors import ResnetlabError

IDENTITY = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


def random_images(n: int = 16, size: int = 8, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)


def test_normalize_batch() -> None:
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = normalize_batch(x, [0.5, 0.0, 1.0], [0.25, 1.0, 0.5])
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert out[:, :, 0, 0].tolist() == [[2.0, 1.0, 0.0]] * 2
    assert torch.equal(
        normalize_batch(x.float() / 255, [0.5] * 3, [0.25] * 3),
        normalize_batch(x, [0.5] * 3, [0.25] * 3),
    )


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_crop_is_a_shifted_window_of_the_padded_image(padding_mode: str) -> None:
    x = random_images()
    out = BatchAugment(**IDENTITY, padding_mode=padding_mode, flip=False)(x, ids(x))
    assert out.shape == x.shape and out.dtype == torch.float32
    padded = F.pad(
        x.float() / 255, (4,) * 4, mode="constant" if padding_mode == "zeros" else "reflect"
    )
    shifts = set()
    for image, source in zip(out, padded, strict=True):
        matches = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(image, source[:, dy : dy + 8, dx : dx + 8])
        ]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 8  # the shifts vary from image to image


def ids(x: torch.Tensor) -> torch.Tensor:
    """Dataset indices for a batch that holds samples 0..N-1."""
    return torch.arange(len(x))


def test_zero_padding_is_black_before_normalisation() -> None:
    white = torch.full((64, 3, 8, 8), 255, dtype=torch.uint8)
    out = BatchAugment(**IDENTITY, flip=False)(white, ids(white))
    assert set(out.unique().tolist()) == {0.0, 1.0}
    shifted = (out == 0).flatten(1).any(1)
    assert 40 < shifted.sum() < 64  # only the centred window (1 in 81) has no padding
    padded_corner = out[:, 0, 0, 0] == 0
    assert padded_corner.any()
    # the same seed draws the same shifts: padded pixels normalise to -mean / std
    normalised = BatchAugment([0.5, 0.4, 0.3], [0.2, 0.2, 0.2], flip=False)(white, ids(white))
    corners = normalised[padded_corner][:, :, 0, 0]
    assert torch.allclose(corners, torch.tensor([-2.5, -2.0, -1.5]).expand_as(corners))


def test_flip_mirrors_about_half_of_the_images() -> None:
    x = random_images(64)
    out = BatchAugment(**IDENTITY, crop_padding=0)(x, ids(x))
    source = x.float() / 255
    flipped = [torch.equal(o, s.flip(-1)) for o, s in zip(out, source, strict=True)]
    kept = [torch.equal(o, s) for o, s in zip(out, source, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    assert 20 < sum(flipped) < 44


def test_alternating_flip() -> None:
    x = random_images(64)
    source = x.float() / 255
    aug = BatchAugment(**IDENTITY, crop_padding=0, flip_alternate=True)
    indices = torch.arange(1000, 1064)
    even, odd = aug(x, epoch=2, indices=indices), aug(x, epoch=3, indices=indices)
    flips = [torch.equal(e, s.flip(-1)) for e, s in zip(even, source, strict=True)]
    even_flipped = torch.tensor(flips)
    assert 20 < even_flipped.sum() < 44
    expected_odd = torch.where(even_flipped[:, None, None, None], source, source.flip(-1))
    assert torch.equal(odd, expected_odd)  # every image changes orientation each epoch
    assert torch.equal(aug(x, epoch=4, indices=indices), even)


def test_cutout_zeroes_a_square() -> None:
    ones = torch.ones(32, 3, 16, 16)
    out = BatchAugment(**IDENTITY, crop_padding=0, flip=False, cutout=6)(ones, ids(ones))
    full_squares = 0
    for image in out:
        zero = image == 0
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])
        rows, cols = zero[0].any(1), zero[0].any(0)
        assert torch.equal(zero[0], rows[:, None] & cols[None, :])  # a rectangle
        assert 1 <= rows.sum() <= 6 and 1 <= cols.sum() <= 6
        full_squares += int(rows.sum() == 6 and cols.sum() == 6)
    assert full_squares > 10
    assert set(out.unique().tolist()) == {0.0, 1.0}


def test_seed_makes_augmentation_reproducible() -> None:
    x = random_images()
    options = {**IDENTITY, "cutout": 3}
    first = BatchAugment(**options, seed=1)
    second = BatchAugment(**options, seed=1)
    assert torch.equal(first(x, ids(x)), second(x, ids(x)))
    assert not torch.equal(
        BatchAugment(**options, seed=1)(x, ids(x)), BatchAugment(**options, seed=2)(x, ids(x))
    )


def test_each_samples_draws_depend_on_its_index_and_epoch_only() -> None:
    x = random_images(48)
    aug = BatchAugment(**IDENTITY, cutout=3, seed=5)
    whole = aug(x, torch.arange(48), epoch=3)
    order = torch.randperm(48)
    parts = [aug(x[chunk], chunk, epoch=3) for chunk in order.split(16)]
    assert torch.equal(torch.cat(parts), whole[order])  # same numbers in any batch
    assert not torch.equal(aug(x, torch.arange(48), epoch=4), whole)


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="padding_mode"):
        BatchAugment(**IDENTITY, padding_mode="edge")
    with pytest.raises(ValueError, match="negative"):
        BatchAugment(**IDENTITY, cutout=-1)


def test_streaming_transforms_shapes_and_ranges() -> None:
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 40, 30), dtype=torch.uint8)
    for transform in [
        train_transforms(16),
        train_transforms(16, "trivial", 1.0),
        train_transforms(16, "randaugment"),
    ]:
        out = transform(image)
        assert out.shape == (3, 16, 16) and out.dtype == torch.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
    with pytest.raises(ResnetlabError, match="--auto-augment"):
        train_transforms(16, "autoaugment")


def test_mixup_cutmix_gives_soft_labels() -> None:
    assert mixup_cutmix(10) is None
    torch.manual_seed(0)
    mix = mixup_cutmix(10, mixup_alpha=0.2, cutmix_alpha=1.0)
    images, labels = mix(torch.rand(8, 3, 16, 16), torch.arange(8))
    assert images.shape == (8, 3, 16, 16) and labels.shape == (8, 10)
    assert torch.allclose(labels.sum(1), torch.ones(8))


def test_image_file_dataset_substitutes_bad_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = []
    for i, value in enumerate([10, 20, 30]):
        files.append(tmp_path / f"{i}.png")
        Image.new("L", (8, 6), value).save(files[-1])
    files[1].write_text("not an image")
    dataset = ImageFileDataset(files, [0, 1, 2], channels=1, size=4)
    image, label = dataset[1]  # replaced by the next readable file, with its label
    assert label == 2 and torch.equal(image, torch.full((1, 4, 4), 30, dtype=torch.uint8))
    batches = list(DataLoader(dataset, batch_size=3))
    assert batches[0][1].tolist() == [0, 2, 2]
    assert len(dataset.bad) == 1 and "not an image" in dataset.bad.entries[0][1]
    assert capsys.readouterr().err.count("1.png") == 1  # warned once
    for path in files:
        path.write_bytes(b"")
    with pytest.raises(ResnetlabError, match="none of the 3 image files"):
        ImageFileDataset(files, [0, 1, 2])[0]
