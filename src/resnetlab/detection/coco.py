"""A user's detection data in COCO format: a folder of images and one annotations JSON.

Category ids are remapped to contiguous labels 1..K in id order, their names kept; crowd boxes
are kept as ``iscrowd`` (ignored in training and in mAP); images without annotations stay, as
negatives; a box that leaves its image or has no area is clipped or dropped, with a warning that
names the image.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from resnetlab.data.decode import BadImage, decode_image
from resnetlab.detection.data import DetectionSet, Target
from resnetlab.errors import ResnetlabError

ANNOTATIONS = "annotations.json"


class CocoSet(DetectionSet):
    """The images of a COCO annotations file (or the ``indices`` of them), decoded on access."""

    def __init__(
        self, files: list[Path], targets: list[Target], classes: list[str], names: list[str]
    ) -> None:
        self.files, self.targets, self.classes, self.names = files, targets, classes, names

    def subset(self, indices: list[int]) -> CocoSet:
        """The images at ``indices``."""
        return CocoSet(
            [self.files[i] for i in indices],
            [self.targets[i] for i in indices],
            self.classes,
            [self.names[i] for i in indices],
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        try:
            image = decode_image(self.files[index])
        except BadImage as exc:
            raise ResnetlabError(str(exc)) from None
        return image, self.targets[index]


def annotations_file(folder: Path) -> Path:
    """``folder/annotations.json``, else the folder's only JSON file."""
    if not folder.is_dir():
        raise ResnetlabError(f"--data '{folder}': no such folder (or 'shapes')")
    if (folder / ANNOTATIONS).is_file():
        return folder / ANNOTATIONS
    found = sorted(folder.glob("*.json"))
    if len(found) != 1:
        raise ResnetlabError(
            f"--data '{folder}': expected {ANNOTATIONS} or one .json file, found {len(found)}"
        )
    return found[0]


def read_coco(folder: str | Path) -> CocoSet:
    """Every image of ``folder``'s annotations file, with its targets; image files are found
    by ``file_name``, relative to the folder or to its ``images/`` subfolder."""
    folder = Path(folder)
    path = annotations_file(folder)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResnetlabError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(doc, dict):
        raise ResnetlabError(f"{path}: expected a JSON object with 'images' and 'categories'")
    images = _records(doc, "images", path, ("id", "file_name"))
    categories = _records(doc, "categories", path, ("id", "name"))
    annotations = _records(doc, "annotations", path, ("image_id", "category_id", "bbox"), [])
    if not categories:
        raise ResnetlabError(f"{path}: 'categories' is empty")
    category_ids = sorted({c["id"] for c in categories})
    label = {cid: i + 1 for i, cid in enumerate(category_ids)}
    names = {c["id"]: str(c["name"]) for c in categories}
    by_image: dict[Any, list[dict[str, Any]]] = {image["id"]: [] for image in images}
    for index, ann in enumerate(annotations):
        key = f"{path}: annotations[{index}]"
        if ann["image_id"] not in by_image:
            raise ResnetlabError(f"{key}: image_id {ann['image_id']!r} is not in 'images'")
        if ann["category_id"] not in label:
            raise ResnetlabError(
                f"{key}: category_id {ann['category_id']!r} is not in 'categories'"
            )
        if not (isinstance(ann["bbox"], list) and len(ann["bbox"]) == 4):
            raise ResnetlabError(f"{key}: 'bbox' must be [x, y, width, height]")
        by_image[ann["image_id"]].append(ann)
    files, targets = [], []
    for image in images:
        file = _image_path(folder, str(image["file_name"]), path)
        size = (image.get("width"), image.get("height"))
        files.append(file)
        targets.append(_target(by_image[image["id"]], label, str(image["file_name"]), size, file))
    return CocoSet(files, targets, [names[cid] for cid in category_ids], [f.name for f in files])


def _records(
    doc: dict[str, Any], key: str, path: Path, fields: tuple[str, ...], default: list | None = None
) -> list[dict[str, Any]]:
    """``doc[key]``: a list of objects that each have ``fields``."""
    if key not in doc and default is not None:
        return default
    records = doc.get(key)
    if not isinstance(records, list):
        raise ResnetlabError(f"{path}: '{key}' must be a list")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ResnetlabError(f"{path}: {key}[{index}] is not an object")
        for name in fields:
            if name not in record:
                raise ResnetlabError(f"{path}: {key}[{index}] has no '{name}'")
    return records


def _image_path(folder: Path, file_name: str, path: Path) -> Path:
    for candidate in (folder / file_name, folder / "images" / file_name):
        if candidate.is_file():
            return candidate
    raise ResnetlabError(f"{path}: image file '{file_name}' not found in '{folder}' or its images/")


def _target(
    annotations: list[dict[str, Any]],
    label: dict[Any, int],
    file_name: str,
    size: tuple[Any, Any],
    file: Path,
) -> Target:
    """Boxes as x0, y0, x1, y1 clipped to the image; a box that had to be clipped or has no
    area is named in a warning (and dropped if nothing of it is left)."""
    width, height = size if all(isinstance(v, int) for v in size) else _image_size(file)
    boxes, labels, crowd = [], [], []
    for ann in annotations:
        x, y, w, h = (float(v) for v in ann["bbox"])
        box = [max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)]
        if box != [x, y, x + w, y + h] or w <= 0 or h <= 0:
            warnings.warn(
                f"{file_name}: box {ann['bbox']} is outside the image or has no area",
                stacklevel=3,
            )
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        boxes.append(box)
        labels.append(label[ann["category_id"]])
        crowd.append(int(bool(ann.get("iscrowd", 0))))
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "iscrowd": torch.tensor(crowd, dtype=torch.int64),
    }


def _image_size(file: Path) -> tuple[int, int]:
    """(width, height) of an image file, from its header."""
    from PIL import Image

    try:
        with Image.open(file) as img:
            return img.size
    except Exception as exc:  # Pillow raises many types on malformed data
        raise ResnetlabError(f"{file}: not a readable image ({exc})") from None
