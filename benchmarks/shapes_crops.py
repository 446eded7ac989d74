"""Crops of the `shapes` training images, one folder per class, to pretrain a classifier
backbone for `resnetlab detect train --weights`:

    python benchmarks/shapes_crops.py crops/ --images 2000
    resnetlab train --model resnet18 --data crops/ --image-size 64 --epochs 5 --flip

Each object is cut out with a quarter of its side as context on every side (clipped to the
image) and resized to 64x64. Only the training split is used: the detector's test split stays
unseen. `--smoke` cuts the objects of two images into a temporary folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import smoke
from PIL import Image

from resnetlab.detection.shapes import CLASSES, ShapesSet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", help="the folder of crops (required)")
    parser.add_argument("--images", type=int, default=2000, help="training images to cut from")
    parser.add_argument("--size", type=int, default=64)
    args = smoke.parse_args(parser, lambda folder: {"out": folder / "crops", "images": 2})
    if args.out is None:
        parser.error("the folder of crops is required")
    for name in CLASSES:
        (args.out / name).mkdir(parents=True, exist_ok=True)
    data = ShapesSet("train", size=args.images)
    count = 0
    for index in range(len(data)):
        image, target = data[index]
        picture = Image.fromarray(image.permute(1, 2, 0).numpy())
        for k, (box, label) in enumerate(zip(target["boxes"], target["labels"], strict=True)):
            x0, y0, x1, y1 = box.tolist()
            margin = (x1 - x0) / 4
            crop = picture.crop(
                (
                    max(x0 - margin, 0),
                    max(y0 - margin, 0),
                    min(x1 + margin, 256),
                    min(y1 + margin, 256),
                )
            )
            crop = crop.resize((args.size, args.size), Image.BILINEAR)
            crop.save(args.out / CLASSES[int(label) - 1] / f"{index:05d}-{k}.png")
            count += 1
    print(f"{count} crops from {len(data)} images in {args.out}")


if __name__ == "__main__":
    main()
