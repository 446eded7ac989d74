"""How far is a JPEG folder from the lossless images it was made from, when they are lost?

A folder re-encoded from a JPEG source carries two losses: the source's own (unknown: the
lossless originals are gone) and the re-encoding's (measurable against the source). Both are
estimated on a stand-in: near-lossless photos of the same size, made by box-downsampling windows
of scikit-learn's two sample photos at least fourfold (which averages their own JPEG artefacts
away). On the stand-in everything is known: the first encoding's error, the re-encoding's error,
and the error of both against lossless. The re-encoding's error, measured on the folder and on
the stand-in, gives the ratio of the two contents' sensitivity to JPEG; the stand-in's errors
against lossless, scaled by it, place every folder on one axis, mean squared error against
lossless (8-bit RGB), where accuracy can be extrapolated to zero.

    python benchmarks/jpeg_distortion.py SOURCE --source-quality 75 --folder 50=DIR50 [--out FILE]

`--smoke` writes the JSON to a temporary folder (on a small folder the script is quick as it is).

Re-encoding is not monotone in quality: at 4:2:0, 75 then 50 loses more than 75 then 30 on the
stand-in (misaligned quantisation steps), which a line through the qualities cannot see.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
from pathlib import Path

import numpy as np
import smoke
from PIL import Image
from sklearn.datasets import load_sample_images

STAND_IN_COUNT = 600
FOLDER_SAMPLE = 1000
SMALLEST_REDUCTION = 4  # a window is at least this many times the image's side


def round_trip(image: Image.Image, quality: int) -> Image.Image:
    """``image`` encoded as JPEG at ``quality`` (4:2:0 chroma, PIL's tables) and decoded."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, subsampling="4:2:0")
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def mse(a: Image.Image, b: Image.Image) -> float:
    """Mean squared error between two RGB images, on the 0-255 scale."""
    return float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean())


def stand_in(size: tuple[int, int], count: int = STAND_IN_COUNT, seed: int = 0) -> list:
    """``count`` near-lossless photos of ``size``: square windows of scikit-learn's sample
    photos, box-downsampled at least ``SMALLEST_REDUCTION``-fold."""
    rng = random.Random(seed)
    photos = [Image.fromarray(array) for array in load_sample_images().images]
    if SMALLEST_REDUCTION * max(size) > min(min(photo.size) for photo in photos):
        raise SystemExit(
            f"jpeg_distortion: {size[0]}x{size[1]} images are too large for a stand-in made of "
            "scikit-learn's 640x427 sample photos"
        )
    images = []
    for index in range(count):
        photo = photos[index % len(photos)]
        side = rng.randint(SMALLEST_REDUCTION * max(size), min(photo.size))
        left, top = rng.randint(0, photo.width - side), rng.randint(0, photo.height - side)
        window = photo.crop((left, top, left + side, top + side))
        images.append(window.resize(size, Image.Resampling.BOX))
    return images


def reencoding_error(source: Path, folder: Path, sample: int = FOLDER_SAMPLE) -> float:
    """Mean squared error of ``folder``'s images against ``source``'s (same relative paths,
    ``.jpg`` suffix in ``folder``), on a fixed sample."""
    paths = sorted(p for p in source.rglob("*") if p.is_file())
    random.Random(0).shuffle(paths)
    errors = []
    for path in paths[:sample]:
        with (
            Image.open(path) as original,
            Image.open((folder / path.relative_to(source)).with_suffix(".jpg")) as reencoded,
        ):
            errors.append(mse(original.convert("RGB"), reencoded.convert("RGB")))
    return statistics.fmean(errors)


def against_lossless(source: Path, source_quality: int, folders: dict[int, Path]) -> dict:
    """Each folder's estimated mean squared error against the lost lossless images, the
    source's under ``source_quality``, and how they were estimated."""
    with Image.open(next(p for p in sorted(source.rglob("*")) if p.is_file())) as first:
        size = first.size
    lossless = stand_in(size)
    encoded = [round_trip(image, source_quality) for image in lossless]
    stand_in_first = statistics.fmean(map(mse, lossless, encoded))
    ratios, stand_in_both = {}, {}
    for quality, folder in folders.items():
        twice = [round_trip(image, quality) for image in encoded]
        ratios[quality] = reencoding_error(source, folder) / statistics.fmean(
            map(mse, encoded, twice)
        )
        stand_in_both[quality] = statistics.fmean(map(mse, lossless, twice))
    scale = statistics.fmean(ratios.values())
    return {
        "mse": {source_quality: scale * stand_in_first}
        | {quality: scale * error for quality, error in stand_in_both.items()},
        "content_scale": scale,
        "content_scale_per_quality": ratios,
    }


def psnr(error: float) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error on the 0-255 scale."""
    return 10 * np.log10(255**2 / error)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the JPEG folder the others were made from")
    parser.add_argument("--source-quality", type=int, default=75)
    parser.add_argument(
        "--folder", action="append", default=[], metavar="QUALITY=DIR",
        help="a folder re-encoded from SOURCE at QUALITY",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="also write the result to this JSON file")
    args = smoke.parse_args(parser, lambda folder: {"out": folder / "jpeg_distortion.json"})
    folders = {}
    for item in args.folder:
        quality, _, folder = item.partition("=")
        if not quality.isdigit() or not folder:
            parser.error(f"--folder {item!r}: expected QUALITY=DIR, e.g. 50=data-q50")
        folders[int(quality)] = Path(folder)
    if not folders:
        parser.error("give at least one --folder QUALITY=DIR to calibrate against")
    result = against_lossless(args.source, args.source_quality, folders)
    print(f"content scale (folder / stand-in): {result['content_scale']:.2f}")
    for quality, error in sorted(result["mse"].items(), reverse=True):
        print(f"quality {quality}: MSE {error:.1f} against lossless ({psnr(error):.1f} dB)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
