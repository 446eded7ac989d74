"""Detection quality: COCO mAP by torchmetrics on the faster-coco-eval backend, and the
predictions it is computed from."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from resnetlab.detection.data import DetectionSet, Target, detections
from resnetlab.errors import ResnetlabError


def detection_map(predictions: list[Target], targets: list[Target]) -> dict[str, float]:
    """``{"map_50", "map"}``: mAP at IoU 0.5 and averaged over IoU 0.5:0.95 (COCO's), with
    ``iscrowd`` boxes neither matched as misses nor counted as false positives."""
    try:
        from torchmetrics.detection import MeanAveragePrecision
    except ImportError:
        raise ResnetlabError(
            "detection mAP needs torchmetrics and faster-coco-eval: "
            "pip install 'resnetlab[detection]'"
        ) from None
    # every image is given here: under torchrun, no gathering from the other processes
    metric = MeanAveragePrecision(
        iou_type="bbox", backend="faster_coco_eval", sync_on_compute=False
    )
    with warnings.catch_warnings():  # "no ground truth" for a split of negatives only
        warnings.simplefilter("ignore", UserWarning)
        metric.update(predictions, [_with_crowd(t) for t in targets])
        result = metric.compute()
    return {"map_50": _score(result["map_50"]), "map": _score(result["map"])}


def _with_crowd(target: Target) -> Target:
    crowd = target.get("iscrowd", torch.zeros(len(target["labels"]), dtype=torch.int64))
    return {"boxes": target["boxes"], "labels": target["labels"], "iscrowd": crowd}


def _score(value: torch.Tensor) -> float:
    """COCO's -1 (no ground truth at all) read as 0."""
    return max(float(value), 0.0)


@torch.no_grad()
def predict_set(
    model: nn.Module, data: DetectionSet, batch_size: int = 8
) -> tuple[list[Target], list[Target]]:
    """The model's detections (on the CPU) for every image of ``data``, and the images'
    targets."""
    model.eval()
    predictions: list[Target] = []
    targets: list[Target] = []
    for first in range(0, len(data), batch_size):
        items = [data[i] for i in range(first, min(first + batch_size, len(data)))]
        predictions += detections(model, [image for image, _ in items])
        targets += [target for _, target in items]
    return predictions, targets


def evaluate_detector(
    model: nn.Module, data: DetectionSet, batch_size: int = 8
) -> dict[str, float]:
    """mAP@0.5 and mAP@[.5:.95] of ``model`` on ``data``."""
    return detection_map(*predict_set(model, data, batch_size))
