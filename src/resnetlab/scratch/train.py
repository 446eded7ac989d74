"""Minibatch training and evaluation of the scratch `ResidualMLP`."""

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from resnetlab.scratch.layers import SoftmaxCrossEntropy
from resnetlab.scratch.network import ResidualMLP
from resnetlab.scratch.optim import SGD
from resnetlab.scratch.validation import check_features, check_labels, check_positive

EVAL_BATCH_SIZE = 4096


@dataclass
class History:
    """Per-epoch curves. Training numbers are averaged over the epoch's minibatches as they
    were seen (before each update); validation numbers are measured after the epoch."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)


def predict_logits(model: ResidualMLP, x: np.ndarray) -> np.ndarray:
    """Return the logits (N, num_classes) for x, computed in chunks to bound memory."""
    x = check_features(x, model.in_features, model.dtype)
    chunks = [model.forward(x[i : i + EVAL_BATCH_SIZE]) for i in range(0, len(x), EVAL_BATCH_SIZE)]
    return np.concatenate(chunks) if chunks else np.empty((0, model.num_classes), model.dtype)


def predict(model: ResidualMLP, x: np.ndarray) -> np.ndarray:
    """Return the predicted class index (N,) for each row of x."""
    return predict_logits(model, x).argmax(axis=1)


def evaluate(model: ResidualMLP, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Return (mean cross-entropy, accuracy) of the model on (x, y)."""
    logits = predict_logits(model, x)
    y = check_labels(y, len(logits), model.num_classes)
    check_positive("number of samples", len(y))
    loss = SoftmaxCrossEntropy().forward(logits, y)
    return loss, float((logits.argmax(axis=1) == y).mean())


def accuracy(model: ResidualMLP, x: np.ndarray, y: np.ndarray) -> float:
    """Return the fraction of rows of x whose predicted class equals y."""
    return evaluate(model, x, y)[1]


def fit(
    model: ResidualMLP,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int = 50,
    batch_size: int = 32,
    lr: float = 0.02,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    seed: int = 0,
    validation_data: tuple[np.ndarray, np.ndarray] | None = None,
    on_epoch: Callable[[int, History], None] | None = None,
) -> History:
    """Train `model` in place with minibatch SGD and return its per-epoch `History`.

    Each epoch visits the samples in a fresh order drawn from `seed`, so a run is
    reproducible. `on_epoch(epoch, history)` is called after every epoch (epoch from 1).
    """
    x = check_features(x, model.in_features, model.dtype)
    y = check_labels(y, len(x), model.num_classes)
    check_positive("epochs", epochs)
    check_positive("batch_size", batch_size)
    check_positive("number of samples", len(x))
    optimizer = SGD(model, lr=lr, momentum=momentum, weight_decay=weight_decay)
    criterion = SoftmaxCrossEntropy()
    rng = np.random.default_rng(seed)
    history = History()
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x))
        loss_sum, correct = 0.0, 0
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            logits = model.forward(x[batch])
            loss_sum += criterion.forward(logits, y[batch]) * len(batch)
            correct += int((logits.argmax(axis=1) == y[batch]).sum())
            model.backward(criterion.backward())
            optimizer.step()
        history.loss.append(loss_sum / len(x))
        history.accuracy.append(correct / len(x))
        if validation_data is not None:
            val_loss, val_accuracy = evaluate(model, *validation_data)
            history.val_loss.append(val_loss)
            history.val_accuracy.append(val_accuracy)
        if on_epoch is not None:
            on_epoch(epoch, history)
    return history
