"""`resnetlab predict`: top-k classes with probabilities for image files or table rows (a
regression checkpoint: the predicted value of each row)."""

from __future__ import annotations

from typing import Any

from resnetlab.inference.exported import is_exported
from resnetlab.inference.predictor import load
from resnetlab.runtime.compiled import should_compile


def predict_inputs(
    checkpoint: str,
    inputs: list[str],
    *,
    topk: int = 3,
    device: str = "auto",
    compile: str = "off",
) -> list[dict[str, Any]]:
    """For each input (an image, or each row of a table): the ``topk`` classes and their
    probabilities (regression: the predicted ``value``), using the checkpoint's own
    preprocessing. ``checkpoint`` may also be an exported ``.onnx`` or ``.pt2`` file."""
    predictor = load(checkpoint, device=device)
    kind = predictor.header["data_kind"]
    if not is_exported(checkpoint) and should_compile(compile, kind, predictor.device):
        predictor.compile()
    return predictor.predict(inputs, topk=topk)
