"""What a run reports: its lines (what it trains, each epoch) and its figures (learning curves,
accuracy against time, the confusion matrix)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import matplotlib
from torch import nn

from resnetlab.config.train import TrainConfig
from resnetlab.data.bundle import DataBundle
from resnetlab.files import writing
from resnetlab.runtime.precision import Precision

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

MIN_TIMED_S = 1.0  # shorter epochs print no samples/s: a few steps are too few to time


def describe_run(
    cfg: TrainConfig, model: nn.Module, bundle: DataBundle, precision: Precision
) -> str:
    """One line saying what is about to be trained, on what, and how."""
    sizes = " / ".join(
        f"{len(split)} {name}"
        for name, split in (("train", bundle.train), ("val", bundle.val), ("test", bundle.test))
        if split is not None
    )
    params = sum(p.numel() for p in model.parameters())
    task = "regression" if bundle.task == "regression" else f"{bundle.num_classes} classes"
    return (
        f"{cfg.model} ({params:,} params) on {bundle.name}: {sizes}, {task}, "
        f"input {'x'.join(map(str, bundle.input_shape))} | {precision} | "
        f"{cfg.optimizer} lr {cfg.lr:g} {cfg.schedule}, "
        f"{cfg.epochs} epochs, batch {cfg.batch_size}"
    )


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """The article's ``Epoch [e/N], Loss: x.xxxx`` line, then validation (accuracy, or RMSE
    and R² for regression), lr, speed (for epochs long enough to time) and time."""
    parts = [f"Epoch [{record['epoch']}/{epochs}], Loss: {record['train_loss']:.4f}"]
    if record.get("val_rmse") is not None:
        parts.append(f"Val loss: {record['val_loss']:.4f}, RMSE: {record['val_rmse']:.4g}")
        if record["val_r2"] is not None:
            parts.append(f"R²: {record['val_r2']:.3f}")
    elif record["val_acc"] is not None:
        parts.append(f"Val acc: {record['val_acc']:.2f}%")
    parts.append(f"LR: {record['lr']:.4g}")
    if record.get("train_s", MIN_TIMED_S) >= MIN_TIMED_S:
        parts.append(f"{record['samples_per_s']:.0f} samples/s")
    parts.append(str(timedelta(seconds=round(record["elapsed_s"]))))
    return ", ".join(parts)


def plot_curves(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Loss (train and val), accuracy (train and val; regression: the validation RMSE and R²)
    per epoch, with the lr schedule."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    has_val = any(h.get("val_loss") is not None for h in history)
    if has_val:
        ax_loss.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    regression = any(h.get("val_rmse") is not None for h in history)
    if regression:
        ax_acc.plot(epochs, [h["val_rmse"] for h in history], "s-", label="validation RMSE")
        ax_r2 = ax_acc.twinx()
        ax_r2.plot(epochs, [h["val_r2"] for h in history], "^-", color="tab:green")
        ax_r2.set_ylabel("validation R²")
    else:
        ax_acc.plot(epochs, [h["train_acc"] for h in history], "o-", label="train")
        if has_val:
            ax_acc.plot(epochs, [h["val_acc"] for h in history], "s-", label="validation")
    ax_lr.plot(epochs, [h["lr"] for h in history], "o-", color="tab:gray")
    for ax, label in (
        (ax_loss, "loss"),
        (ax_acc, "RMSE" if regression else "accuracy (%)"),
        (ax_lr, "learning rate (end of epoch)"),
    ):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_acc.legend()
    fig.suptitle(title)
    _save(fig, path)


Curve = tuple[list[float], list[float]]  # wall-clock minutes, validation accuracy (%)


def plot_time_to_accuracy(
    curves: dict[str, Curve], results: dict[str, tuple[float, float]], path: Path, title: str
) -> None:
    """Validation accuracy against wall-clock minutes, a line per run (one point per epoch),
    each run's final result (minutes, accuracy; e.g. with flip TTA) marked with a star."""
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for label, (minutes, accuracy) in curves.items():
        (line,) = ax.plot(minutes, accuracy, "o-", markersize=3, label=label)
        if label in results:
            at, result = results[label]
            ax.plot([at], [result], "*", markersize=14, color=line.get_color())
            ax.annotate(f"{result:.1f}%", (at, result), textcoords="offset points",
                        xytext=(6, -12), color=line.get_color())  # fmt: skip
    ax.set_xlabel("wall-clock minutes (training, validation, final evaluation)")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    _save(fig, path)


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    """The confusion matrix as a heat map, with counts in each cell."""
    n = len(classes)
    size = max(4.0, 0.5 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size), constrained_layout=True)
    image = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(n), classes, rotation=90 if n > 10 else 0)
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        peak = max(max(row) for row in confusion) or 1
        for t, row in enumerate(confusion):
            for p, count in enumerate(row):
                colour = "white" if count > peak / 2 else "black"
                ax.text(p, t, str(count), ha="center", va="center", color=colour, fontsize=8)
    ax.set_title(title)
    _save(fig, path)


def _save(fig: Figure, path: Path) -> None:
    """Write ``fig`` to ``path`` (a failed write is a one-line error) and free it."""
    try:
        with writing(path, "the figure"):
            fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
