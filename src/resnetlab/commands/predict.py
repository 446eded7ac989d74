"""`resnetlab predict`: top-k classes with probabilities for image files or table rows (a
regression checkpoint: the predicted value of each row)."""

from __future__ import annotations

from typing import Any

from resnetlab.engine.predictor import load


def predict_inputs(
    checkpoint: str, inputs: list[str], *, topk: int = 3, device: str = "auto"
) -> list[dict[str, Any]]:
    """For each input (an image, or each row of a table): the ``topk`` classes and their
    probabilities (regression: the predicted ``value``), using the checkpoint's own
    preprocessing. ``checkpoint`` may also be an exported ``.onnx`` or ``.pt2`` file."""
    return load(checkpoint, device=device).predict(inputs, topk=topk)
