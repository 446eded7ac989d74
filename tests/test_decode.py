"""Decoding every format and colour mode a real image folder contains, and reporting bad files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from resnetlab.data.decode import (
    BadFileReport,
    BadImage,
    decode_image,
    is_image_file,
    try_decode,
)
from resnetlab.errors import ResnetlabError


def pattern(height: int = 20, width: int = 30) -> np.ndarray:
    """An RGB image with four coloured quadrants (smooth enough for JPEG)."""
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[: height // 2, : width // 2] = (200, 30, 30)
    rgb[: height // 2, width // 2 :] = (30, 200, 30)
    rgb[height // 2 :, : width // 2] = (30, 30, 200)
    rgb[height // 2 :, width // 2 :] = (220, 220, 220)
    return rgb


def chw(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)


@pytest.mark.parametrize("ext", ["png", "bmp", "webp", "gif", "jpg"])
def test_every_format_decodes_to_uint8_chw(tmp_path: Path, ext: str) -> None:
    rgb = pattern()
    path = tmp_path / f"img.{ext}"
    options = {"lossless": True} if ext == "webp" else {"quality": 95} if ext == "jpg" else {}
    Image.fromarray(rgb).save(path, **options)
    image = decode_image(path, channels=3)
    assert image.dtype == torch.uint8 and image.shape == (3, 20, 30)
    with Image.open(path) as reference:  # Pillow's own decoding of the same file
        assert torch.equal(image, chw(np.array(reference.convert("RGB"))))
    if ext != "jpg":  # lossless
        assert torch.equal(image, chw(rgb))


def test_gif_uses_the_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert decode_image(tmp_path / "anim.gif").view(3, -1)[:, 0].tolist() == [255, 0, 0]


def first_pixel(img: Image.Image, tmp_path: Path, channels: int, ext: str = "png") -> list[int]:
    path = tmp_path / f"mode.{ext}"
    img.save(path)
    return decode_image(path, channels=channels)[:, 0, 0].tolist()


def test_colour_modes_convert_to_rgb_and_grey(tmp_path: Path) -> None:
    assert first_pixel(Image.new("L", (4, 4), 100), tmp_path, 3) == [100, 100, 100]
    assert first_pixel(Image.new("L", (4, 4), 100), tmp_path, 1) == [100]
    # ITU-R 601 luma: 0.299 * 10 + 0.587 * 20 + 0.114 * 30 = 18.15
    assert first_pixel(Image.new("RGB", (4, 4), (10, 20, 30)), tmp_path, 1) == [18]
    cmyk = first_pixel(Image.new("CMYK", (8, 8), (0, 255, 0, 0)), tmp_path, 3, ext="jpg")
    assert np.allclose(cmyk, [255, 0, 255], atol=3)


def test_transparency_is_composited_on_black(tmp_path: Path) -> None:
    rgba = first_pixel(Image.new("RGBA", (4, 4), (200, 100, 50, 128)), tmp_path, 3)
    assert np.allclose(rgba, [100, 50, 25], atol=1)  # colour * 128 / 255
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    palette.info["transparency"] = 1  # the white index is fully transparent
    assert first_pixel(palette, tmp_path, 3) == [0, 0, 0]
    palette.info.pop("transparency")
    assert first_pixel(palette, tmp_path, 3) == [255, 255, 255]


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.uint16)).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as stored:
        assert stored.mode == "I;16"
    assert decode_image(tmp_path / "deep.png", channels=1).flatten().tolist() == [0, 4, 255]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[:8, :8] = (255, 0, 0)  # a red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(rgb).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    image = decode_image(tmp_path / "phone.jpg").float()
    assert image.shape == (3, 30, 20)
    assert image[0, :8, -8:].mean() > 200  # the block is now top-right
    assert image[0, :8, :8].mean() < 30


def test_resize_takes_the_centred_square(tmp_path: Path) -> None:
    rgb = np.zeros((20, 40, 3), dtype=np.uint8)
    rgb[:, :10] = (255, 0, 0)
    rgb[:, 10:30] = (0, 255, 0)
    rgb[:, 30:] = (0, 0, 255)
    Image.fromarray(rgb).save(tmp_path / "wide.png")
    full = decode_image(tmp_path / "wide.png", size=20)
    assert full.shape == (3, 20, 20) and torch.equal(full, chw(rgb[:, 10:30]))
    small = decode_image(tmp_path / "wide.png", size=10)
    assert small.shape == (3, 10, 10)
    assert small[:, :, 1:-1].tolist() == chw(rgb[:10, 11:19]).tolist()
    assert torch.equal(small, decode_image(tmp_path / "wide.png", size=10))


def test_non_ascii_names_and_symlinks(tmp_path: Path) -> None:
    path = tmp_path / "chat_é_猫.png"
    Image.fromarray(pattern()).save(path)
    link = tmp_path / "link.png"
    os.symlink(path, link)
    assert torch.equal(decode_image(path), chw(pattern()))
    assert torch.equal(decode_image(link), chw(pattern()))


def test_content_decides_not_the_extension(tmp_path: Path) -> None:
    Image.fromarray(pattern()).save(tmp_path / "really_png.jpg", format="PNG")
    assert torch.equal(decode_image(tmp_path / "really_png.jpg"), chw(pattern()))


def bad_files(tmp_path: Path) -> dict[str, Path]:
    """A zero-byte file, a JPEG cut in half, a text file named .jpg and a missing file."""
    Image.fromarray(pattern(64, 64)).save(tmp_path / "whole.jpg")
    data = (tmp_path / "whole.jpg").read_bytes()
    files = {
        "empty": tmp_path / "empty.jpg",
        "truncated": tmp_path / "cut.jpg",
        "not an image": tmp_path / "notes.jpg",
        "cannot read": tmp_path / "gone.jpg",
    }
    files["empty"].touch()
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["not an image"].write_text("hello, I am not a picture\n")
    return files


def test_bad_files_are_reported_with_their_reason(tmp_path: Path) -> None:
    for expected, path in bad_files(tmp_path).items():
        image, reason = try_decode(path)
        assert image is None and expected in reason
        with pytest.raises(BadImage) as info:
            decode_image(path)
        assert info.value.path == path and info.value.reason == reason
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_bad_channel_count_is_a_value_error(tmp_path: Path) -> None:
    Image.fromarray(pattern()).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="channels must be 1"):
        decode_image(tmp_path / "a.png", channels=4)


def test_report_warns_summarises_and_raises_in_strict_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = BadFileReport()
    assert report.summary() == "no bad image files"
    report.raise_if_strict()  # nothing to complain about
    files = bad_files(tmp_path)
    for path in files.values():
        report.add(path, try_decode(path)[1])
    report.warn_each()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4
    assert all(str(path) in line for path, line in zip(files.values(), lines, strict=True))
    assert "truncated" in lines[1]
    assert report.summary() == "skipped 4 bad image files"
    with pytest.raises(ResnetlabError) as info:
        report.raise_if_strict()
    message = str(info.value)
    assert "\n" not in message and message.startswith("4 bad image file(s) (--strict)")
    assert all(str(path) in message for path in files.values())


def test_image_extensions_ignore_case() -> None:
    assert is_image_file("a/B.JPG") and is_image_file("c.WebP") and is_image_file("d.gif")
    assert not is_image_file("notes.txt") and not is_image_file("archive.tar")
