"""Classification metrics from logits (top-1, top-5, per-class accuracy, confusion matrix) and
regression metrics (RMSE, MAE, R²)."""

from __future__ import annotations

from typing import Any

import torch


def confusion_matrix(
    predicted: torch.Tensor, target: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """``cm[t, p]`` counts samples of true class ``t`` predicted as ``p``."""
    flat = target.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes**2).view(num_classes, num_classes)


def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, k: int) -> float:
    """Percentage of samples whose true class is among the ``k`` highest logits."""
    topk = logits.topk(min(k, logits.shape[1]), dim=1).indices
    hits = int((topk == target[:, None]).any(dim=1).sum())
    return 100.0 * hits / max(len(target), 1)  # exact: 4400 of 5000 is 88.0, not 87.99999952


def classification_report(
    logits: torch.Tensor, target: torch.Tensor, classes: list[str]
) -> dict[str, Any]:
    """Accuracy (%), top-5 for 10 classes or more, per-class accuracy and the confusion matrix."""
    cm = confusion_matrix(logits.argmax(1), target, len(classes))
    support = cm.sum(dim=1)
    report: dict[str, Any] = {
        "samples": len(target),
        "accuracy": topk_accuracy(logits, target, 1),
        "per_class": {
            name: (100.0 * int(cm[i, i]) / int(support[i])) if support[i] else None
            for i, name in enumerate(classes)
        },
        "confusion": cm.tolist(),
        "classes": list(classes),
    }
    if len(classes) >= 10:
        report["top5"] = topk_accuracy(logits, target, 5)
    return report


def regression_report(
    predicted: torch.Tensor, target: torch.Tensor, scale: tuple[float, float] = (0.0, 1.0)
) -> dict[str, Any]:
    """RMSE, MAE and R² (None when the targets are constant) of ``predicted``, in the
    target's own units: standardised values ``v`` are ``mean + std * v`` for ``scale``'s
    ``(mean, std)``."""
    mean, std = scale
    predicted, target = mean + std * predicted.double(), mean + std * target.double()
    error = (predicted - target).flatten()
    spread = float(((target - target.mean()) ** 2).sum())
    return {
        "samples": len(target),
        "rmse": float(error.pow(2).mean().sqrt()),
        "mae": float(error.abs().mean()),
        "r2": 1 - float(error.pow(2).sum()) / spread if spread > 0 else None,
    }


def headline(report: dict[str, Any]) -> str:
    """A report's main numbers: accuracy, or RMSE, MAE and R²."""
    if "rmse" in report:
        r2 = "-" if report["r2"] is None else f"{report['r2']:.4f}"
        return f"RMSE {report['rmse']:.4g}, MAE {report['mae']:.4g}, R² {r2}"
    return f"accuracy {report['accuracy']:.2f}%"
