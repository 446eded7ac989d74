"""Figures of a detection run: learning curves, and images with their predicted boxes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torchvision.utils import draw_bounding_boxes

from resnetlab.detection.data import DetectionSet, Target, detections
from resnetlab.files import unique_name, write_atomically, writing
from resnetlab.training.reports import plt

SCORE_THRESHOLD = 0.5  # boxes drawn: at least this score


def plot_detection_curves(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Training loss, validation mAP@0.5 and mAP@[.5:.95], and the lr, per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_map, ax_lr) = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-")
    ax_map.plot(epochs, [h["val_map_50"] for h in history], "s-", label="mAP@0.5")
    ax_map.plot(epochs, [h["val_map"] for h in history], "^-", label="mAP@[.5:.95]")
    ax_map.legend()
    ax_lr.plot(epochs, [h["lr"] for h in history], "o-", color="tab:gray")
    for ax, label in ((ax_loss, "training loss"), (ax_map, "validation mAP"), (ax_lr, "lr")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
    fig.suptitle(title)
    with writing(path, "the curves"):
        fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_detections(
    image: torch.Tensor, prediction: Target, classes: list[str], threshold: float = SCORE_THRESHOLD
) -> torch.Tensor:
    """``image`` (uint8, 3xHxW) with the boxes scored ``threshold`` or more, labelled
    "name score" (``image`` itself where there are none)."""
    keep = prediction["scores"] >= threshold
    if not keep.any():
        return image
    labels = [
        f"{classes[int(label) - 1]} {float(score):.2f}"
        for label, score in zip(prediction["labels"][keep], prediction["scores"][keep], strict=True)
    ]
    return draw_bounding_boxes(image, prediction["boxes"][keep], labels, colors="red", width=2)


def save_image(pixels: torch.Tensor, path: Path) -> None:
    """A uint8 3xHxW tensor as an image file (format from the suffix), written atomically."""
    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(buffer, format=_format(path))
    write_atomically(path, lambda f: f.write(buffer.getvalue()), "the image")


def _format(path: Path) -> str:
    return "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"


@torch.no_grad()
def draw_samples(
    model: nn.Module, data: DetectionSet, folder: Path, classes: list[str], count: int
) -> None:
    """The first ``count`` images of ``data`` with their predictions, as ``folder/<name>.png``
    (``<name>-2.png`` for a second image of the same name)."""
    folder.mkdir(exist_ok=True)
    model.eval()
    used: set[str] = set()
    for index in range(min(count, len(data))):
        image, _ = data[index]
        prediction = detections(model, [image])[0]
        save_image(
            draw_detections(image, prediction, classes),
            folder / unique_name(Path(data.names[index]).stem, used),
        )
